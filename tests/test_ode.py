"""PF-ODE solvers against scipy's adaptive solvers, with the exact mixture denoiser as the drift."""
import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from cmedu.ode import drift, euler_solve, euler_step, heun_solve, heun_step
from cmedu.schedules import karras_sigmas
from cmedu.toy import make_dataset


@pytest.fixture(scope="module")
def gmm():
    return make_dataset("gmm")


def reference(gmm, x, t0, t1):
    """Solution of dx/dt = (x - D(x, t)) / t from t0 to t1 by scipy (DOP853, tight tolerances)."""

    def rhs(t, y):
        xx = torch.from_numpy(y.reshape(-1, 2))
        return ((xx - gmm.denoiser(xx, t)) / t).numpy().ravel()

    sol = solve_ivp(rhs, (t0, t1), x.numpy().ravel(), method="DOP853", rtol=1e-10, atol=1e-12)
    assert sol.success
    return torch.from_numpy(sol.y[:, -1].reshape(-1, 2))


def grid(n_steps, t0, t1):
    ts = karras_sigmas(n_steps + 1, min(t0, t1), max(t0, t1)).double()
    ts = ts.flip(0) if t0 > t1 else ts
    ts[0], ts[-1] = t0, t1
    return ts


@pytest.fixture(scope="module")
def problem(gmm):
    g = torch.Generator().manual_seed(0)
    t0, t1 = 2.0, 0.002
    x = gmm.sample(16, generator=g).double() + t0 * torch.randn(16, 2, generator=g, dtype=torch.float64)
    return x, t0, t1, reference(gmm, x, t0, t1)


def observed_order(steps, errs):
    """Least-squares slope of log(error) against log(1/steps)."""
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0]


def errors(solver, gmm, problem, steps):
    x, t0, t1, ref = problem
    return np.array([(solver(gmm.denoiser, x, grid(n, t0, t1)) - ref).abs().max().item() for n in steps])


def test_euler_first_order(gmm, problem):
    steps = [64, 128, 256]
    errs = errors(euler_solve, gmm, problem, steps)
    assert (np.diff(errs) < 0).all(), errs
    order = observed_order(steps, errs)
    assert 0.8 < order < 1.3, (order, errs)
    assert errs[-1] < 1e-2


def test_heun_second_order(gmm, problem):
    steps = [16, 32, 64, 128]
    errs = errors(heun_solve, gmm, problem, steps)
    assert (np.diff(errs) < 0).all(), errs
    order = observed_order(steps, errs)
    assert 1.7 < order < 2.4, (order, errs)
    assert errs[-1] < 1e-3
    # Heun beats Euler at the same number of steps by a wide margin
    assert errs[-1] < 0.1 * errors(euler_solve, gmm, problem, [128])[0]


def test_heun_from_T_matches_scipy(gmm):
    g = torch.Generator().manual_seed(3)
    x = 80.0 * torch.randn(8, 2, generator=g, dtype=torch.float64)
    ref = reference(gmm, x, 80.0, 0.002)
    out = heun_solve(gmm.denoiser, x, grid(256, 80.0, 0.002))
    assert (out - ref).abs().max().item() < 1e-3
    # the end points are near the data (the 8 ring modes at radius 0.75)
    assert ((out.norm(dim=1) - 0.75).abs() < 0.3).all()


def test_forward_direction(gmm):
    """eps -> t works too (the encoder direction): it converges to scipy's solution at the same orders."""
    g = torch.Generator().manual_seed(1)
    x0 = gmm.sample(16, generator=g).double()
    t0, t1 = 0.002, 2.0
    ref = reference(gmm, x0, t0, t1)
    assert (grid(8, t0, t1).diff() > 0).all()
    steps = [64, 128, 256]
    for solver, lo, hi, tol in [(euler_solve, 0.8, 1.3, 0.05), (heun_solve, 1.7, 2.4, 1e-3)]:
        errs = np.array([(solver(gmm.denoiser, x0, grid(n, t0, t1)) - ref).abs().max().item() for n in steps])
        assert (np.diff(errs) < 0).all(), errs
        assert lo < observed_order(steps, errs) < hi, errs
        assert errs[-1] < tol, errs
    # and back again: the round trip returns to the start
    ts = grid(256, t0, t1)
    back = heun_solve(gmm.denoiser, heun_solve(gmm.denoiser, x0, ts), ts.flip(0))
    assert (back - x0).abs().max().item() < 1e-3


@pytest.mark.parametrize("solver", [euler_solve, heun_solve])
def test_return_trajectory_shape(gmm, solver):
    x = torch.randn(5, 2, dtype=torch.float64)
    ts = grid(7, 2.0, 0.002)
    traj = solver(gmm.denoiser, x, ts, return_trajectory=True)
    assert traj.shape == (len(ts), 5, 2)
    assert torch.equal(traj[0], x)
    assert torch.equal(traj[-1], solver(gmm.denoiser, x, ts))


def test_single_steps_match_formulas(gmm):
    x = torch.randn(6, 2, dtype=torch.float64)
    t, tn = 1.3, 0.7
    d = (x - gmm.denoiser(x, t)) / t
    torch.testing.assert_close(drift(gmm.denoiser, x, t), d)
    torch.testing.assert_close(euler_step(gmm.denoiser, x, t, tn), x + (tn - t) * d)
    xe = x + (tn - t) * d
    d2 = (xe - gmm.denoiser(xe, tn)) / tn
    torch.testing.assert_close(heun_step(gmm.denoiser, x, t, tn), x + (tn - t) * 0.5 * (d + d2))


def test_delta_data_is_solved_exactly():
    # data = a point mass at 0: D = 0, the solution is x(t) = x(t0) t / t0, a straight line,
    # which Euler and Heun both integrate exactly.
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x = torch.randn(4, 2, dtype=torch.float64)
    ts = grid(5, 10.0, 0.01)
    for solver in (euler_solve, heun_solve):
        torch.testing.assert_close(solver(zero, x, ts), x * 0.01 / 10.0, rtol=1e-12, atol=1e-14)


def test_heun_last_step_euler_counts_nfe(gmm):
    calls = []

    def counted(x, t):
        calls.append(1)
        return gmm.denoiser(x, t)

    ts = grid(18, 80.0, 0.002)
    x = 80 * torch.randn(3, 2, dtype=torch.float64)
    heun_solve(counted, x, ts, last_step_euler=True)
    assert len(calls) == 35
    calls.clear()
    heun_solve(counted, x, ts)
    assert len(calls) == 36
    calls.clear()
    euler_solve(counted, x, ts)
    assert len(calls) == 18


@pytest.mark.parametrize("ts", [[1.0], [[1.0, 0.5]], [1.0, 0.0], [1.0, -0.5, 0.1]])
def test_bad_grid_raises(gmm, ts):
    with pytest.raises(ValueError):
        heun_solve(gmm.denoiser, torch.zeros(2, 2, dtype=torch.float64), ts)
