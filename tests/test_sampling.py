import pytest
import torch

from cmedu.nets import make_mlp
from cmedu.parameterization import ConsistencyModel
from cmedu.sampling import default_taus, multistep_sample, prior_sample, sample, teacher_sample

EPS, T = 0.002, 80.0


class Counter:
    """Wraps f or D and records every call's time argument."""

    def __init__(self, fn):
        self.fn, self.times = fn, []

    def __call__(self, x, t):
        self.times.append(t)
        return self.fn(x, t)


@pytest.fixture(scope="module")
def cm():
    torch.manual_seed(0)
    return ConsistencyModel(make_mlp("tiny"))


def test_multistep_sample_reproducible(cm):
    x_T = prior_sample((64, 2), generator=torch.Generator().manual_seed(0))
    taus = [10.0, 1.0, 0.1]
    a = multistep_sample(cm, x_T, taus, generator=torch.Generator().manual_seed(1))
    b = multistep_sample(cm, x_T, taus, generator=torch.Generator().manual_seed(1))
    c = multistep_sample(cm, x_T, taus, generator=torch.Generator().manual_seed(2))
    assert a.shape == (64, 2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # without intermediate times it is one deterministic step
    assert torch.equal(multistep_sample(cm, x_T), cm(x_T, T))


@pytest.mark.parametrize("taus", [[], [2.0], [40.0, 5.0, 0.5, 0.01]])
def test_multistep_nfe_and_times(taus):
    f = Counter(lambda x, t: torch.zeros_like(x))
    x_T = torch.randn(8, 2)
    multistep_sample(f, x_T, taus)
    assert len(f.times) == 1 + len(taus)
    assert [float(t) for t in f.times] == [T] + taus


def test_multistep_follows_algorithm_1():
    """f = 0 maps everything to the origin, so step i's input is exactly sqrt(tau^2 - eps^2) z_i."""
    seen = []

    def f(x, t):
        seen.append(x.clone())
        return torch.zeros_like(x)

    taus = [5.0, 0.5]
    x_T = torch.randn(4000, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    out = multistep_sample(f, x_T, taus, generator=g, return_all=True)
    assert len(out) == 3
    assert torch.equal(seen[0], x_T)
    g = torch.Generator().manual_seed(3)
    for tau, x_in in zip(taus, seen[1:]):
        z = torch.randn(x_in.shape, generator=g).to(x_in)
        torch.testing.assert_close(x_in, (tau**2 - EPS**2) ** 0.5 * z)
        assert x_in.std().item() == pytest.approx(tau, rel=0.05)


@pytest.mark.parametrize("taus", [[80.0], [100.0], [0.002], [0.001], [1.0, 2.0], [1.0, 1.0], [-1.0]])
def test_invalid_taus_raise(taus):
    with pytest.raises(ValueError, match="taus"):
        multistep_sample(lambda x, t: x, torch.zeros(2, 2), taus)


def test_default_taus():
    (tau,) = default_taus(2)
    assert EPS < tau < T
    assert default_taus(1) == []
    taus = default_taus(5)
    assert len(taus) == 4
    assert all(a > b for a, b in zip(taus, taus[1:]))
    assert all(EPS < t < T for t in taus)
    with pytest.raises(ValueError):
        default_taus(0)


@pytest.mark.parametrize("nfe", [1, 2, 3])
def test_sample_uses_nfe_calls(cm, nfe):
    f = Counter(cm)
    x = sample(f, (16, 2), nfe=nfe, generator=torch.Generator().manual_seed(0))
    assert x.shape == (16, 2) and torch.isfinite(x).all()
    assert len(f.times) == nfe


@pytest.mark.parametrize("nfe", [1, 2, 3, 4, 7, 35])
def test_teacher_sample_nfe(mixture, nfe):
    d = Counter(mixture.denoiser)
    x_T = T * torch.randn(32, 2, dtype=torch.float64)
    out = teacher_sample(d, x_T, nfe)
    assert len(d.times) == nfe
    assert out.shape == x_T.shape and torch.isfinite(out).all()


def test_teacher_sample_35_lands_on_data(mixture):
    g = torch.Generator().manual_seed(0)
    x_T = T * torch.randn(500, 2, generator=g, dtype=torch.float64)
    out = teacher_sample(mixture.denoiser, x_T, 35)
    exact = mixture.flow_map(x_T, T, steps=256)
    # 18 steps (the last one Euler) are close to the exact flow map for typical points,
    # and much closer than 4 steps
    err35 = (out - exact).norm(dim=1).median().item()
    err7 = (teacher_sample(mixture.denoiser, x_T, 7) - exact).norm(dim=1).median().item()
    assert err35 < 0.03
    assert err35 < err7 / 3
    assert (out.norm(dim=1) - 0.75).abs().median().item() < 0.05
    with pytest.raises(ValueError):
        teacher_sample(mixture.denoiser, x_T, 0)


def test_prior_sample_scale():
    x = prior_sample((20000, 2), T=3.0, generator=torch.Generator().manual_seed(0))
    assert x.std().item() == pytest.approx(3.0, rel=0.02)


def test_one_step_start_search_is_paired_and_picks_the_best():
    from cmedu.sampling import START_GRID, search_one_step_start

    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    calls = []

    def f(x, s):
        calls.append((x.clone(), s.clone()))
        return x / s[:, None]  # returns z for every start: the noise is the same at each s

    best, scores = search_one_step_start(f, z, lambda x: float((x.std() - 1) ** 2) + abs(calls[-1][1][0] - 20), T=80.0)
    assert best == 20.0 and list(scores) == list(START_GRID)
    assert all(torch.allclose(x / s[:, None], z) for x, s in calls)
    with pytest.raises(ValueError, match="in \\(0, T = 80\\]"):
        search_one_step_start(f, z, lambda x: 0.0, grid=(160.0,), T=80.0)
