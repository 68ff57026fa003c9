"""The exact two-time flow map of the mixture (against scipy) and the two-time model and its losses."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from cmedu import flowmap as fm
from cmedu.nets import make_mlp
from cmedu.ode import drift

EPS, T = 0.002, 80.0


def _pairs(mixture, n, seed, t_min=EPS):
    """n points x_t ~ p_t with log-uniform t in [t_min, T] and s log-uniform in [ε, t] (float64)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.exp(math.log(t_min) + torch.rand(n, generator=g, dtype=torch.float64) * math.log(T / t_min))
    s = torch.exp(math.log(EPS) + torch.rand(n, generator=g, dtype=torch.float64) * torch.log(t / EPS))
    x = mixture.sample(n, generator=g).double() + t[:, None] * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, t, s


def test_two_time_flow_map_matches_solve_ivp(mixture):
    """RK4 in log-time vs scipy's DOP853 on the σ-time ODE dx/dσ = (x − D(x, σ))/σ, point by point: <= 1e-6."""
    x, t, s = _pairs(mixture, 12, seed=0)
    t[0], s[0] = T, EPS  # the longest jump, noise to data
    ref = []
    for xi, ti, si in zip(x, t.tolist(), s.tolist()):
        def rhs(sigma, y):
            xx = torch.from_numpy(y[None])
            return ((xx - mixture.denoiser(xx, sigma)) / sigma).numpy().ravel()

        sol = solve_ivp(rhs, (ti, si), xi.numpy(), method="DOP853", rtol=1e-12, atol=1e-12)
        assert sol.success
        ref.append(sol.y[:, -1])
    err = (mixture.two_time_flow_map(x, t, s) - torch.from_numpy(np.array(ref))).norm(dim=1)
    assert err.max().item() <= 1e-6, err.max()
    # the test has teeth: the points moved
    assert (mixture.two_time_flow_map(x, t, s) - x).norm(dim=1).median() > 0.05


def test_exact_map_semigroup_identity_and_dtype(mixture):
    x, t, s = _pairs(mixture, 64, seed=1)
    m = torch.sqrt(t * s)  # any time between s and t
    one = mixture.two_time_flow_map(x, t, s, steps=128)
    two = mixture.two_time_flow_map(mixture.two_time_flow_map(x, t, m, steps=128), m, s, steps=128)
    assert (one - two).norm(dim=1).max().item() < 1e-7
    assert torch.equal(mixture.two_time_flow_map(x, t, t), x)  # X*(x, t, t) = x exactly
    x32 = x.float()
    assert mixture.two_time_flow_map(x32, t, s).dtype == torch.float32
    # the scalar-time route to ε (Heun, 256 steps) agrees to its own accuracy
    x80 = 80 * torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    heun = mixture.flow_map(x80, 80.0, EPS, steps=512)
    assert (mixture.two_time_flow_map(x80, 80.0, EPS, steps=128) - heun).norm(dim=1).mean() < 1e-4


def test_average_and_instantaneous_velocity(mixture):
    x, t, s = _pairs(mixture, 32, seed=3)
    u = mixture.average_velocity(x, t, s, steps=64)
    torch.testing.assert_close(x - (t - s)[:, None] * u, mixture.two_time_flow_map(x, t, s, steps=64), rtol=0, atol=1e-12)
    torch.testing.assert_close(mixture.velocity(x, t), drift(mixture.denoiser, x, t))
    torch.testing.assert_close(mixture.average_velocity(x, t, t, steps=4), mixture.velocity(x, t))  # the diagonal
    # a short interval: the average tends to the instantaneous velocity
    near = mixture.average_velocity(x, t, t * (1 - 1e-6), steps=4)
    torch.testing.assert_close(near, mixture.velocity(x, t), rtol=1e-4, atol=1e-5)


