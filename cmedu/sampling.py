"""Sampling: one-step and multistep consistency sampling (CM paper, Alg. 1), and the ODE teacher."""
import torch

from ._checks import check_taus
from .continuous import MeanFlowModel, TrigFlowModel, meanflow_sample, trig_two_step_taus
from .flowmap import FlowMapModel, flow_map_sample
from .ode import euler_solve, heun_solve
from .schedules import karras_sigmas


def prior_sample(shape, T: float = 80.0, generator=None, device=None) -> torch.Tensor:
    """x_T ~ N(0, T^2 I)."""
    return T * torch.randn(shape, generator=generator).to(device or "cpu")


@torch.no_grad()
def multistep_sample(f, x_T: torch.Tensor, taus=(), eps: float = 0.002, generator=None, T: float = 80.0,
                     return_all: bool = False):
    """Alg. 1: x <- f(x_T, T); for tau in taus: x̂ = x + sqrt(tau^2 - eps^2) z, x <- f(x̂, tau).

    ``taus`` must be decreasing and inside (eps, T). NFE = 1 + len(taus). With ``return_all``
    returns the list of the sample after every step.
    """
    taus = check_taus(taus, eps, T)
    x = f(x_T, T)
    out = [x]
    for tau in taus:
        z = torch.randn(x.shape, generator=generator).to(x)
        x = f(x + (tau**2 - eps**2) ** 0.5 * z, tau)
        out.append(x)
    return out if return_all else x


def default_taus(nfe: int, eps: float = 0.002, T: float = 80.0):
    """Intermediate times for an nfe-step sample: the inner points of a Karras grid with nfe + 1 points."""
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1; got {nfe}")
    return karras_sigmas(nfe + 1, eps, T).flip(0)[1:-1].tolist()


@torch.no_grad()
def sample(f, shape, nfe: int = 1, taus=None, generator=None, eps: float = 0.002, T: float = 80.0, device=None):
    """Draw samples from a consistency model with ``nfe`` steps: ``sample_from`` on fresh x_T ~ N(0, T² I)."""
    return sample_from(f, prior_sample(shape, T, generator, device), nfe, taus, generator, eps, T)


@torch.no_grad()
def sample_from(f, x_T: torch.Tensor, nfe: int = 1, taus=None, generator=None, eps: float = 0.002, T: float = 80.0):
    """``nfe``-step samples from x_T with the sampler that belongs to the model.

    A consistency function: Alg. 1 with ``taus`` (default ``default_taus``; for a ``TrigFlowModel`` at two steps,
    sCM's t_mid = 1.1). A ``MeanFlowModel``: MeanFlow's own sampler from the noise x_T / T at t = 1, in ``nfe``
    equal steps of its time (``taus`` do not apply). A ``FlowMapModel``: ``nfe`` jumps X(x, t_i, t_{i+1}) on a Karras
    grid from T to ε, no re-noising (``flowmap.flow_map_sample``).
    """
    if isinstance(f, FlowMapModel):
        if taus:
            raise ValueError("a flow map samples on a Karras grid of nfe + 1 times; pass taus=None")
        return flow_map_sample(f, x_T, nfe)
    if isinstance(f, MeanFlowModel):
        if taus:
            raise ValueError("a MeanFlowModel samples on its own even time grid; pass taus=None")
        return meanflow_sample(f, x_T / T, nfe)
    if taus is None:
        two_step_trig = isinstance(f, TrigFlowModel) and nfe == 2
        taus = trig_two_step_taus(f.sigma_data) if two_step_trig else default_taus(nfe, eps, T)
    return multistep_sample(f, x_T, taus, eps, generator, T)


@torch.no_grad()
def teacher_sample(denoiser, x_T: torch.Tensor, nfe: int, eps: float = 0.002, T: float = 80.0, rho: float = 7.0):
    """Solve the PF-ODE from T to eps with ``nfe`` denoiser evaluations (EDM's Heun sampler).

    nfe <= 2: Euler steps on a Karras grid (one Heun step from T straight to eps diverges).
    Otherwise ceil(nfe/2) Heun steps, the last one Euler when nfe is odd (so nfe = 35 is
    EDM's 18-step sampler).
    """
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1; got {nfe}")
    if nfe <= 2:
        return euler_solve(denoiser, x_T, karras_sigmas(nfe + 1, eps, T, rho).flip(0))
    n_steps = (nfe + 1) // 2
    ts = karras_sigmas(n_steps + 1, eps, T, rho).flip(0)
    return heun_solve(denoiser, x_T, ts, last_step_euler=nfe % 2 == 1)


START_GRID = (80.0, 40.0, 20.0, 10.0, 5.0, 2.5)


@torch.no_grad()
def search_one_step_start(f, z: torch.Tensor, score, grid=START_GRID, T: float = 80.0):
    """The noise level s at which one-step sampling starts, x = f(s z, s), that minimises ``score(x)`` over ``grid``.

    Alg. 1 starts at T. A briefly trained model has seen few noise levels near T (lognormal sampling puts
    little mass there), and its one-step samples from T are poor. Started at s < T from s z it ignores the
    data's part of x_s = x_0 + s z (std sigma_data against s), which costs little while s >> sigma_data.
    Every s gets the same standard-normal ``z`` (paired). Score on held-out data, as for the two-step tau.
    Returns (best_s, {s: score}).
    """
    outside = [s for s in grid if not 0 < s <= T]
    if outside:
        raise ValueError(f"a start noise level must be in (0, T = {T:g}]; got {', '.join(f'{s:g}' for s in outside)}")
    scores = {}
    for s in grid:
        x = f(z * s, torch.full((z.shape[0],), float(s), device=z.device, dtype=z.dtype))
        scores[float(s)] = float(score(x))
    return min(scores, key=scores.get), scores


@torch.no_grad()
def search_two_step_tau(f, x_T: torch.Tensor, score, grid, eps: float = 0.002, T: float = 80.0, seed: int = 0):
    """The tau of a two-step sampler (Alg. 1 with taus=(tau,)) that minimises ``score(samples)`` over ``grid``.

    Every tau gets the same x_T and the same re-noising z (seeded alike), so the comparison is paired.
    Score on held-out data, not on the data the final metric uses (as notebook 05 does).
    Returns (best_tau, {tau: score}).
    """
    scores = {}
    for tau in grid:
        x = multistep_sample(f, x_T, (float(tau),), eps, torch.Generator().manual_seed(seed), T)
        scores[float(tau)] = float(score(x))
    return min(scores, key=scores.get), scores
