"""Continuous-time consistency models: the tangent df/dt by one JVP, and the losses built on it.

Discrete CD/CT compare f at two neighbouring times. As the grid gets finer the comparison becomes
the time derivative of f along the PF-ODE, the *tangent*

    df/dt = ∂f/∂t + ∇_x f · dx/dt,

which ``torch.func.jvp`` computes in one forward pass (no finite differences). Three methods use it:

- **continuous-time CD / CT** (Song et al. 2023, Sec. 5 / App. B.2): a pseudo-objective
  <f_θ(x_t, t), sg(df/dt)> whose gradient is the N -> ∞ limit of the discrete L2 loss;
- **sCM** (Lu & Song 2024, Alg. 1) in the TrigFlow convention x_t = cos t x_0 + sin t z, z ~ N(0, σ_d² I):
  sCD (dx/dt from a teacher) and sCT (dx/dt = cos t z − sin t x_0), with tangent warm-up,
  tangent normalisation and a learned adaptive weight;
- **MeanFlow** (Geng et al. 2025) in its own convention (data at t = 0, noise at t = 1, the linear
  path z_t = (1 − t) x + t ε): an average velocity u(z, r, t) trained with the MeanFlow identity.

The wrappers ``TrigFlowModel`` and ``MeanFlowModel`` are called like every other model of the
library, ``model(x, sigma)`` in the CM paper's convention (x = x_0 + σ z), and convert inside,
so samplers, metrics, editing and checkpoints treat them like a ``ConsistencyModel``.
"""
import math
import warnings

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ._checks import as_time, bcast, check_time_range
from .distributed import global_batch, local_rows
from .losses import squared_l2
from .nets import FourierEmbedding
from .ode import drift
from .parameterization import edm_scalings
from .schedules import lognormal_sigmas


def jvp(fn, primals, tangents):
    """``torch.func.jvp`` with attention on PyTorch's math kernel (fused GPU kernels have no forward-mode AD)."""
    with sdpa_kernel(SDPBackend.MATH), warnings.catch_warnings():
        # torch.func's first call scripts a helper with the deprecated torch.jit.script: not ours to act on
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        return torch.func.jvp(fn, primals, tangents)


def consistency_tangent(f, x_t: torch.Tensor, t, dxdt: torch.Tensor):
    """(f(x_t, t), df/dt) with df/dt = ∂f/∂t + ∇_x f · dx/dt along the direction ``dxdt``: one JVP.

    ``f(x, t)`` takes t of shape (batch,). Along the PF-ODE (dx/dt = (x − D(x, t))/t) the exact
    consistency function has df/dt = 0: that is the consistency condition in differential form.
    """
    t = as_time(t, x_t)
    return jvp(f, (x_t, t), (dxdt, torch.ones_like(t)))


def continuous_cm_objective(model, x_t, t, dxdt):
    """<f_θ(x_t, t), sg(df/dt)> per sample, summed over dimensions and averaged over the batch.

    For the discrete L2 loss ||f_θ(x_t, t) − sg f_θ(x_t − Δ dx/dt, t − Δ)||² the gradient is
    2Δ (df/dt)ᵀ ∂f_θ/∂θ + O(Δ²), so the gradient of this objective is the discrete one divided by 2Δ,
    in the limit Δ -> 0 (CM paper, Sec. 5, Thms. 5-6). Its value is not a distance (it can be negative).
    """
    with torch.no_grad():
        _, dfdt = consistency_tangent(model, x_t, t, dxdt)
    return (model(x_t, t) * dfdt).flatten(1).sum(1).mean()


def continuous_cm_loss(model, x0, generator=None, teacher=None, p_mean=-1.1, p_std=2.0):
    """Continuous-time CD (with ``teacher``) or CT (without) for the L2 metric: ``continuous_cm_objective``
    at lognormal t, with dx/dt the teacher's PF-ODE drift (x_t − D(x_t, t))/t (CD) or its one-sample
    estimate (x_t − x_0)/t = z (CT)."""
    t = lognormal_sigmas(x0.shape[0], p_mean, p_std, generator).clamp(model.eps, model.T).to(x0)
    z = torch.randn(x0.shape, generator=generator).to(x0)
    x_t = x0 + bcast(t, x0) * z
    with torch.no_grad():
        dxdt = z if teacher is None else drift(teacher, x_t, t)
    return continuous_cm_objective(model, x_t, t, dxdt)


# -- TrigFlow / sCM -------------------------------------------------------------------------------

