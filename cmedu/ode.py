"""The probability-flow ODE of the variance-exploding diffusion x_t = x_0 + t z (EDM eq. 3 with sigma(t) = t).

    dx/dt = (x - D(x, t)) / t,

where D(x, t) = E[x_0 | x_t = x] is the denoiser. Integrating from t = T down to eps maps
noise to data; the map x_t -> x_eps along one solution is what a consistency model learns.
"""
import torch

from ._checks import as_time, bcast


def drift(denoiser, x: torch.Tensor, t) -> torch.Tensor:
    """PF-ODE velocity dx/dt = (x - D(x, t)) / t."""
    t = as_time(t, x)
    return (x - denoiser(x, t)) / bcast(t, x)


def euler_step(denoiser, x: torch.Tensor, t, t_next) -> torch.Tensor:
    """One Euler step from t to t_next (either direction): x + (t_next - t) dx/dt(x, t). 1 NFE."""
    t, t_next = as_time(t, x), as_time(t_next, x)
    return x + bcast(t_next - t, x) * drift(denoiser, x, t)


def heun_step(denoiser, x: torch.Tensor, t, t_next) -> torch.Tensor:
    """One Heun (2nd-order trapezoidal) step from t to t_next (EDM Alg. 1, lines 5-8). 2 NFE."""
    t, t_next = as_time(t, x), as_time(t_next, x)
    h = bcast(t_next - t, x)
    d = drift(denoiser, x, t)
    x_euler = x + h * d
    return x + h * 0.5 * (d + drift(denoiser, x_euler, t_next))


def _solve(step, denoiser, x, ts, return_trajectory, last_step_euler=False):
    ts = torch.as_tensor(ts, dtype=x.dtype, device=x.device)
    if ts.ndim != 1 or len(ts) < 2:
        raise ValueError(f"ts must be a 1-D grid of at least 2 times; got shape {tuple(ts.shape)}")
    if (ts <= 0).any():
        raise ValueError("all times in ts must be > 0 (the ODE drift divides by t)")
    traj = [x]
    for i in range(len(ts) - 1):
        last = i == len(ts) - 2
        x = (euler_step if last and last_step_euler else step)(denoiser, x, ts[i], ts[i + 1])
        if return_trajectory:
            traj.append(x)
    return torch.stack(traj) if return_trajectory else x


@torch.no_grad()
def euler_solve(denoiser, x: torch.Tensor, ts, return_trajectory: bool = False) -> torch.Tensor:
    """Integrate the PF-ODE with Euler over the grid ts (ts[0] -> ts[-1], either direction).

    Returns the final state, or all len(ts) states stacked on a new first axis.
    """
    return _solve(euler_step, denoiser, x, ts, return_trajectory)


@torch.no_grad()
def heun_solve(denoiser, x: torch.Tensor, ts, return_trajectory: bool = False, last_step_euler: bool = False):
    """Integrate the PF-ODE with Heun over the grid ts (either direction).

    ``last_step_euler=True`` makes the last step Euler, as EDM's sampler does: then
    n Heun steps cost 2n - 1 network evaluations (18 steps = the 35-NFE teacher).
    """
    return _solve(heun_step, denoiser, x, ts, return_trajectory, last_step_euler)
