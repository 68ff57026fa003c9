"""Consistency losses: distillation (CM paper Alg. 2), training (Alg. 3), iCT's choices, EDM's denoising loss.

The grid ``sigmas`` is ascending, t_1 = eps < ... < t_N = T. An interval index n picks
(t_n, t_{n+1}); x_{t_{n+1}} = x_0 + t_{n+1} z, and the loss is

    lambda(t_n) d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta-(x̂_{t_n}, t_n)),

where x̂_{t_n} comes from one teacher ODE step (CD) or the same noise z (CT).
"""
import math

import torch

from ._checks import bcast, check_choice
from .distributed import global_batch, local_rows
from .ode import euler_step, heun_step
from .schedules import lognormal_sigmas, sample_step_indices


def _flat_sq(diff):
    return diff.flatten(1).pow(2).sum(1)


def squared_l2(x, y):
    """||x - y||^2 per sample."""
    return _flat_sq(x - y)


def l1(x, y):
    """||x - y||_1 per sample."""
    return (x - y).flatten(1).abs().sum(1)


def pseudo_huber(x, y, c=None):
    """sqrt(||x - y||^2 + c^2) - c per sample, c = 0.00054 sqrt(d) by default (iCT, Sec. 3.3)."""
    if c is None:
        c = 0.00054 * math.sqrt(x[0].numel())
    return torch.sqrt(_flat_sq(x - y) + c**2) - c


DISTANCES = {"l2": squared_l2, "l1": l1, "pseudo_huber": pseudo_huber}
WEIGHTINGS = ("uniform", "ict")
SOLVERS = {"euler": euler_step, "heun": heun_step}


def get_distance(name: str):
    check_choice("distance", name, tuple(DISTANCES))
    return DISTANCES[name]


def ict_weighting(t_n, t_next):
    """lambda(t_n) = 1 / (t_{n+1} - t_n) (iCT, Sec. 3.2)."""
    return 1.0 / (t_next - t_n)


def _weights(weighting, t_n, t_next):
    check_choice("weighting", weighting, WEIGHTINGS)
    return ict_weighting(t_n, t_next) if weighting == "ict" else torch.ones_like(t_n)


def _noisy_pair(x0, sigmas, generator, step_probs):
    b, mine = global_batch(x0), local_rows(x0)  # under DDP: draw for the global batch, keep this rank's rows
    n = sample_step_indices(len(sigmas) - 1, b, step_probs, generator)[mine]
    t_n, t_next = sigmas[n].to(x0), sigmas[n + 1].to(x0)
    z = torch.randn((b, *x0.shape[1:]), generator=generator)[mine].to(x0)
    return t_n, t_next, z


