import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.stats import multivariate_normal

from cmedu.toy import DATASETS, GaussianMixture, make_dataset, ring_mixture


def test_log_prob_matches_scipy(mixture):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 2, generator=g, dtype=torch.float64)
    for t in (0.0, 0.1, 1.5):
        ref = np.zeros(20)
        for m, s, w in zip(mixture.means.numpy(), mixture.stds.numpy(), mixture.weights.numpy()):
            ref += w * multivariate_normal(mean=m, cov=(s**2 + t**2) * np.eye(2)).pdf(x.numpy())
        np.testing.assert_allclose(mixture.log_prob(x, t).numpy(), np.log(ref), rtol=1e-10)


def test_sample_statistics(mixture):
    g = torch.Generator().manual_seed(0)
    x, comp = mixture.sample(40000, generator=g, return_labels=True)
    assert x.shape == (40000, 2) and x.dtype == torch.float32
    freq = torch.bincount(comp, minlength=8).double() / 40000
    np.testing.assert_allclose(freq.numpy(), mixture.weights.numpy(), atol=0.01)
    resid = x.double() - mixture.means[comp]
    assert resid.std().item() == pytest.approx(0.06, rel=0.02)
    assert x.double().std(0).mean().item() == pytest.approx(mixture.std, rel=0.02)


@pytest.mark.parametrize("t", [0.1, 0.3, 1.0])
def test_denoiser_matches_monte_carlo_posterior_mean(mixture, t):
    """E[x0 | xt] by self-normalised importance sampling: x0 ~ p_data, weights N(xt; x0, t^2 I).

    Tolerance: 5 Monte-Carlo standard errors (from the effective sample size) + 1e-3,
    and never more than 0.02.
    """
    g = torch.Generator().manual_seed(42)
    x0 = mixture.sample(200_000, generator=g).double()
    xt = mixture.sample(6, generator=g).double() + t * torch.randn(6, 2, generator=g, dtype=torch.float64)
    logw = -((xt[:, None, :] - x0[None]) ** 2).sum(-1) / (2 * t**2)  # (Q, M)
    w = torch.softmax(logw, dim=1)
    est = w @ x0  # (Q, 2)
    ess = 1 / (w**2).sum(1)
    var = (w[..., None] * (x0[None] - est[:, None]) ** 2).sum(1)  # posterior variance per coordinate
    se = (var / ess[:, None]).sqrt()
    assert (ess > 500).all(), ess
    exact = mixture.denoiser(xt, t)
    err = (exact - est).abs()
    assert (err < 5 * se + 1e-3).all(), (err, se)
    assert err.max().item() < 0.02
    # the check has teeth: the posterior mean is far from both x_t and the data mean here
    assert (exact - xt).abs().max().item() > 0.05


def test_score_equals_autograd_of_log_prob(mixture):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    for t in (0.01, 0.2, 3.0):
        t_vec = torch.full((32,), t, dtype=torch.float64)
        (grad,) = torch.autograd.grad(mixture.log_prob(x, t_vec).sum(), x)
        torch.testing.assert_close(mixture.score(x.detach(), t), grad, rtol=1e-9, atol=1e-9)


def test_denoiser_limits(mixture):
    x = torch.randn(10, 2, dtype=torch.float64)
    # very large noise: the posterior is the prior, D -> the data mean
    mean = (mixture.weights[:, None] * mixture.means).sum(0)
    torch.testing.assert_close(mixture.denoiser(x, 1e4), mean.expand(10, 2), atol=1e-6, rtol=0)
    # per-sample t is accepted
    t = torch.linspace(0.01, 5.0, 10, dtype=torch.float64)
    out = mixture.denoiser(x, t)
    for i in range(10):
        torch.testing.assert_close(out[i : i + 1], mixture.denoiser(x[i : i + 1], t[i].item()))


