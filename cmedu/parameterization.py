"""Preconditioning of networks into denoisers and consistency functions.

EDM (Karras et al. 2022, Table 1):   D(x, t) = c_skip(t) x + c_out(t) F(c_in(t) x, c_noise(t)).
CM  (Song et al. 2023, App. C):      f(x, t) = c_skip(t) x + c_out(t) F(c_in(t) x, c_noise(t))
with c_skip(eps) = 1, c_out(eps) = 0, so f(x, eps) = x holds for *any* network F.
"""
import torch
from torch import nn

from ._checks import as_time, bcast, check_time_range


def edm_scalings(t, sigma_data: float = 0.5):
    """EDM: c_skip = sd^2/(t^2+sd^2), c_out = t sd/sqrt(t^2+sd^2), c_in = 1/sqrt(t^2+sd^2), c_noise = log(t)/4."""
    t = torch.as_tensor(t)
    c_skip = sigma_data**2 / (t**2 + sigma_data**2)
    c_out = t * sigma_data / torch.sqrt(t**2 + sigma_data**2)
    c_in = 1 / torch.sqrt(t**2 + sigma_data**2)
    c_noise = torch.log(t) / 4
    return c_skip, c_out, c_in, c_noise


def consistency_scalings(t, sigma_data: float = 0.5, eps: float = 0.002):
    """CM: c_skip = sd^2/((t-eps)^2+sd^2), c_out = sd (t-eps)/sqrt(sd^2+t^2); c_skip(eps)=1, c_out(eps)=0."""
    t = torch.as_tensor(t)
    c_skip = sigma_data**2 / ((t - eps) ** 2 + sigma_data**2)
    c_out = sigma_data * (t - eps) / torch.sqrt(sigma_data**2 + t**2)
    return c_skip, c_out


class _Preconditioned(nn.Module):
    """Shared plumbing: checks t, broadcasts the scalings, calls ``net(c_in x, c_noise)``."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, eps: float = 0.002, T: float = 80.0):
        super().__init__()
        self.net, self.sigma_data, self.eps, self.T = net, float(sigma_data), float(eps), float(T)

    def _scalings(self, t):
        raise NotImplementedError

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = as_time(t, x)
        check_time_range(t, self.eps, self.T)
        c_skip, c_out = self._scalings(t)
        _, _, c_in, c_noise = edm_scalings(t, self.sigma_data)  # both wrappers share EDM's input scalings
        out = self.net(bcast(c_in, x) * x, c_noise)
        return bcast(c_skip, x) * x + bcast(c_out, x) * out.to(x.dtype)


class EDMDenoiser(_Preconditioned):
    """D_theta(x, t) ≈ E[x_0 | x_t = x], the teacher of consistency distillation."""

    def _scalings(self, t):
        c_skip, c_out, _, _ = edm_scalings(t, self.sigma_data)
        return c_skip, c_out


class ConsistencyModel(_Preconditioned):
    """f_theta(x, t) with the boundary condition f(x, eps) = x built in (CM paper, eq. 5 / App. C)."""

    def _scalings(self, t):
        return consistency_scalings(t, self.sigma_data, self.eps)



__all__ = ["edm_scalings", "consistency_scalings", "EDMDenoiser", "ConsistencyModel"]