def trig_time(sigma, sigma_data: float = 0.5):
    """TrigFlow time of the noise level σ: t = arctan(σ / σ_d) (0 = data, π/2 = pure noise)."""
    return torch.atan(torch.as_tensor(sigma) / sigma_data)


def edm_to_trig(x, sigma, sigma_data: float = 0.5):
    """(x_t, t) of the TrigFlow path for x = x_0 + σ z: t = arctan(σ/σ_d), x_t = cos t · x."""
    t = trig_time(as_time(sigma, x), sigma_data)
    return bcast(torch.cos(t), x) * x, t


def trig_to_edm(x_t, t, sigma_data: float = 0.5):
    """The inverse of ``edm_to_trig``: σ = σ_d tan t, x = x_t / cos t."""
    t = as_time(t, x_t)
    return x_t / bcast(torch.cos(t), x_t), sigma_data * torch.tan(t)


def trig_velocity(denoiser, x_t, t, sigma_data: float = 0.5):
    """dx_t/dt of the TrigFlow PF-ODE from an EDM-convention denoiser D(x, σ): (cos t · x_t − D) / sin t.

    From x_t = cos t x_0 + sin t z: dx_t/dt = −sin t x_0 + cos t z, with x_0 and z replaced by their
    posterior means given x_t (D, and (x_t − cos t D)/sin t).
    """
    x, sigma = trig_to_edm(x_t, t, sigma_data)
    c, s = bcast(torch.cos(t), x_t), bcast(torch.sin(t), x_t)
    return (c * x_t - denoiser(x, sigma)) / s


def trig_two_step_taus(sigma_data: float = 0.5, t_mid: float = 1.1):
    """sCM's two-step sampler (t_mid = 1.1) as the σ of ``multistep_sample``: (σ_d tan t_mid,)."""
    return (sigma_data * math.tan(t_mid),)


class AdaptiveWeight(nn.Module):
    """sCM's learned weight w_φ(t): a linear layer on sinusoidal features of c_noise, 0 at init."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.embed = FourierEmbedding(dim)
        self.linear = nn.Linear(dim, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c_noise):
        return self.linear(self.embed(c_noise))[:, 0]


class TrigFlowModel(nn.Module):
    """sCM's consistency function f(x_t, t) = cos t · x_t − sin t · σ_d F(x_t, t) (Lu & Song 2024, eq. 8).

    ``F(x_t, t) = −net(x_t / σ_d, log(σ_d tan t) / 4)``: the input and time scalings are EDM's, so the
    network of an EDM teacher, copied in, makes f equal the teacher's denoiser D at step 0 (the
    students of sCD start from the teacher, as in CD). With these scalings σ_d F is the negative of
    EDM's network output and the TrigFlow velocity dx/dt of a denoiser is σ_d F.

    ``model(x, sigma)`` takes the CM paper's convention (x = x_0 + σ z, ε <= σ <= T) and converts.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, eps: float = 0.002, T: float = 80.0):
        super().__init__()
        self.net, self.sigma_data, self.eps, self.T = net, float(sigma_data), float(eps), float(T)
        self.weight = AdaptiveWeight()

    def c_noise(self, t):
        """EDM's log(σ)/4 with σ = σ_d tan t, held at σ = ε below (so f(x, 0) = x without a log(0))."""
        return edm_scalings((self.sigma_data * torch.tan(t)).clamp(min=self.eps), self.sigma_data)[3]

    def F(self, x_t, t):
        return -self.net(x_t / self.sigma_data, self.c_noise(t)).to(x_t.dtype)

    def trig(self, x_t, t):
        """f in TrigFlow's own convention; t in (0, π/2)."""
        t = as_time(t, x_t)
        return bcast(torch.cos(t), x_t) * x_t - bcast(torch.sin(t), x_t) * self.sigma_data * self.F(x_t, t)

    def forward(self, x, sigma):
        sigma = as_time(sigma, x)
        check_time_range(sigma, self.eps, self.T)
        return self.trig(*edm_to_trig(x, sigma, self.sigma_data))


def scm_target(model: TrigFlowModel, x_t, t, dxdt, warmup: float = 1.0):
    """(F⁻, g): the network under stop-grad and sCM's g (Lu & Song 2024, Alg. 1, before normalisation),

        g = −cos²t (σ_d F⁻ − dx_t/dt) − r cos t sin t (x_t + σ_d dF⁻/dt),

    which at r = 1 is cos t · df/dt, the tangent of f = cos t x_t − sin t σ_d F along dx_t/dt. dF⁻/dt is
    one JVP whose tangents are scaled by cos t sin t, so that cos t sin t dF⁻/dt stays bounded near
    t = 0 and π/2 (where d c_noise/dt blows up).
    """
    sd = model.sigma_data
    cos, sin = bcast(torch.cos(t), x_t), bcast(torch.sin(t), x_t)
    with torch.no_grad():
        cs = torch.cos(t) * torch.sin(t)
        F_minus, cs_dFdt = jvp(model.F, (x_t, t), (bcast(cs, x_t) * dxdt, cs))
        g = -cos**2 * (sd * F_minus - dxdt) - warmup * (cos * sin * x_t + sd * cs_dFdt)
    return F_minus, g


