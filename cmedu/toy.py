"""2-D datasets. The Gaussian mixture is exact: its noised density, score and denoiser
E[x_0 | x_t] have closed forms, so it is a perfect teacher and its flow map is known to
solver precision.

For a mixture sum_k w_k N(m_k, s_k^2 I), the noised marginal p_t is the mixture
sum_k w_k N(m_k, (s_k^2 + t^2) I), and by Tweedie / Bayes

    E[x_0 | x_t = x] = sum_k r_k(x, t) (m_k + s_k^2 / (s_k^2 + t^2) (x - m_k)),

with r_k the posterior probability of component k.
"""
import math

import torch

from ._checks import as_time, bcast, check_choice
from .ode import drift, heun_solve
from .schedules import karras_sigmas


class GaussianMixture:
    """Isotropic Gaussian mixture with exact noised density, score, denoiser and flow map."""

    def __init__(self, means, stds, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"means must have shape (components, dim); got {tuple(self.means.shape)}")
        k = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or (w < 0).any() or (self.stds <= 0).any():
            raise ValueError(f"need {k} non-negative weights and {k} positive stds")
        self.weights = w / w.sum()
        self.dim = self.means.shape[1]

    def sample(self, n: int, generator=None, return_labels: bool = False):
        """n samples of x_0 (float32); with ``return_labels`` also the component of each."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = (self.means[comp] + self.stds[comp, None] * z).float()
        return (x, comp) if return_labels else x

    def _check(self, x):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}); got {tuple(x.shape)}")

    def _posterior(self, x, t):
        """Component log-densities log w_k N(x; m_k, v_k I) and variances v_k = s_k^2 + t^2."""
        self._check(x)
        t = as_time(t, x).to(torch.float64)
        xd = x.to(torch.float64)
        var = self.stds[None, :] ** 2 + t[:, None] ** 2  # (B, K)
        sq = ((xd[:, None, :] - self.means[None]) ** 2).sum(-1)  # (B, K)
        logp = torch.log(self.weights)[None] - sq / (2 * var) - self.dim / 2 * torch.log(2 * math.pi * var)
        return logp, var

    def log_prob(self, x: torch.Tensor, t=0.0) -> torch.Tensor:
        """log p_t(x) of the noised mixture (t = 0: the data density)."""
        logp, _ = self._posterior(x, t)
        return torch.logsumexp(logp, dim=1).to(x.dtype)

    def denoiser(self, x: torch.Tensor, t) -> torch.Tensor:
        """Exact E[x_0 | x_t = x] (the ideal denoiser D(x, t))."""
        logp, var = self._posterior(x, t)
        r = torch.softmax(logp, dim=1)  # (B, K)
        xd = x.to(torch.float64)
        shrink = self.stds[None, :] ** 2 / var  # (B, K)
        means_k = self.means[None] + shrink[..., None] * (xd[:, None, :] - self.means[None])
        return (r[..., None] * means_k).sum(1).to(x.dtype)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """∇ log p_t(x) = (D(x, t) - x) / t^2 (Tweedie)."""
        t = as_time(t, x)
        return (self.denoiser(x, t) - x) / bcast(t, x) ** 2

    def flow_map(self, x: torch.Tensor, t: float, t_end: float = 0.002, steps: int = 256) -> torch.Tensor:
        """Φ(x; t -> t_end): the PF-ODE solution, by Heun in float64 on a Karras grid.

        The ideal consistency function is f*(x, t) = Φ(x; t -> eps). 256 Heun steps give
        mean errors below 1e-4 here (~5e-5 from t = 80); the few points that start near a
        boundary between modes, where Φ is steep, can be off by ~1e-3 (see tests/test_toy.py).
        """
        t = float(t)
        if t == t_end:
            return x.clone()
        lo, hi = min(t, t_end), max(t, t_end)
        ts = karras_sigmas(steps + 1, lo, hi).double()
        if t > t_end:
            ts = ts.flip(0)
        ts[0], ts[-1] = t, t_end
        return heun_solve(self.denoiser, x.to(torch.float64), ts).to(x.dtype)

    # -- the exact two-time flow map ------------------------------------------------------------
    # Time is the noise level σ of the CM paper (x_t = x_0 + t z, t = σ): X*(x, t, s) carries a point of the
    # PF-ODE dx/dt = (x − D(x, t))/t from time t to time s <= t. MeanFlow's linear path z_τ = (1 − τ) x_0 + τ ε
    # is the same ODE in other coordinates: τ = σ/(1 + σ), z = x/(1 + σ) (``continuous.MeanFlowModel``).

    def velocity(self, x: torch.Tensor, t) -> torch.Tensor:
        """The PF-ODE drift v*(x, t) = dx/dt = (x − D(x, t))/t: the flow map's velocity on the diagonal s = t."""
        return drift(self.denoiser, x, t)

    def two_time_flow_map(self, x: torch.Tensor, t, s, steps: int = 256) -> torch.Tensor:
        """X*(x, t, s): the PF-ODE solution at time s from x at time t, for t >= s > 0 (per-sample t and s).

        Solved in log-time λ = log σ, where the ODE reads dx/dλ = x − D(x, e^λ) (bounded at both ends),
        by classical RK4 with ``steps`` equal steps from log t to log s for every sample (float64). With
        the default 256 steps it agrees with scipy's DOP853 (rtol 1e-12) to ~1e-8 at worst on the ring
        mixtures, from t = 80 to s = ε (tests/test_flowmap.py); X*(x, t, t) = x exactly. Returns x's dtype.
        ``flow_map`` (Heun on a Karras grid, one scalar t) is the cheaper, less accurate route to ε.
        """
        self._check(x)
        t, s = as_time(t, x).to(torch.float64), as_time(s, x).to(torch.float64)
        if (s <= 0).any() or (s > t).any():
            bad = int(((s <= 0) | (s > t)).nonzero()[0])
            raise ValueError(f"the flow map runs from t down to s with t >= s > 0; got t = {float(t[bad]):.6g}, "
                             f"s = {float(s[bad]):.6g} at index {bad} (for s > t, swap the times: it is the inverse map)")
        h = ((torch.log(s) - torch.log(t)) / steps)[:, None]  # (B, 1), <= 0
        lam = torch.log(t)[:, None]

        def rhs(y, lam):
            return y - self.denoiser(y, torch.exp(lam[:, 0]))

        y = x.to(torch.float64)
        for i in range(steps):
            lam_i = lam + i * h
            k1 = rhs(y, lam_i)
            k2 = rhs(y + h / 2 * k1, lam_i + h / 2)
            k3 = rhs(y + h / 2 * k2, lam_i + h / 2)
            k4 = rhs(y + h * k3, lam_i + h)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return y.to(x.dtype)

    def average_velocity(self, x: torch.Tensor, t, s, steps: int = 256) -> torch.Tensor:
        """u*(x, t, s) = (x − X*(x, t, s))/(t − s), so that X* = x − (t − s) u*; where s = t, the velocity v*(x, t).

        MeanFlow's u(z, r, τ) is the same average in its own time: with τ = t/(1 + t), r = s/(1 + s) and
        z = x/(1 + t), u_MF = ((1 − τ) x − (1 − r) X*)/(τ − r).
        """
        t, s = as_time(t, x), as_time(s, x)
        X = self.two_time_flow_map(x, t, s, steps)
        gap = bcast(t - s, x)
        diag = gap == 0
        return torch.where(diag, self.velocity(x, t), (x - X) / torch.where(diag, torch.ones_like(gap), gap))

    @property
    def std(self) -> float:
        """Overall standard deviation per coordinate (what sigma_data should be)."""
        m = (self.weights[:, None] * self.means).sum(0)
        second = (self.weights[:, None] * (self.means**2 + self.stds[:, None] ** 2)).sum(0)
        return float((second - m**2).mean().sqrt())


