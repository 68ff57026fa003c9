"""Flow maps: one two-time model X(x, t, s) behind consistency models, MeanFlow and shortcut models.

The flow map X(x, t, s) carries a point of the PF-ODE dx/dt = v(x, t) = (x − D(x, t))/t from time t to any
s <= t (σ-time of the CM paper: x_t = x_0 + t z). Its slices and derivatives are the objects of the other
methods (Boffi, Albergo & Vanden-Eijnden 2025, "How to build a consistency model: learning flow maps via
self-distillation"; their X_{s,t} runs forward in their time, ours from noise t down to s):

- a consistency function is the slice f(x, t) = X(x, t, ε);
- MeanFlow's average velocity (Geng et al. 2025) is u(x, t, s) = (x − X(x, t, s))/(t − s);
- on the diagonal, ∂_s X(x, t, s)|_{s=t} = u(x, t, t) = v(x, t), the ODE's velocity (the "tangent condition").

**Parameterisation.** X_θ = x − (t − s) u_θ(x, t, s) (Boffi et al., Sec. 2), so X_θ(x, t, t) = x holds for any
network, the way c_skip/c_out make f(x, ε) = x. The velocity u_θ uses EDM's preconditioning written for a
velocity: with D = c_skip x + c_out F (Karras et al. 2022, Table 1), (x − D)/t = t x/(t² + σ_d²) − σ_d F/√(t² + σ_d²),
and u_θ is that expression with F = net(c_in x, (log t / 4, log(t/s) / 4)). Put together,

    X_θ(x, t, s) = (σ_d² + t s)/(t² + σ_d²) · x + σ_d (t − s)/√(t² + σ_d²) · F,

whose s = ε slice is, to O(ε), the CM paper's c_skip/c_out (``parameterization.consistency_scalings``).

**Losses** (each: flow matching on a fraction of the batch where s = t, plus a condition off the diagonal;
v is the conditional velocity z of x_t = x_0 + t z, or a teacher's drift when one is given):

- ``eulerian_loss``: ∂_t X + v·∇_x X = 0, i.e. MeanFlow's identity u = v − (t − s) du/dt (one JVP in (x, t));
- ``lagrangian_loss``: ∂_s X(x, t, s) = v(X(x, t, s), s), v from the model's own diagonal (self-distillation,
  LSD) or the teacher (one JVP in s);
- ``shortcut_loss``: X(x, t, s) = X(X(x, t, m), m, s) (Frans et al. 2024, shortcut models; Boffi et al.'s
  progressive self-distillation), no JVP;
- ``consistency_loss``: CD (CM paper, Alg. 2) on the slice s = ε, for reference.

In MeanFlow's own time (data at 0, noise at 1, z_τ = (1 − τ) x_0 + τ ε) the same map reads τ = σ/(1 + σ),
z = x/(1 + σ); ``continuous.MeanFlowModel`` converts that way.
"""
import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ._checks import as_time, bcast, check_choice, check_time_range
from .continuous import jvp
from .losses import cd_loss, squared_l2
from .methods import CONTINUOUS_MAX_FREQ
from .nets import make_mlp
from .ode import drift
from .schedules import karras_sigmas, lognormal_sigmas

LOSSES = ("eulerian", "lagrangian", "shortcut", "cd")


def make_flowmap_net(preset: str = "small") -> nn.Module:
    """An MLP with two time inputs and the continuous-time methods' low-frequency time embedding."""
    return make_mlp(preset, time_inputs=2, max_freq=CONTINUOUS_MAX_FREQ)