TANGENT_NORMS = ("l2", "rms")


def normalize_tangent(g, c: float, norm: str = "l2"):
    """sCM's tangent normalisation g <- g / (||g|| + c') (Lu & Song 2024, Sec. 4.2), in one of two forms:

    - 'l2': the full norm, with c' = c sqrt(D / 3072) so that c' is the paper's 0.1 at CIFAR-10's D = 3,072
      (||g|| grows like sqrt(D)); diffusers' Sana-Sprint uses the full norm with c' = 0.1;
    - 'rms': g / (rms(g) + c), the root mean square per value, as NVIDIA's FastGen and xandergos/sCM-mnist do
      (rms = ||g|| / sqrt(D), so at c = 0.1 the constant is sqrt(D) x larger relative to ||g|| than 'l2''s c').
    """
    if norm not in TANGENT_NORMS:
        raise ValueError(f"tangent norm must be one of {TANGENT_NORMS}; got {norm!r}")
    d = g[0].numel()
    size = g.flatten(1).norm(dim=1)
    if norm == "rms":
        return g / (bcast(size / math.sqrt(d), g) + c)
    return g / (bcast(size, g) + c * math.sqrt(d / 3072))


def scm_loss(model: TrigFlowModel, x0, generator=None, teacher=None, warmup: float = 1.0, p_mean=-1.0, p_std=2.0,
             norm_c: float = 0.1, adaptive: bool = True, tangent_norm: str = "l2", prior_weight: bool = False):
    """sCD (``teacher`` an EDM-convention denoiser) or sCT (no teacher): Lu & Song 2024, Alg. 1.

    t = arctan(e^τ/σ_d), τ ~ N(P_mean, P_std²); x_t = cos t x_0 + sin t z, z ~ N(0, σ_d² I); dx_t/dt from
    the teacher (``trig_velocity``) or the one-sample cos t z − sin t x_0. With (F⁻, g) = ``scm_target``
    and the warm-up factor r = ``warmup`` in [0, 1]: g ← g / (||g|| + c) (tangent normalisation, off with
    ``norm_c=None``; ``tangent_norm`` picks the full or RMS norm, see ``normalize_tangent``), optionally sCM's
    prior weight 1/σ (``prior_weight``), and the loss is e^{w(t)}/D ||F_θ − F⁻ − g||² − w(t) (adaptive weight; with
    ``adaptive=False`` the plain mean square).

    Two choices differ from the paper's CIFAR-10 settings, for small data. ||g|| grows like sqrt(D), so
    c = ``norm_c`` * sqrt(D / 3072): sCM's c = 0.1 at CIFAR-10's D = 3,072, 0.05 for MNIST, 0.0026 in 2-D
    (with 0.1 in 2-D, large t gets almost no signal; sCT's one step: 5.3x -> 2.7x the teacher). And
    P_std = 2.0 rather than 1.4: with EDM's c_noise = log(σ)/4 (kept so an EDM teacher's network fits),
    σ near T = 80 is far from the σ trained most, and one-step samples start there (2-D sCD one step:
    8.1x -> 2.9x the teacher, two steps 0.5x -> 2.1x).
    """
    sd = model.sigma_data
    b, mine = global_batch(x0), local_rows(x0)  # under DDP: draw for the global batch, keep this rank's rows
    sigma = lognormal_sigmas(b, p_mean, p_std, generator)[mine].clamp(model.eps, model.T).to(x0)
    t = trig_time(sigma, sd)
    z = sd * torch.randn((b, *x0.shape[1:]), generator=generator)[mine].to(x0)
    cos, sin = bcast(torch.cos(t), x0), bcast(torch.sin(t), x0)
    x_t = cos * x0 + sin * z
    with torch.no_grad():
        dxdt = cos * z - sin * x0 if teacher is None else trig_velocity(teacher, x_t, t, sd)
    F_minus, g = scm_target(model, x_t, t, dxdt, warmup)
    if norm_c:
        g = normalize_tangent(g, norm_c, tangent_norm)
    err = squared_l2(model.F(x_t, t), F_minus + g) / x0[0].numel()  # per-sample mean square
    if prior_weight:  # sCM's prior weighting 1 / (sigma_d tan t) = 1 / sigma, as FastGen and Sana-Sprint use
        err = err / (sd * torch.tan(t))
    if not adaptive:
        return err.mean()
    w = model.weight(model.c_noise(t))
    return (torch.exp(w) * err - w).mean()


