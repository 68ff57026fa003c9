"""Networks F(c_in x, c_noise) that the preconditioning wrappers turn into D or f.

Every network here takes (x, c_noise) with c_noise of shape (batch,) and returns a tensor
shaped like x. Built with ``time_inputs=k > 1`` (MeanFlow's two times r and t), c_noise has
shape (batch, k) and each column gets its own sinusoidal features.
"""
import math

import torch
from torch import nn


DEFAULT_MAX_FREQ = 16.0


class FourierEmbedding(nn.Module):
    """Sinusoidal features of the scalar time input (EDM's positional embedding)."""

    def __init__(self, dim: int = 64, max_freq: float = DEFAULT_MAX_FREQ):
        super().__init__()
        # Geometric frequencies 1 ... max_freq over c_noise = log(t)/4 (range about [-1.6, 1.1]):
        # high enough to tell noise levels apart, low enough to interpolate between the
        # discrete times a consistency model is trained on.
        half = dim // 2
        self.register_buffer("freqs", torch.exp(math.log(max_freq) * torch.arange(half) / max(half - 1, 1)))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        """(batch,) -> (batch, dim); (batch, k) -> (batch, k * dim)."""
        angles = c_noise.to(self.freqs.dtype)[..., None] * self.freqs
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).flatten(1)


def _check_c_noise(c_noise, batch: int, time_inputs: int):
    want = (batch,) if time_inputs == 1 else (batch, time_inputs)
    if tuple(c_noise.shape) != want:
        raise ValueError(f"c_noise must have shape {want} for a network with time_inputs={time_inputs}; "
                         f"got {tuple(c_noise.shape)}")


def _time_config(time_inputs: int, max_freq: float) -> dict:
    """Only non-default time options are stored, so older checkpoints' configs still match."""
    if time_inputs < 1 or max_freq <= 0:
        raise ValueError(f"need time_inputs >= 1 and max_freq > 0; got {time_inputs}, {max_freq}")
    cfg = {} if time_inputs == 1 else dict(time_inputs=time_inputs)
    return cfg if max_freq == DEFAULT_MAX_FREQ else dict(cfg, max_freq=float(max_freq))