def test_single_gaussian_denoiser_closed_form():
    gm = GaussianMixture([[1.0, -2.0]], 0.5)
    x = torch.randn(7, 2, dtype=torch.float64)
    t = 0.8
    expected = torch.tensor([1.0, -2.0], dtype=torch.float64) + 0.25 / (0.25 + t**2) * (x - torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(gm.denoiser(x, t), expected, rtol=1e-12, atol=1e-12)


def test_flow_map_matches_solve_ivp(mixture):
    """flow_map (256 Heun steps) vs scipy's DOP853 at rtol 1e-8, atol 1e-10.

    The error per point is mostly ~1e-5; points started near a boundary between two
    modes (where the flow map is steep) can reach ~1e-3, so the bound is on the mean
    and the median, with a looser bound on the maximum.
    """
    g = torch.Generator().manual_seed(5)
    for t in (80.0, 1.0):
        x = mixture.sample(256, generator=g).double() + t * torch.randn(256, 2, generator=g, dtype=torch.float64)

        def rhs(s, y):
            xx = torch.from_numpy(y.reshape(-1, 2))
            return ((xx - mixture.denoiser(xx, s)) / s).numpy().ravel()

        sol = solve_ivp(rhs, (t, 0.002), x.numpy().ravel(), method="DOP853", rtol=1e-8, atol=1e-10)
        assert sol.success
        ref = torch.from_numpy(sol.y[:, -1].reshape(-1, 2))
        err = (mixture.flow_map(x, t, steps=256) - ref).norm(dim=1)
        assert err.mean().item() < 1e-4, err.mean()
        assert err.median().item() < 1e-4, err.median()
        assert err.max().item() < 5e-3, err.max()
        # second order: 4x the steps, ~16x smaller error
        err_fine = (mixture.flow_map(x, t, steps=1024) - ref).norm(dim=1)
        assert err_fine.mean().item() < err.mean().item() / 8
    # identity at t = t_end, and float32 in -> float32 out
    x32 = torch.randn(4, 2)
    assert torch.equal(mixture.flow_map(x32, 0.002), x32)
    assert mixture.flow_map(x32, 1.0).dtype == torch.float32


def test_flow_map_pushes_noise_to_data(mixture):
    g = torch.Generator().manual_seed(0)
    x = 80 * torch.randn(2000, 2, generator=g, dtype=torch.float64)
    out = mixture.flow_map(x, 80.0, steps=64)
    radius = out.norm(dim=1)
    assert radius.mean().item() == pytest.approx(0.75, abs=0.02)
    # modes with weight 2 get about twice as many points as weight-1 modes
    angle = torch.atan2(out[:, 1], out[:, 0])
    mode = torch.round(angle / (2 * math.pi / 8)).long() % 8
    counts = torch.bincount(mode, minlength=8).double()
    ratio = counts[0::2].sum() / counts[1::2].sum()
    assert ratio.item() == pytest.approx(2.0, rel=0.15)


def test_make_dataset_unknown_name_lists_allowed():
    with pytest.raises(ValueError) as info:
        make_dataset("nope")
    msg = str(info.value)
    assert "nope" in msg
    for name in ("gmm", "moons", "spiral", "checkerboard"):
        assert name in msg


@pytest.mark.parametrize("shape", [(5, 3), (5,), (2, 2, 2)])
def test_wrong_x_shape_raises(mixture, shape):
    x = torch.zeros(shape, dtype=torch.float64)
    for fn in (mixture.denoiser, mixture.score, mixture.log_prob):
        with pytest.raises(ValueError, match="shape"):
            fn(x, 1.0)


def test_bad_mixture_parameters_raise():
    with pytest.raises(ValueError):
        GaussianMixture([0.0, 1.0], 0.1)  # means must be 2-D
    with pytest.raises(ValueError):
        GaussianMixture([[0.0, 0.0], [1.0, 1.0]], 0.1, weights=[1.0, -1.0])
    with pytest.raises(ValueError):
        GaussianMixture([[0.0, 0.0]], 0.0)


@pytest.mark.parametrize("name", DATASETS)
def test_datasets_shape_and_reproducible(name):
    ds = make_dataset(name)
    a = ds.sample(300, generator=torch.Generator().manual_seed(7))
    b = ds.sample(300, generator=torch.Generator().manual_seed(7))
    c = ds.sample(300, generator=torch.Generator().manual_seed(8))
    assert a.shape == (300, 2) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # small 2-D toy data: roughly unit scale, as sigma_data = 0.5 assumes
    assert 0.1 < a.std().item() < 1.5


def test_ring_mixture_layout():
    gm = ring_mixture(n_modes=6, radius=2.0, std=0.1)
    np.testing.assert_allclose(gm.means.norm(dim=1).numpy(), 2.0, rtol=1e-12)
    np.testing.assert_allclose(gm.weights.numpy(), np.array([2, 1, 2, 1, 2, 1]) / 9, rtol=1e-12)