# -- MeanFlow -------------------------------------------------------------------------------------

class MeanFlowModel(nn.Module):
    """MeanFlow's average velocity u(z, r, t) = 1/(t − r) ∫_r^t v(z_s, s) ds (Geng et al. 2025).

    MeanFlow's convention: z_t = (1 − t) x + t ε, ε ~ N(0, I), data at t = 0, noise at t = 1, velocity
    v = ε − x. The network gets c_noise = (t, t − r) (it is built with ``time_inputs=2``).
    ``model(x, sigma)`` takes the CM paper's convention and returns the one-jump prediction of the data:
    x = x_0 + σ ε is z_t / (1 − t) with t = σ/(1 + σ), so f = z_t − t · u(z_t, 0, t).
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, eps: float = 0.002, T: float = 80.0):
        super().__init__()
        if getattr(net, "time_inputs", 1) != 2:
            raise ValueError("MeanFlowModel needs a network with two time inputs (r, t): "
                             "make_mlp(..., time_inputs=2) or make_unet(..., time_inputs=2)")
        self.net, self.sigma_data, self.eps, self.T = net, float(sigma_data), float(eps), float(T)

    def u(self, z, r, t):
        return self.net(z, torch.stack([t, t - r], dim=1)).to(z.dtype)

    def forward(self, x, sigma):
        sigma = as_time(sigma, x)
        check_time_range(sigma, self.eps, self.T)
        t = sigma / (1 + sigma)
        z = x / bcast(1 + sigma, x)
        return z - bcast(t, x) * self.u(z, torch.zeros_like(t), t)


def logit_normal(n: int, p_mean: float, p_std: float, generator=None):
    return torch.sigmoid(p_mean + p_std * torch.randn(n, generator=generator))


def meanflow_loss(model: MeanFlowModel, x0, generator=None, ratio: float = 0.25, p_mean=-0.4, p_std=1.0,
                  power: float = 1.0, c: float = 1e-3):
    """MeanFlow (Geng et al. 2025, Alg. 1): ||u_θ(z_t, r, t) − sg(v − (t − r) du/dt)||², adaptively weighted.

    (t, r): two logit-normal draws, sorted so t >= r; a fraction 1 − ``ratio`` of the batch has r = t
    (plain flow matching). du/dt = v ∂_z u + ∂_t u is one JVP with tangents (v, 0, 1). The per-sample
    loss is weighted by 1/sg(loss + c)^p (``power=0``: unweighted).
    """
    n, mine = global_batch(x0), local_rows(x0)  # under DDP: draw for the global batch, keep this rank's rows
    a, b = logit_normal(n, p_mean, p_std, generator), logit_normal(n, p_mean, p_std, generator)
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    r = torch.where(torch.rand(n, generator=generator) < ratio, r, t)[mine].to(x0)
    t = t[mine].to(x0)
    noise = torch.randn((n, *x0.shape[1:]), generator=generator)[mine].to(x0)
    z = bcast(1 - t, x0) * x0 + bcast(t, x0) * noise
    v = noise - x0
    u, dudt = jvp(model.u, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    target = (v - bcast(t - r, x0) * dudt).detach()
    err = squared_l2(u, target)
    if not power:
        return err.mean()
    return (err / (err.detach() + c) ** power).mean()


@torch.no_grad()
def meanflow_sample(model: MeanFlowModel, noise: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """k-step MeanFlow sampling from ε at t = 1: z_r = z_t − (t − r) u(z_t, r, t) on an even grid to t = 0."""
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=noise.dtype, device=noise.device)
    z = noise
    for t, r in zip(ts[:-1], ts[1:]):
        tt, rr = t.expand(z.shape[0]), r.expand(z.shape[0])
        z = z - (t - r) * model.u(z, rr, tt)
    return z


__all__ = ["jvp", "consistency_tangent", "continuous_cm_objective", "continuous_cm_loss", "trig_time", "edm_to_trig", "trig_to_edm",
           "trig_velocity", "trig_two_step_taus", "AdaptiveWeight", "TrigFlowModel", "scm_target", "scm_loss", "MeanFlowModel",
           "logit_normal", "meanflow_loss", "meanflow_sample"]
