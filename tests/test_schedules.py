import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from cmedu.schedules import (
    cm_ema_decay,
    cm_num_steps,
    ict_num_steps,
    karras_sigmas,
    lognormal_sigmas,
    lognormal_step_probs,
    sample_step_indices,
)


@pytest.mark.parametrize("n,smin,smax,rho", [(2, 0.002, 80.0, 7.0), (18, 0.002, 80.0, 7.0), (41, 0.01, 5.0, 3.0)])
def test_karras_sigmas_closed_formula(n, smin, smax, rho):
    t = karras_sigmas(n, smin, smax, rho)
    assert t.shape == (n,)
    i = np.arange(1, n + 1)
    expected = (smin ** (1 / rho) + (i - 1) / (n - 1) * (smax ** (1 / rho) - smin ** (1 / rho))) ** rho
    np.testing.assert_allclose(t.double().numpy(), expected, rtol=1e-6, atol=0)
    assert (t[1:] > t[:-1]).all(), "grid must be strictly ascending"
    assert t[0].item() == torch.tensor(smin, dtype=t.dtype).item()
    assert t[-1].item() == torch.tensor(smax, dtype=t.dtype).item()


def test_karras_sigmas_defaults():
    t = karras_sigmas(18)
    assert t[0].item() == pytest.approx(0.002, rel=1e-7)
    assert t[-1].item() == pytest.approx(80.0, rel=1e-7)


@pytest.mark.parametrize("n", [1, 0, -3])
def test_karras_sigmas_needs_two_points(n):
    with pytest.raises(ValueError, match="n >= 2"):
        karras_sigmas(n)


def test_karras_sigmas_bad_range():
    with pytest.raises(ValueError):
        karras_sigmas(10, sigma_min=1.0, sigma_max=0.5)


def _n_formula(k, K, s0=2, s1=150):
    return math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1


@pytest.mark.parametrize("k", [0, 1, 10, 137, 500, 999, 1000])
def test_cm_num_steps_formula(k):
    K = 1000
    assert cm_num_steps(k, K) == _n_formula(k, K)
    assert cm_num_steps(k, K, s0=10, s1=1280) == _n_formula(k, K, 10, 1280)
    assert cm_ema_decay(k, K) == pytest.approx(math.exp(2 * math.log(0.95) / _n_formula(k, K)), rel=1e-12)
    assert cm_ema_decay(k, K, mu0=0.9) == pytest.approx(math.exp(2 * math.log(0.9) / _n_formula(k, K)), rel=1e-12)


def test_cm_num_steps_endpoints_and_monotone():
    K = 800
    assert cm_num_steps(0, K) == 2  # N(0) = s0
    assert cm_num_steps(K, K) == 151  # N(K) = s1 + 1
    ns = [cm_num_steps(k, K) for k in range(K + 1)]
    assert all(a <= b for a, b in zip(ns, ns[1:]))
    # mu(0) = mu0 (N(0) = s0) and mu grows towards 1 as N grows
    assert cm_ema_decay(0, K) == pytest.approx(0.95, rel=1e-12)
    mus = [cm_ema_decay(k, K) for k in range(0, K + 1, 50)]
    assert all(a <= b for a, b in zip(mus, mus[1:]))
    assert mus[-1] == pytest.approx(math.exp(2 * math.log(0.95) / 151))


def test_ict_num_steps_doubling_curriculum():
    K = 8000
    k_prime = math.floor(K / (math.log2(math.floor(1280 / 10)) + 1))
    assert k_prime == 1000
    assert ict_num_steps(0, K) == 11
    assert ict_num_steps(k_prime - 1, K) == 11
    assert ict_num_steps(k_prime, K) == 21
    assert ict_num_steps(2 * k_prime, K) == 41
    expected = [min(10 * 2 ** (k // k_prime), 1280) + 1 for k in range(0, 2 * K, 97)]
    assert [ict_num_steps(k, K) for k in range(0, 2 * K, 97)] == expected
    values = sorted({ict_num_steps(k, K) for k in range(0, 2 * K, 50)})
    assert values == [11, 21, 41, 81, 161, 321, 641, 1281]
    assert ict_num_steps(10 * K, K) == 1281  # capped


def test_lognormal_step_probs_matches_cdf():
    sigmas = karras_sigmas(41)
    p = lognormal_step_probs(sigmas)
    assert p.shape == (40,)
    assert (p >= 0).all()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-6)
    cdf = norm.cdf(np.log(sigmas.double().numpy()), loc=-1.1, scale=2.0)
    ref = np.diff(cdf)
    np.testing.assert_allclose(p.numpy(), ref / ref.sum(), rtol=1e-5, atol=1e-8)


def test_lognormal_step_probs_peak_near_exp_minus_1_1():
    # On a log-uniform grid the interval probabilities follow the lognormal density in log t,
    # which peaks at log t = P_mean = -1.1.
    sigmas = torch.exp(torch.linspace(math.log(0.002), math.log(80.0), 201))
    p = lognormal_step_probs(sigmas)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-6)
    k = int(p.argmax())
    mid = math.sqrt(sigmas[k].item() * sigmas[k + 1].item())
    assert abs(math.log(mid) - (-1.1)) < 0.06
    # On the Karras grid the density per unit log t still peaks there.
    ks = karras_sigmas(201)
    pk = lognormal_step_probs(ks).double()
    dens = pk / torch.diff(torch.log(ks.double()))
    j = int(dens.argmax())
    assert abs(0.5 * math.log(ks[j].item() * ks[j + 1].item()) + 1.1) < 0.1


def test_sample_step_indices_range_and_distribution():
    g = torch.Generator().manual_seed(0)
    idx = sample_step_indices(10, 5000, generator=g)
    assert idx.min() >= 0 and idx.max() <= 9
    probs = torch.tensor([0.7, 0.2, 0.1, 0.0])
    idx = sample_step_indices(4, 20000, probs, generator=g)
    freq = torch.bincount(idx, minlength=4).double() / 20000
    assert freq[3] == 0
    np.testing.assert_allclose(freq.numpy(), probs.numpy(), atol=0.015)


def test_lognormal_sigmas_moments():
    g = torch.Generator().manual_seed(1)
    s = lognormal_sigmas(20000, p_mean=-1.2, p_std=1.2, generator=g)
    assert (s > 0).all()
    logs = torch.log(s.double())
    assert logs.mean().item() == pytest.approx(-1.2, abs=0.04)
    assert logs.std().item() == pytest.approx(1.2, abs=0.04)


def test_ct_target_decay_schedules():
    from cmedu.schedules import CM_PAPER_STEPS, cm_ema_decay, ct_target_decay

    K = 3000
    for k in (0, 100, 1500, 2999):
        paper = cm_ema_decay(k, K)
        assert ct_target_decay(k, K, schedule="paper") == paper
        assert ct_target_decay(k, K, schedule="zero") == 0.0
        scaled = ct_target_decay(k, K, schedule="scaled")
        # theta-'s half-life, ln 0.5 / ln mu, is the paper's times K / 800k: the same fraction of the run
        half = lambda mu: math.log(0.5) / math.log(mu)  # noqa: E731
        assert half(scaled) == pytest.approx(half(paper) * K / CM_PAPER_STEPS, rel=1e-9)
    # a run as long as the paper's gets the paper's mu(k)
    assert ct_target_decay(5, CM_PAPER_STEPS, schedule="scaled") == cm_ema_decay(5, CM_PAPER_STEPS)
    with pytest.raises(ValueError, match="scaled"):
        ct_target_decay(0, K, schedule="fixed")