class SampledDataset:
    """A 2-D dataset known only through samples (no exact denoiser)."""

    def __init__(self, name: str, sampler):
        self.name, self._sampler, self.dim = name, sampler, 2

    def sample(self, n: int, generator=None) -> torch.Tensor:
        return self._sampler(n, generator).float()


def ring_mixture(n_modes: int = 8, radius: float = 0.75, std: float = 0.1) -> GaussianMixture:
    """n_modes Gaussians on a circle, alternating weights 2:1 (so mode weights are visible in samples)."""
    angles = torch.arange(n_modes, dtype=torch.float64) * 2 * math.pi / n_modes
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    weights = torch.tensor([2.0 if i % 2 == 0 else 1.0 for i in range(n_modes)])
    return GaussianMixture(means, std, weights)


def _moons(n, g):
    u = torch.rand(n, generator=g) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(u), 1 - torch.cos(u))
    y = torch.where(upper, torch.sin(u), 0.5 - torch.sin(u))
    pts = torch.stack([x - 0.5, y - 0.25], 1) * 0.6
    return pts + 0.03 * torch.randn(n, 2, generator=g)


def _spiral(n, g):
    r = torch.sqrt(torch.rand(n, generator=g)) * 3 * math.pi
    pts = torch.stack([r * torch.cos(r), r * torch.sin(r)], 1) / (3 * math.pi) * 0.9
    return pts + 0.02 * torch.randn(n, 2, generator=g)


def _checkerboard(n, g):
    x = torch.rand(n, generator=g) * 4 - 2
    y = torch.rand(n, generator=g) * 2 - 2 + 2 * (torch.floor(x) % 2)
    y = y + torch.randint(0, 2, (n,), generator=g) * 2
    return torch.stack([x, y - 1], 1) * 0.4


DATASETS = ("gmm", "moons", "spiral", "checkerboard")


def make_dataset(name: str):
    """A 2-D dataset by name: 'gmm' (exact GaussianMixture), 'moons', 'spiral', 'checkerboard'."""
    check_choice("dataset", name, DATASETS)
    if name == "gmm":
        return ring_mixture()
    return SampledDataset(name, {"moons": _moons, "spiral": _spiral, "checkerboard": _checkerboard}[name])