def _rng_states(device):
    """CPU and (on a GPU) CUDA generator states, so dropout can draw the same mask twice."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_states(states, device):
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state(states[1], device)


def cd_loss(model, target_model, teacher, x0, sigmas, generator=None, solver="heun", distance="l2",
            weighting="uniform", step_probs=None):
    """Consistency distillation loss (CM paper, Alg. 2).

    x̂_{t_n} is one Euler or Heun step of the teacher's PF-ODE from x_{t_{n+1}} down to t_n.
    ``teacher(x, t)`` is a denoiser; ``target_model`` is the EMA copy f_theta- (no gradient). The online and
    target passes share one dropout mask (the CPU and CUDA RNG states are restored between them), as in the
    CM paper's code and as iCT recommends (Song & Dhariwal 2023, Sec. 3.1).
    """
    check_choice("solver", solver, tuple(SOLVERS))
    dist = get_distance(distance)
    t_n, t_next, z = _noisy_pair(x0, sigmas, generator, step_probs)
    x_next = x0 + bcast(t_next, x0) * z
    with torch.no_grad():
        x_hat = SOLVERS[solver](teacher, x_next, t_next, t_n)
        states = _rng_states(x0.device)
        target = target_model(x_hat, t_n)
    _set_rng_states(states, x0.device)  # the online pass draws the target's dropout mask
    return (_weights(weighting, t_n, t_next) * dist(model(x_next, t_next), target)).mean()


def ct_loss(model, target_model, x0, sigmas, generator=None, distance="l2", weighting="uniform", step_probs=None):
    """Consistency training loss (CM paper, Alg. 3): x̂_{t_n} = x_0 + t_n z with the *same* z, no teacher.

    iCT (Song & Dhariwal 2023) is this loss with distance='pseudo_huber', weighting='ict',
    lognormal ``step_probs`` and target_model = the online model under stop-grad. As in ``cd_loss``, the online
    and target passes share one dropout mask.
    """
    dist = get_distance(distance)
    t_n, t_next, z = _noisy_pair(x0, sigmas, generator, step_probs)
    states = _rng_states(x0.device)
    with torch.no_grad():
        target = target_model(x0 + bcast(t_n, x0) * z, t_n)
    _set_rng_states(states, x0.device)  # the online pass draws the target's dropout mask
    online = model(x0 + bcast(t_next, x0) * z, t_next)
    return (_weights(weighting, t_n, t_next) * dist(online, target)).mean()


def edm_loss(denoiser, x0, generator=None, sigma_data=0.5, p_mean=-1.2, p_std=1.2, eps=0.002, T=80.0):
    """EDM denoising score matching: lambda(s) ||D(x_0 + s z, s) - x_0||^2, lambda = (s^2+sd^2)/(s sd)^2, log s ~ N."""
    b, mine = global_batch(x0), local_rows(x0)  # under DDP: draw for the global batch, keep this rank's rows
    sigma = lognormal_sigmas(b, p_mean, p_std, generator)[mine].clamp(eps, T).to(x0)
    z = torch.randn((b, *x0.shape[1:]), generator=generator)[mine].to(x0)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return (weight * squared_l2(denoiser(x0 + bcast(sigma, x0) * z, sigma), x0)).mean()


def ect_r(t, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0):
    """ECT's mapping r(t) = t (1 - q^-(stage+1) (1 + k sigmoid(-b t))), clamped at 0 (Geng et al. 2024, Sec. 3).

    As the stage rises, r -> t and the loss tends to the continuous-time consistency condition;
    at stage 0 most small t map to r = 0, where the target is the clean image (diffusion pretraining).
    """
    t = torch.as_tensor(t)
    ratio = 1.0 - q ** -(stage + 1) * (1.0 + k * torch.sigmoid(-b * t))
    return (t * ratio).clamp(min=0.0)


def ect_loss(model, x0, stage: int, generator=None, q=2.0, k=8.0, b=1.0, p_mean=-1.1, p_std=2.0):
    """Easy Consistency Tuning loss (Geng et al. 2024): ||f(x_t, t) - sg f(x_r, r)||_2 / (t - r), per sample.

    t is lognormal (P_mean, P_std), r = ``ect_r(t, stage)``; x_t and x_r share the noise z, and the two
    forward passes share the dropout mask (the CPU and CUDA RNG states are restored between them).
    Where r < eps the target is the clean image x_0 (the boundary condition f(x, eps) = x).
    """
    eps, T = model.eps, model.T
    n, mine = global_batch(x0), local_rows(x0)  # under DDP: draw for the global batch, keep this rank's rows
    t = lognormal_sigmas(n, p_mean, p_std, generator)[mine].clamp(eps, T).to(x0)
    r = ect_r(t, stage, q, k, b)
    z = torch.randn((n, *x0.shape[1:]), generator=generator)[mine].to(x0)
    states = _rng_states(x0.device)
    online = model(x0 + bcast(t, x0) * z, t)
    with torch.no_grad():
        _set_rng_states(states, x0.device)
        inside = r >= eps
        r_in = torch.where(inside, r, torch.full_like(r, eps))
        target = torch.where(bcast(inside, x0), model(x0 + bcast(r_in, x0) * z, r_in), x0)
        r = torch.where(inside, r, torch.zeros_like(r))
    return (torch.sqrt(squared_l2(online, target) + 1e-12) / (t - r)).mean()
