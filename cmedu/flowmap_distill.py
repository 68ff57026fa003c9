"""Flow-map distillation from a teacher's own ODE trajectories: the ``flowmap`` method of ``python -m cmedu train``.

The teacher's sampler (Heun on a Karras grid of ``points`` times, T = t_0 > … > t_{points−1} = ε) defines a
discrete flow map: X_teacher(x_{t_i}, t_i, t_j) is where its trajectory through x_{t_i} is at t_j. One solve of
``points − 1`` Heun steps from x_T gives every pair (i, j) of that trajectory at once, so the two-time model
X_θ (``flowmap.FlowMapModel``) can be regressed on exact targets, with no bootstrapping from its own outputs:

    L(θ) = E_{x_T, (i, j)} w(t_j) ||X_θ(x_{t_i}, t_i, t_j) − x_{t_j}||²,     w(s) = σ_d² / (s² + σ_d²).

- **The pairs.** k-step sampling with k + 1 Karras points uses jumps of (points − 1)/k grid steps, so with
  points = 17 the samplers of k = 1, 2, 4, 8 and 16 steps use only the *dyadic* pairs (jumps of 16, 8, 4, 2 and 1
  steps starting at a multiple of the jump). Training draws the jump length uniformly among these levels, then its
  start uniformly (the shortcut models' step sizes, Frans et al. 2024, Sec. 3; here every level has a teacher's
  target rather than two half-jumps of the model).
- **The weight.** An error δ of x at noise level s reaches the sample scaled by about σ_d/√(s² + σ_d²) (the ratio of
  the data's scale to x_s's), so w(s) weighs every pair by its effect on the final image; without it the pairs
  that land at large s (values of size s) dominate the loss.
- **The start.** ``methods.copy_teacher_weights`` puts the teacher's network into the two-time network with the
  s-features' weights zero: then u_θ(x, t, s) = v_teacher(x, t) and X_θ is the teacher's Euler step, a flow map
  that is already right for short jumps (Boffi et al. 2025's tangent condition).

This is what Boffi, Albergo & Vanden-Eijnden (2025) call flow-map matching against a teacher, on the teacher's
discrete grid; it needs no data (only noise and the teacher) and no JVP. Each step costs one teacher solve per
``pairs_per_trajectory`` rows (2 (points − 1) evaluations) and one forward/backward pass of the student.
"""
import math

import torch

from .distributed import global_batch, local_rows
from .losses import squared_l2
from .ode import heun_solve
from .schedules import karras_sigmas

DEFAULT_POINTS = 17  # 16 Heun steps: the grids of 1, 2, 4, 8 and 16 sampling steps are all subsets of it


def dyadic_levels(points: int) -> int:
    """The number of jump lengths 1, 2, 4, … that tile a grid of ``points`` times; ``points − 1`` must be 2^L."""
    steps = points - 1
    if steps < 1 or steps & (steps - 1):
        raise ValueError(f"points − 1 must be a power of two (2, 3, 5, 9, 17, 33 points); got points = {points}")
    return int(math.log2(steps)) + 1


def dyadic_pairs(n: int, points: int = DEFAULT_POINTS, generator=None):
    """(i, j): ``n`` grid index pairs, i < j (0 is T): a jump of 2^l steps from a multiple of 2^l, l uniform."""
    levels = dyadic_levels(points)
    length = 2 ** torch.randint(0, levels, (n,), generator=generator)
    starts = (torch.rand(n, generator=generator) * ((points - 1) // length)).long()
    i = starts * length
    return i, i + length


def teacher_trajectory(teacher, x_T: torch.Tensor, ts) -> torch.Tensor:
    """The teacher's Heun trajectory through the grid ``ts`` (T first): shape (len(ts), *x_T.shape)."""
    return heun_solve(teacher, x_T, ts, return_trajectory=True)


def pair_weight(s: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """w(s) = σ_d² / (s² + σ_d²): an error of x at noise level s scaled to its effect on the sample."""
    return sigma_data**2 / (s**2 + sigma_data**2)


def flowmap_distill_loss(model, teacher, x0: torch.Tensor, generator=None, points: int = DEFAULT_POINTS,
                         pairs_per_trajectory: int = 8) -> torch.Tensor:
    """The loss above on ``len(x0)`` rows (only x0's shape is used: the teacher replaces the data).

    ``pairs_per_trajectory`` rows share one teacher solve; the global batch must be a multiple of it. Under a
    process group each rank solves and scores its own share of the trajectories (``distributed.shard``).
    """
    n_global = global_batch(x0)
    if n_global % pairs_per_trajectory:
        raise ValueError(f"the batch ({n_global}) must be a multiple of pairs_per_trajectory ({pairs_per_trajectory})")
    n_traj = n_global // pairs_per_trajectory
    ts = karras_sigmas(points, model.eps, model.T).flip(0).to(x0)  # T ... ε
    x_T = (torch.randn((n_traj, *x0.shape[1:]), generator=generator) * model.T).to(x0)
    i, j = dyadic_pairs(n_global, points, generator)
    mine = local_rows(x0.shape[0])  # this rank's rows; its trajectories are the ones those rows use
    i, j = i[mine].to(x0.device), j[mine].to(x0.device)
    traj_of_row = torch.arange(n_global, device=x0.device)[mine] // pairs_per_trajectory
    first = int(traj_of_row[0]) if len(traj_of_row) else 0
    used = slice(first, int(traj_of_row[-1]) + 1 if len(traj_of_row) else 0)
    with torch.no_grad():
        traj = teacher_trajectory(teacher, x_T[used], ts)  # (points, n_used, ...)
    row = traj_of_row - first
    x_t, target = traj[i, row], traj[j, row]
    t, s = ts[i], ts[j]
    err = squared_l2(model.flow(x_t, t, s), target)
    return (pair_weight(s, model.sigma_data) * err).mean()


def check_sampling_steps(steps: int, points: int):
    """k-step sampling of a model trained on a ``points`` grid stays on that grid only when k divides points − 1."""
    if steps < 1 or (points - 1) % steps:
        allowed = [k for k in range(1, points) if (points - 1) % k == 0]
        raise ValueError(f"this flow map was trained on the jumps of a {points}-point grid: sample with a number of "
                         f"steps that divides {points - 1} ({', '.join(map(str, allowed))}); got {steps}")


__all__ = ["DEFAULT_POINTS", "dyadic_levels", "dyadic_pairs", "teacher_trajectory", "pair_weight",
           "flowmap_distill_loss", "check_sampling_steps"]