class FlowMapModel(nn.Module):
    """X_θ(x, t, s) = x − (t − s) u_θ(x, t, s) for ε <= s <= t <= T; ``model(x, t, s)``; X_θ(x, t, t) = x exactly."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, eps: float = 0.002, T: float = 80.0):
        super().__init__()
        if getattr(net, "time_inputs", 1) != 2:
            raise ValueError("FlowMapModel needs a network with two time inputs (t, s): make_flowmap_net() or "
                             "make_mlp(..., time_inputs=2)")
        self.net, self.sigma_data, self.eps, self.T = net, float(sigma_data), float(eps), float(T)

    def u(self, x, t, s):
        """The average velocity u_θ(x, t, s) (no input checks: the losses differentiate it in t and s)."""
        sd2 = self.sigma_data**2
        c_in = bcast(torch.rsqrt(t**2 + sd2), x)
        c_noise = torch.stack([torch.log(t) / 4, torch.log(t / s) / 4], dim=1)
        F = self.net(c_in * x, c_noise).to(x.dtype)
        return bcast(t, x) * c_in**2 * x - self.sigma_data * c_in * F

    def flow(self, x, t, s):
        """X_θ(x, t, s) without input checks (for JVPs and inner loops)."""
        return x - bcast(t - s, x) * self.u(x, t, s)

    def times(self, x, t, s):
        """t and s as (batch,) tensors, checked: ε <= s <= t <= T."""
        t, s = as_time(t, x), as_time(s, x)
        check_time_range(t, self.eps, self.T)
        check_time_range(s, self.eps, self.T)
        late = s > t * (1 + 1e-5)  # within rounding (float32 ε against ε), s = t
        if late.any():
            i = int(late.nonzero()[0])
            raise ValueError(f"a flow map runs from t down to s <= t; got t = {float(t[i]):.6g} < s = {float(s[i]):.6g} "
                             f"at index {i} (swap them: X(x, t, s) with t the noisier time)")
        return t, torch.minimum(s, t)

    def forward(self, x, t, s):
        return self.flow(x, *self.times(x, t, s))

    def velocity(self, x, t):
        """The model's instantaneous velocity v_θ(x, t) = u_θ(x, t, t), its diagonal."""
        t = as_time(t, x)
        return self.u(x, t, t)


class ExactFlowMap(FlowMapModel):
    """The exact map X* of a ``toy.GaussianMixture`` behind the model's interface (u, flow, velocity, forward),
    so the losses and samplers can be run on the truth: every loss above is zero for it given the exact teacher."""

    def __init__(self, mixture, sigma_data: float = 0.5, eps: float = 0.002, T: float = 80.0, steps: int = 256):
        nn.Module.__init__(self)
        self.mixture, self.steps = mixture, steps
        self.sigma_data, self.eps, self.T = float(sigma_data), float(eps), float(T)

    def u(self, x, t, s):
        return self.mixture.average_velocity(x, t, s, self.steps)


class ConsistencySlice(nn.Module):
    """The consistency function f(x, t) = X(x, t, ε) of a flow map (for ``cd_loss`` and Alg. 1 sampling)."""

    def __init__(self, flow_map: FlowMapModel):
        super().__init__()
        self.flow_map, self.eps, self.T, self.sigma_data = flow_map, flow_map.eps, flow_map.T, flow_map.sigma_data

    def forward(self, x, t):
        return self.flow_map(x, t, self.eps)


def sample_times(n: int, generator=None, eps: float = 0.002, T: float = 80.0, p_mean: float = None,
                 p_std: float = None, diag: float = 0.25):
    """(t, s, n_diag): two noise levels in [ε, T], t the larger; the first n_diag = round(diag · n) rows have s = t.

    Log-uniform on [ε, T] by default: every factor of e in t and s gets the same share, as in the error
    maps over (log t, log s) and as k-step sampling needs (every jump starts at T = 80, rare under the
    CM's lognormal). With ``p_mean`` and ``p_std``: lognormal, clamped to [ε, T] (EDM / ECT).
    """
    def draw():
        if p_mean is None:
            u = torch.rand(n, generator=generator)
            return torch.exp(math.log(eps) + u * math.log(T / eps)).clamp(eps, T)
        return lognormal_sigmas(n, p_mean, p_std, generator).clamp(eps, T)

    a, b = draw(), draw()
    t, s = torch.maximum(a, b), torch.minimum(a, b)
    n_diag = int(round(diag * n))
    s[:n_diag] = t[:n_diag]
    return t, s, n_diag


def _draw(model, x0, generator, teacher, time_kw):
    """The shared start of every loss: x_t, (t, s), v, and the summed flow-matching term of the diagonal rows."""
    t, s, n_diag = sample_times(x0.shape[0], generator, model.eps, model.T, **time_kw)
    t, s = t.to(x0), s.to(x0)
    z = torch.randn(x0.shape, generator=generator).to(x0)
    x_t = x0 + bcast(t, x0) * z
    with torch.no_grad():
        v = z if teacher is None else drift(teacher, x_t, t)  # d x_t/dt: conditional (= z) or the teacher's
    d = slice(0, n_diag)
    fm = squared_l2(model.u(x_t[d], t[d], t[d]), v[d]).sum()  # flow matching: u_θ(x, t, t) = v
    o = slice(n_diag, None)
    return x_t[o], t[o], s[o], v[o], fm


