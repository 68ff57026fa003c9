"""Input checks shared by the library: each raises a ValueError that names the fix."""
import torch


def check_choice(name: str, value, allowed):
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed values: {', '.join(map(str, allowed))}")
    return value


def as_time(t, x: torch.Tensor) -> torch.Tensor:
    """Return t as a float tensor of shape (batch,) matching x (a scalar is broadcast)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"t must be a scalar or have shape ({x.shape[0]},) to match x of shape {tuple(x.shape)}; "
            f"got shape {tuple(t.shape)}"
        )
    return t


def check_time_range(t: torch.Tensor, eps: float, T: float, tol: float = 1e-4):
    lo, hi = float(t.min()), float(t.max())
    if lo < eps * (1 - tol) or hi > T * (1 + tol):
        raise ValueError(f"t must lie in [eps, T] = [{eps}, {T}]; got values in [{lo:.6g}, {hi:.6g}]")


def bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a (batch,) tensor so it broadcasts against x of shape (batch, ...)."""
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def check_features(x: torch.Tensor, dim: int, what: str = "x"):
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} must have shape (batch, {dim}); got {tuple(x.shape)}")


def check_taus(taus, eps: float = 0.002, T: float = 80.0):
    """taus as a list of floats, strictly decreasing and inside (eps, T), else a ValueError naming the fix."""
    taus = [float(t) for t in taus]
    if any(not eps < t < T for t in taus) or any(a <= b for a, b in zip(taus, taus[1:])):
        raise ValueError(f"taus must be strictly decreasing and inside (eps, T) = ({eps}, {T}), "
                         f"e.g. ({T / 16:.3g}, {T / 80:.3g}, {T / 400:.3g}); got {taus}")
    return taus