def test_exact_map_rejects_bad_times(mixture):
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="t >= s > 0"):
        mixture.two_time_flow_map(x, 0.5, 1.0)
    with pytest.raises(ValueError, match="t >= s > 0"):
        mixture.two_time_flow_map(x, 1.0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        mixture.two_time_flow_map(torch.zeros(3, 3), 1.0, 0.5)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return fm.FlowMapModel(fm.make_flowmap_net("tiny"))


def test_model_boundary_shapes_and_errors(model):
    x = torch.randn(16, 2)
    t = torch.exp(torch.linspace(math.log(EPS), math.log(T), 16))
    assert torch.equal(model(x, t, t), x)  # X(x, t, t) = x for any network
    out = model(x, t, EPS)
    assert out.shape == (16, 2) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert model.velocity(x, t).shape == (16, 2)
    assert torch.equal(fm.ConsistencySlice(model)(x, t), out)
    with pytest.raises(ValueError, match="down to s"):
        model(x, 0.5, 1.0)
    with pytest.raises(ValueError, match=r"\[eps, T\]"):
        model(x, 100.0, 1.0)
    with pytest.raises(ValueError, match=r"\[eps, T\]"):
        model(x, 1.0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        model(x, torch.ones(3), 0.5)
    with pytest.raises(ValueError, match="two time inputs"):
        fm.FlowMapModel(make_mlp("tiny"))


def test_sample_times(model):
    t, s, n_diag = fm.sample_times(1000, torch.Generator().manual_seed(0), diag=0.25)
    assert n_diag == 250 and torch.equal(t[:250], s[:250])
    assert (s <= t).all() and (s >= EPS).all() and (t <= T).all() and (s[250:] < t[250:]).float().mean() > 0.99


@pytest.mark.parametrize("loss", [fm.eulerian_loss, fm.lagrangian_loss, fm.shortcut_loss])
def test_losses_vanish_for_the_exact_map(mixture, model, loss):
    """Given the exact teacher, the exact map X* satisfies every condition: each loss is ~0 (solver accuracy)."""
    exact = fm.ExactFlowMap(mixture, steps=32)
    x0 = mixture.sample(24, generator=torch.Generator().manual_seed(0)).double()
    value = loss(exact, x0, torch.Generator().manual_seed(1), mixture.denoiser).item()
    learned = loss(model.double(), x0, torch.Generator().manual_seed(1), mixture.denoiser).item()
    assert value < 1e-6 * max(learned, 1.0), (value, learned)
    if loss is not fm.eulerian_loss:  # self-distillation: the exact map is its own teacher off the diagonal
        self_value = loss(exact, x0, torch.Generator().manual_seed(1), mixture.denoiser, diag=0.0).item()
        assert self_value < 1e-6


@pytest.mark.parametrize("loss", [fm.eulerian_loss, fm.lagrangian_loss, fm.shortcut_loss])
def test_losses_train_the_off_diagonal(mixture, model, loss):
    """With no diagonal rows the gradient comes from the off-diagonal condition alone (through the JVP's tangent)."""
    x0 = mixture.sample(64, generator=torch.Generator().manual_seed(0))
    value = loss(model, x0, torch.Generator().manual_seed(1), diag=0.0)
    value.backward()
    grad = sum(p.grad.norm() ** 2 for p in model.parameters() if p.grad is not None).sqrt()
    assert torch.isfinite(value) and grad > 0


def test_sampler_composes_exact_jumps(mixture):
    exact = fm.ExactFlowMap(mixture, steps=256)
    x_T = T * torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    one, four = fm.flow_map_sample(exact, x_T, 1), fm.flow_map_sample(exact, x_T, 4)
    assert (one - four).norm(dim=1).max() < 1e-6  # exact jumps: the number of steps does not matter
    torch.testing.assert_close(one, mixture.two_time_flow_map(x_T, T, EPS))
    with pytest.raises(ValueError, match="steps"):
        fm.flow_map_sample(exact, x_T, 0)


def test_train_flow_map_runs_every_loss(mixture):
    for loss in fm.LOSSES:
        model = fm.FlowMapModel(fm.make_flowmap_net("tiny"))
        records = list(fm.train_flow_map(model, loss, mixture, steps=3, teacher=mixture.denoiser, batch_size=32))
        assert [r.step for r in records] == [1, 2, 3] and all(math.isfinite(r.loss) for r in records)
        assert records[-1].ema is not model
    with pytest.raises(ValueError, match="teacher"):
        next(fm.train_flow_map(model, "cd", mixture, steps=1))
    with pytest.raises(ValueError, match="allowed values"):
        next(fm.train_flow_map(model, "nope", mixture, steps=1))
