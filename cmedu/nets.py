"""Networks F(c_in x, c_noise) that the preconditioning wrappers turn into D or f.

Every network here takes (x, c_noise) with c_noise of shape (batch,) and returns a tensor
shaped like x.
"""
import math

import torch
from torch import nn


class FourierEmbedding(nn.Module):
    """Sinusoidal features of the scalar time input (EDM's positional embedding)."""

    def __init__(self, dim: int = 64, max_period: float = 100.0):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half) * 100)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.float()[:, None] * self.freqs[None]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class MLP(nn.Module):
    """Small residual MLP for d-dimensional points (2-D toy data)."""

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, emb_dim: int = 64):
        super().__init__()
        self.dim = dim
        self.config = dict(dim=dim, hidden=hidden, depth=depth, emb_dim=emb_dim)
        self.embed = FourierEmbedding(emb_dim)
        self.inp = nn.Linear(dim + emb_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x of shape (batch, {self.dim}); got {tuple(x.shape)}")
        h = self.inp(torch.cat([x, self.embed(c_noise)], dim=1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


MLP_PRESETS = {
    "tiny": dict(hidden=64, depth=2),
    "small": dict(hidden=128, depth=3),
    "base": dict(hidden=256, depth=4),
}


def make_mlp(preset: str = "small", dim: int = 2) -> MLP:
    """An MLP from a named preset: 'tiny', 'small' or 'base'."""
    if preset not in MLP_PRESETS:
        raise ValueError(f"unknown MLP preset {preset!r}; allowed values: {', '.join(MLP_PRESETS)}")
    return MLP(dim=dim, **MLP_PRESETS[preset])