def eulerian_loss(model: FlowMapModel, x0, generator=None, teacher=None, **time_kw):
    """MeanFlow (Geng et al. 2025, eq. 6 / Alg. 1) in σ-time: ||u_θ(x_t, t, s) − sg(v − (t − s) du/dt)||².

    (t − s) u = ∫_s^t v along the trajectory; its derivative in t gives u = v − (t − s) du/dt, with
    du/dt = v·∇_x u + ∂_t u one JVP with tangents (v, 1, 0). It is the Eulerian condition ∂_t X + v·∇_x X = 0
    (Boffi et al., ESD). No adaptive weight (MeanFlow's p = 0).
    """
    x, t, s, v, fm = _draw(model, x0, generator, teacher, time_kw)
    u, dudt = jvp(model.u, (x, t, s), (v, torch.ones_like(t), torch.zeros_like(s)))
    target = (v - bcast(t - s, x) * dudt).detach()
    return (fm + squared_l2(u, target).sum()) / x0.shape[0]


def lagrangian_loss(model: FlowMapModel, x0, generator=None, teacher=None, weighted: bool = True, **time_kw):
    """Lagrangian self-distillation (Boffi et al. 2025, LSD): w(s) ||∂_s X_θ(x_t, t, s) − sg v(X_θ(x_t, t, s), s)||².

    The endpoint X(x, t, s) is the ODE's solution at time s, so as s moves it moves with the flow:
    ∂_s X = v(X, s). v is the model's own diagonal v_θ = u_θ(·, s, s) (self-distillation) or the teacher's
    drift (x − D(x, s))/s (Lagrangian map distillation). ∂_s X is one JVP in s with tangent 1.

    w(s) = s²/(s² + σ_d²) (``weighted``; 1 otherwise): v = (X − D)/s amplifies an error of X by 1/s, and
    unweighted the residuals near s = ε swamp the rest (2-D, 1,500 steps: the one-step error halves but
    sampling gets worse with more steps). w makes it the residual of the log-time ODE ∂_{log s} X = X − D
    in units of √(s² + σ_d²), the scale of x at time s.
    """
    x, t, s, _, fm = _draw(model, x0, generator, teacher, time_kw)
    X, dXds = jvp(lambda s_: model.flow(x, t, s_), (s,), (torch.ones_like(s),))
    with torch.no_grad():
        v_end = model.velocity(X, s) if teacher is None else drift(teacher, X, s)
    w = s**2 / (s**2 + model.sigma_data**2) if weighted else torch.ones_like(s)
    return (fm + (w * squared_l2(dXds, v_end)).sum()) / x0.shape[0]


def shortcut_loss(model: FlowMapModel, x0, generator=None, teacher=None, **time_kw):
    """Shortcut / progressive self-distillation: ||X_θ(x, t, s) − sg X_θ(X_θ(x, t, m), m, s)||² / (t − s)².

    Two short jumps make one long one (Frans et al. 2024, eq. 4; Boffi et al. 2025, PSD); m is log-uniform
    between s and t. Dividing by (t − s)² makes it a velocity residual, on the scale of the other losses.
    The teacher, if given, enters only the flow matching on the diagonal.
    """
    x, t, s, _, fm = _draw(model, x0, generator, teacher, time_kw)
    gamma = torch.rand(t.shape, generator=generator).to(t)
    m = t ** (1 - gamma) * s**gamma
    with torch.no_grad():
        X_target = model.flow(model.flow(x, t, m), m, s)
    gap = bcast((t - s).clamp(min=1e-12), x)
    return (fm + squared_l2(model.flow(x, t, s) / gap, X_target / gap).sum()) / x0.shape[0]


def consistency_loss(model: FlowMapModel, target: FlowMapModel, teacher, x0, generator=None, num_points: int = 18):
    """Consistency distillation (CM paper, Alg. 2; ``losses.cd_loss``, Heun teacher step) on the slice s = ε."""
    sigmas = karras_sigmas(num_points, model.eps, model.T).to(x0)
    return cd_loss(ConsistencySlice(model), ConsistencySlice(target), teacher, x0, sigmas, generator)