class MLP(nn.Module):
    """Small residual MLP for d-dimensional points (2-D toy data)."""

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, emb_dim: int = 64, time_inputs: int = 1,
                 max_freq: float = DEFAULT_MAX_FREQ):
        super().__init__()
        self.dim, self.time_inputs = dim, time_inputs
        self.config = dict(dim=dim, hidden=hidden, depth=depth, emb_dim=emb_dim, **_time_config(time_inputs, max_freq))
        self.embed = FourierEmbedding(emb_dim, max_freq)
        self.inp = nn.Linear(dim + time_inputs * emb_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x of shape (batch, {self.dim}); got {tuple(x.shape)}")
        _check_c_noise(c_noise, x.shape[0], self.time_inputs)
        h = self.inp(torch.cat([x, self.embed(c_noise)], dim=1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


MLP_PRESETS = {
    "tiny": dict(hidden=64, depth=2),
    "small": dict(hidden=128, depth=3),
    "base": dict(hidden=256, depth=4),
}


def make_mlp(preset: str = "small", dim: int = 2, time_inputs: int = 1, max_freq: float = DEFAULT_MAX_FREQ) -> MLP:
    """An MLP from a named preset: 'tiny', 'small' or 'base' (``time_inputs=2`` for MeanFlow's u(z, r, t);
    a lower ``max_freq`` of the time embedding for the continuous-time methods, see ``methods.net_options``)."""
    if preset not in MLP_PRESETS:
        raise ValueError(f"unknown MLP preset {preset!r}; allowed values: {', '.join(MLP_PRESETS)}")
    return MLP(dim=dim, time_inputs=time_inputs, max_freq=max_freq, **MLP_PRESETS[preset])


# ---------------------------------------------------------------------------------------------
# U-Net for 28x28 / 32x32 images (DDPM / ADM style, scaled down)
# ---------------------------------------------------------------------------------------------


def _groups(ch: int) -> int:
    """GroupNorm groups: about 4 channels per group, at most 32, always a divisor of ch."""
    g = min(32, max(1, ch // 4))
    while ch % g:
        g -= 1
    return g


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a residual branch, so every block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, time embedding as per-channel scale and shift, dropout, conv; plus a skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = nn.functional.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(self.dropout(h))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions (used only at small resolutions: cost ~ (HW)^2)."""

    def __init__(self, ch: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        while ch % self.heads:  # heads must split the channels evenly
            self.heads -= 1
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        # (b, heads, positions, head_dim) for scaled_dot_product_attention
        out = nn.functional.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


class UNet(nn.Module):
    """A small U-Net F(x, c_noise) for images, e.g. MNIST at 28x28 or 32x32.

    Layout (DDPM / ADM, scaled down): a 3x3 input conv; ``len(mults)`` levels, level i with
    ``base * mults[i]`` channels and ``num_res`` residual blocks, halving the resolution
    between levels; a middle block (res, attention, res); the mirrored decoder with skip
    connections; GroupNorm, SiLU and a zero-initialised 3x3 output conv (so F = 0 at init).
    The noise level enters through a sinusoidal embedding of ``c_noise`` and an MLP, added
    to every residual block as a per-channel scale and shift.

    The image side ``img_size`` must be divisible by ``2**(len(mults) - 1)``; no padding
    is done. 28x28 works with three levels (28, 14, 7); 32x32 with up to four (32 … 4).
    Self-attention is used at the levels whose resolution is listed in ``attn_res``; a
    resolution is also matched by its next power of two, so the default ``attn_res=(8,)``
    means the 8x8 level of a 32x32 input and the 7x7 level of a 28x28 input. Keep attention
    at <= 8x8 on CPU (its cost grows with (H W)^2).
    """

    def __init__(self, in_ch: int = 1, base: int = 32, mults=(1, 2, 2), num_res: int = 1, attn_res=(8,),
                 dropout: float = 0.1, img_size: int = 32, time_inputs: int = 1, max_freq: float = DEFAULT_MAX_FREQ):
        super().__init__()
        mults, attn_res = tuple(int(m) for m in mults), tuple(int(r) for r in attn_res)
        self.config = dict(in_ch=in_ch, base=base, mults=mults, num_res=num_res, attn_res=attn_res,
                           dropout=dropout, img_size=img_size, **_time_config(time_inputs, max_freq))
        self.time_inputs = time_inputs
        if not mults or num_res < 1 or base < 1 or in_ch < 1:
            raise ValueError(f"need in_ch, base, num_res >= 1 and at least one level; got {self.config}")
        down = 2 ** (len(mults) - 1)
        if img_size % down:
            raise ValueError(
                f"img_size={img_size} is not divisible by 2**(len(mults)-1) = {down}: {len(mults)} levels halve the "
                f"resolution {len(mults) - 1} times. Use fewer levels (28x28 works with 3) or pad the images to 32x32"
            )
        self.in_ch, self.img_size = in_ch, img_size
        res = [img_size // 2**i for i in range(len(mults))]
        unknown = [r for r in attn_res if r not in res and r not in map(_next_pow2, res)]
        if unknown:
            raise ValueError(f"attn_res {unknown} match no level; the levels of this U-Net have resolutions {res}")
        use_attn = [r in attn_res or _next_pow2(r) in attn_res for r in res]

        emb_dim = 4 * base
        self.embed = FourierEmbedding(base, max_freq)
        self.emb_mlp = nn.Sequential(nn.Linear(time_inputs * base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Conv2d(in_ch, base, 3, padding=1)

        # Encoder: remember the channel count of every output that is passed to the decoder.
        self.down = nn.ModuleList()
        skips, ch = [base], base
        for i, m in enumerate(mults):
            for _ in range(num_res):
                self.down.append(self._level_block(ch, base * m, emb_dim, dropout, use_attn[i]))
                ch = base * m
                skips.append(ch)
            if i < len(mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)

        self.mid1 = ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = SelfAttention(ch)
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout)

        # Decoder: num_res + 1 blocks per level, each eating one skip connection.
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            for _ in range(num_res + 1):
                self.up.append(self._level_block(ch + skips.pop(), base * m, emb_dim, dropout, use_attn[i]))
                ch = base * m
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))

        self.out = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), _zero(nn.Conv2d(ch, in_ch, 3, padding=1)))

    @staticmethod
    def _level_block(in_ch, out_ch, emb_dim, dropout, attn):
        blocks = nn.ModuleList([ResBlock(in_ch, out_ch, emb_dim, dropout)])
        if attn:
            blocks.append(SelfAttention(out_ch))
        return blocks

    def _check(self, x, c_noise):
        want = (self.in_ch, self.img_size, self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"UNet expects x of shape (batch, {want[0]}, {want[1]}, {want[2]}); got {tuple(x.shape)}. "
                f"It was built for in_ch={self.in_ch}, img_size={self.img_size}"
            )
        _check_c_noise(c_noise, x.shape[0], self.time_inputs)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        self._check(x, c_noise)
        emb = self.emb_mlp(self.embed(c_noise).to(x.dtype))
        h = self.inp(x)
        hs = [h]
        for layer in self.down:
            if isinstance(layer, nn.ModuleList):
                h = layer[0](h, emb)
                for attn in layer[1:]:
                    h = attn(h)
            else:  # downsampling conv
                h = layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = layer[0](torch.cat([h, hs.pop()], dim=1), emb)
                for attn in layer[1:]:
                    h = attn(h)
            else:  # upsampling
                h = layer(h)
        return self.out(h)


# tiny/small/base: each doubles the width of the previous one (about 4x the parameters); all three levels
# at one width ratio, attention at the lowest level and in the middle block.
# fast: chosen by measurement for CPU training at MNIST's native 28x28 (`python -m cmedu.bench unet`):
# a narrow 28x28 level (16 channels) with more channels lower down (32 at 14x14, 64 at 7x7),
# attention only in the 7x7 middle block and no dropout (short runs underfit rather than overfit).
# It trains about 3.5x faster per thread than `tiny` at 32x32.
UNET_PRESETS = {
    "fast": dict(base=16, mults=(1, 2, 4), num_res=1, dropout=0.0, attn_res=()),  # 0.7M parameters
    "tiny": dict(base=32, mults=(1, 2, 2), num_res=1, dropout=0.1),  # 1.2M parameters
    "small": dict(base=64, mults=(1, 2, 2), num_res=1, dropout=0.1),  # 4.7M
    "base": dict(base=128, mults=(1, 2, 2), num_res=1, dropout=0.1),  # 19.0M
}


def make_unet(preset: str = "small", in_ch: int = 1, img_size: int = 32, time_inputs: int = 1,
              max_freq: float = DEFAULT_MAX_FREQ) -> UNet:
    """A U-Net from a named preset: 'fast' (0.7M parameters, the CPU preset), 'tiny' (1.2M), 'small' (4.7M)
    or 'base' (19M).

    All presets have three levels (img_size, /2, /4), so they work for 28x28 and 32x32;
    tiny/small/base put attention at the lowest level (7x7 or 8x8) and in the middle block,
    'fast' only in the middle block.
    """
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {preset!r}; allowed values: {', '.join(UNET_PRESETS)}")
    cfg = dict(UNET_PRESETS[preset])
    cfg.setdefault("attn_res", (img_size // 2 ** (len(cfg["mults"]) - 1),))
    return UNet(in_ch=in_ch, img_size=img_size, time_inputs=time_inputs, max_freq=max_freq, **cfg)
