import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from cmedu.metrics import consistency_error, energy_distance, sliced_wasserstein


def gen(seed):
    return torch.Generator().manual_seed(seed)


def energy_reference(x, y):
    """Unbiased energy distance with scipy's cdist (U-statistics for the within-sample terms)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    return 2 * cdist(x, y).mean() - cdist(x, x).sum() / (n * (n - 1)) - cdist(y, y).sum() / (m * (m - 1))


@pytest.mark.filterwarnings("ignore:std.*degrees of freedom")  # one block: no standard error
def test_energy_distance_matches_scipy():
    x = torch.randn(30, 2, generator=gen(0))
    y = torch.randn(44, 2, generator=gen(1)) + 0.3
    val, _ = energy_distance(x, y, blocks=1)
    assert val == pytest.approx(energy_reference(x, y), rel=1e-10)
    # with blocks: the mean of the per-block estimates, and its standard error
    val, se = energy_distance(x, y, blocks=3)
    per = [energy_reference(xb, yb) for xb, yb in zip(x.chunk(3), y.chunk(3))]
    assert val == pytest.approx(np.mean(per), rel=1e-10)
    assert se == pytest.approx(np.std(per, ddof=1) / math.sqrt(3), rel=1e-8)


def test_energy_distance_same_distribution_is_zero(mixture):
    x = mixture.sample(4000, generator=gen(0))
    y = mixture.sample(4000, generator=gen(1))
    val, se = energy_distance(x, y)
    assert se > 0
    assert abs(val) < 3 * se, (val, se)


def test_energy_distance_shift_is_positive(mixture):
    x = mixture.sample(4000, generator=gen(0))
    y = mixture.sample(4000, generator=gen(1)) + torch.tensor([0.2, 0.0])
    val, se = energy_distance(x, y)
    assert val > 6 * se, (val, se)
    bigger, _ = energy_distance(x, y + torch.tensor([0.2, 0.0]))
    assert bigger > val


def test_energy_distance_gaussian_closed_form():
    """For X ~ N(0, I_1) and Y ~ N(delta, I_1) in 1-D, the energy distance is
    2 E|X - Y| - 2 E|X - X'| with X - Y ~ N(-delta, 2): 2 (sqrt(2) (2 phi(a) + a (2 Phi(a) - 1))) - 4/sqrt(pi),
    a = delta / sqrt(2)."""
    from scipy.stats import norm

    delta = 1.0
    a = delta / math.sqrt(2)
    e_xy = math.sqrt(2) * (2 * norm.pdf(a) + a * (2 * norm.cdf(a) - 1))
    exact = 2 * e_xy - 2 * 2 / math.sqrt(math.pi)
    x = torch.randn(8000, 1, generator=gen(0))
    y = torch.randn(8000, 1, generator=gen(1)) + delta
    val, se = energy_distance(x, y)
    assert abs(val - exact) < 4 * se + 1e-3, (val, exact, se)


def test_energy_distance_bad_input():
    with pytest.raises(ValueError):
        energy_distance(torch.zeros(100, 2), torch.zeros(100, 3))
    with pytest.raises(ValueError):
        energy_distance(torch.zeros(10, 2), torch.zeros(10, 2), blocks=10)


def test_sliced_wasserstein_zero_for_identical_and_grows_with_shift():
    x = torch.randn(500, 2, generator=gen(0))
    assert sliced_wasserstein(x, x.clone(), n_projections=128, generator=gen(1)) == 0.0
    y = torch.randn(500, 2, generator=gen(3))
    vals = [sliced_wasserstein(x, y + torch.tensor([d, 0.0]), n_projections=128, generator=gen(1))
            for d in (0.0, 0.3, 1.0)]
    assert vals[0] < vals[1] < vals[2]


@pytest.mark.parametrize("delta", [(0.5, 0.0), (0.3, -0.4), (2.0, 1.0)])
def test_sliced_wasserstein_of_a_translation(delta):
    """Translating a sample by delta shifts every projection by <delta, theta> exactly, so
    SW_2^2 = E <delta, theta>^2 = |delta|^2 / 2 over uniform directions in 2-D."""
    x = torch.randn(200, 2, generator=gen(0))
    d = torch.tensor(delta)
    val = sliced_wasserstein(x, x + d, n_projections=2048, generator=gen(2))
    assert val == pytest.approx(d.norm().item() / math.sqrt(2), rel=0.03)


def test_sliced_wasserstein_bad_input():
    with pytest.raises(ValueError):
        sliced_wasserstein(torch.zeros(10, 2), torch.zeros(10, 3))


def test_consistency_error_exact_flow_map_is_zero(mixture):
    ts = [0.5, 5.0]
    exact = consistency_error(lambda x, t: mixture.flow_map(x, t), mixture, ts, n=200, generator=gen(0))
    assert exact.shape == (2,)
    assert (exact < 1e-4).all(), exact
    ident = consistency_error(lambda x, t: x, mixture, ts, n=200, generator=gen(0))
    assert (ident > 0.1).all(), ident
    # a model that is right up to a known offset has exactly that error
    off = consistency_error(lambda x, t: mixture.flow_map(x, t) + torch.tensor([0.03, 0.04]), mixture, ts, n=200,
                            generator=gen(0))
    torch.testing.assert_close(off.double(), torch.full((2,), 0.05, dtype=torch.float64), atol=1e-5, rtol=0)