@torch.no_grad()
def flow_map_sample(model: FlowMapModel, x_T: torch.Tensor, steps: int = 1, rho: float = 7.0):
    """k-step sampling: x ← X_θ(x, t_i, t_{i+1}) on a Karras grid T = t_0 > … > t_k = ε. No re-noising."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    ts = karras_sigmas(steps + 1, model.eps, model.T, rho).flip(0).tolist()
    x = x_T
    for t, s in zip(ts[:-1], ts[1:]):
        x = model(x, t, s)
    return x


@torch.no_grad()
def flow_map_error(model, mixture, ts, n: int = 256, generator=None, steps: int = 128):
    """Mean ||X_θ(x_t, t, s) − X*(x_t, t, s)|| over x_t ~ p_t for every pair t = ts[i] > s = ts[j] (j < i).

    ``ts`` ascending; returns (mean, standard error), each a (len(ts), len(ts)) tensor, NaN where s >= t.
    X* is the mixture's ``two_time_flow_map`` (``steps`` RK4 steps: ~1e-7 at 128). All pairs go in one batch.
    """
    ts = torch.as_tensor(ts, dtype=torch.float64)
    ii, jj = torch.tril_indices(len(ts), len(ts), offset=-1)
    t, s = ts[ii].repeat_interleave(n), ts[jj].repeat_interleave(n)
    x = mixture.sample(len(t), generator=generator).double()
    x = x + t[:, None] * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    exact = mixture.two_time_flow_map(x, t, s, steps)
    err = (model(x.float(), t.float(), s.float()).double() - exact).norm(dim=1).view(-1, n)
    mean = torch.full((len(ts), len(ts)), float("nan"), dtype=torch.float64)
    se = mean.clone()
    mean[ii, jj], se[ii, jj] = err.mean(1), err.std(1) / n**0.5
    return mean, se


@dataclass
class FlowMapRecord:
    step: int
    loss: float
    model: FlowMapModel  # the online model
    ema: FlowMapModel  # the sampling EMA


def train_flow_map(model: FlowMapModel, loss: str, data, steps: int, teacher=None, batch_size: int = 512,
                   lr: float = 1e-3, warmup: int = 100, ema_decay: float = 0.995, target_decay: float = 0.95,
                   grad_clip: float = 1.0, seed: int = 0, **loss_kw):
    """Train ``model`` with ``loss`` (one of ``LOSSES``) on ``data.sample``; a generator yielding a record per step.

    Adam with linear warm-up and cosine decay, gradient clipping and a sampling EMA, as ``training.Trainer``
    does for the 2-D recipes. 'cd' needs ``teacher`` and keeps its target network θ⁻ (EMA ``target_decay``);
    the other losses use the teacher's velocity when one is given and self-distil otherwise. ``loss_kw`` go to
    the loss (``diag``, ``p_mean``/``p_std``, the Lagrangian's ``weighted``).
    """
    from .training import ema_update  # here: training imports checkpoints, which imports this module

    check_choice("loss", loss, LOSSES)
    if loss == "cd" and teacher is None:
        raise ValueError("loss='cd' distils a teacher: pass teacher= (a denoiser D(x, t))")
    fn = {"eulerian": eulerian_loss, "lagrangian": lagrangian_loss, "shortcut": shortcut_loss}.get(loss)
    gen = torch.Generator().manual_seed(seed)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    target = copy.deepcopy(model).requires_grad_(False) if loss == "cd" else None
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for k in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (k + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * k / steps))
        x0 = data.sample(batch_size, generator=gen)
        if loss == "cd":
            value = consistency_loss(model, target, teacher, x0, gen)
        else:
            value = fn(model, x0, gen, teacher, **loss_kw)
        if not torch.isfinite(value):
            raise FloatingPointError(f"loss is {value.item()} at step {k} ({loss}); lower lr")
        opt.zero_grad(set_to_none=True)
        value.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if target is not None:
            ema_update(target, model, target_decay)
        ema_update(ema, model, ema_decay)
        yield FlowMapRecord(k + 1, value.item(), model, ema)


__all__ = ["LOSSES", "make_flowmap_net", "FlowMapModel", "ExactFlowMap", "ConsistencySlice", "sample_times", "eulerian_loss",
           "lagrangian_loss", "shortcut_loss", "consistency_loss", "flow_map_sample", "flow_map_error", "FlowMapRecord", "train_flow_map"]
