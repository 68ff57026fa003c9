"""Zero-shot editing with a consistency model (CM paper, Sec. 6.3 and App. D, Alg. 4).

A consistency model maps any noisy point straight to data, so the editing tricks of
diffusion models need no retraining: alternate one consistency step with a projection
that puts the known part of the reference back. Alg. 4 phrases every task with one
orthogonal (more generally invertible) linear map A and a binary mask Ω in A's space
(Ω = 1: generate, Ω = 0: keep from the reference y):

    y ← A⁻¹[(A y) ⊙ (1 − Ω)]                       (zero the unknown part)
    x ← f(y + T z, T),        x ← A⁻¹[(A y) ⊙ (1 − Ω) + (A x) ⊙ Ω]
    for τ in taus:  x ← f(x + √(τ² − ε²) z, τ),   x ← A⁻¹[(A y) ⊙ (1 − Ω) + (A x) ⊙ Ω]

| task              | A                                        | kept (1 − Ω)        |
|-------------------|------------------------------------------|---------------------|
| inpainting        | identity                                 | the known pixels    |
| colorization      | 3×3 orthogonal matrix on the channels    | luma axis (Rec. 601)|
| super-resolution  | per-patch orthogonal basis, first = mean | the patch means     |
| 2-D conditionals  | identity                                 | the fixed coordinate|

Stroke-guided generation (SDEdit), denoising and interpolation need no projection: they
only pick where on the PF-ODE trajectory to start.

Alg. 4 is annealed, not an exact conditional sampler: each level is about one Langevin step,
and mode weights freeze once τ is too small to hop between modes. On the exact 2-D mixture the
conditional p(x2 | x1) gets closer with more levels (10 → 40 → 160: W1 ≈ 5 → 2 → 1.5× the noise
floor of 2000 exact samples), see tests/test_editing.py.

Here the mask is passed as ``known = 1 − Ω`` (1 = keep), the same convention as
``inpaint``'s pixel mask, so a mask means the same thing everywhere in this module.
"""
import math

import torch

from ._checks import check_taus

__all__ = [
    "iterative_edit", "inpaint", "colorize", "color_basis", "luma_weights", "luma_of", "LUMA_WEIGHTS", "super_resolve", "patch_basis", "block_mean",
    "stroke_guided", "denoise", "slerp", "interpolate", "check_taus", "EDIT_TAUS", "IMAGE_EDIT_TAUS",
    "IMAGE_INPAINT_TAUS", "IMAGE_INPAINT_REPEATS", "default_schedule",
]

# Default intermediate times of the iterative tasks: 40 levels, geometric from 1 down to 0.05 (NFE 41).
# Each level acts like one annealed Langevin step, so more levels mix better between modes; on the
# exact 2-D ring mixture (sigma_data ~ 0.5, like images in [-1, 1]) 40 levels put the conditional
# p(x2 | x1) within ~2x the sampling noise of 4000 exact samples, 10 levels ~6x (tests/test_editing.py).
EDIT_TAUS = tuple(torch.logspace(0.0, math.log10(0.05), 40, dtype=torch.float64).tolist())

# Images in [-1, 1] decide their content at much higher levels than the 2-D mixture: a digit survives one jump
# from tau ~ 1 and is forgotten by tau ~ 20 (notebook 07a measures it), so image edits anneal through [0.5, 5].
# Super-resolution and colorization: 12 levels geometric from 5 to 0.5, then a clean-up level (NFE 14).
IMAGE_EDIT_TAUS = tuple(torch.logspace(math.log10(5.0), math.log10(0.5), 12, dtype=torch.float64).tolist() + [0.15])
# Inpainting a large region: 6 levels in [1.2, 5], each run 12 times (RePaint's resampling), then 3 clean-up
# levels once (NFE 76). Both schedules were chosen on MNIST test digits 0-499; tests/test_editing.py
# checks the default calls on held-out training digits.
IMAGE_INPAINT_TAUS = tuple(torch.logspace(math.log10(5.0), math.log10(1.2), 6, dtype=torch.float64).tolist()
                           + [0.6, 0.3, 0.15])
IMAGE_INPAINT_REPEATS = (12,) * 6 + (1,) * 3


def default_schedule(task: str, y: torch.Tensor, taus="auto", repeats=None):
    """(taus, repeats) for an edit: what the caller gave, else the default for the data's kind.

    ``taus='auto'`` picks by the shape of ``y``: images (B, C, H, W) get ``IMAGE_INPAINT_TAUS`` with
    ``IMAGE_INPAINT_REPEATS`` (task 'inpaint') or ``IMAGE_EDIT_TAUS`` (other tasks); points (B, D) get
    ``EDIT_TAUS``, the schedule tuned on the 2-D mixture. ``repeats=None`` means 1 per level, or the default's.
    """
    if isinstance(taus, str):
        if taus != "auto":
            raise ValueError(f"taus must be a sequence of noise levels or 'auto'; got {taus!r}")
        if y.ndim == 4:
            taus, auto_reps = (IMAGE_INPAINT_TAUS, IMAGE_INPAINT_REPEATS) if task == "inpaint" else (IMAGE_EDIT_TAUS, 1)
        else:
            taus, auto_reps = EDIT_TAUS, 1
        return taus, auto_reps if repeats is None else repeats
    return taus, 1 if repeats is None else repeats


def _check_level(name: str, t, eps: float, T: float) -> float:
    t = float(t)
    if not eps <= t <= T:
        raise ValueError(f"{name} must lie in [eps, T] = [{eps}, {T}] (it is a noise level, the CM's time); got {t}")
    return t


def _channel_transform(Q: torch.Tensor):
    """(A, A⁻¹) for an orthogonal matrix Q acting on axis 1 (channels of images, coordinates of points)."""
    def A(x):
        return torch.einsum("ij,bj...->bi...", Q.to(x), x)

    def A_inv(u):
        return torch.einsum("ji,bj...->bi...", Q.to(u), u)  # Q orthogonal: Q⁻¹ = Qᵀ

    return A, A_inv


@torch.no_grad()
def iterative_edit(f, y: torch.Tensor, known, taus="auto", transform=None, eps: float = 0.002, T: float = 80.0,
                   generator=None, x_T: torch.Tensor = None, return_all: bool = False, repeats=None, task: str = None):
    """Alg. 4: multistep consistency sampling (Alg. 1) with a projection onto {x : known part of A x = A y}.

    Operator convention. ``transform`` is
      * ``None``: A = identity (inpainting, 2-D conditionals);
      * a square orthogonal matrix Q (tensor): (A x)[:, i] = Σ_j Q[i, j] x[:, j] on axis 1, A⁻¹ = Qᵀ;
      * a pair of callables ``(A, A_inv)`` with ``A_inv(A(x)) == x``; A may change the shape
        (e.g. cut into patches), ``known`` broadcasts against ``A(y)``.
    ``known`` is 1 - Ω of Alg. 4, a binary tensor in A's space: 1 = take from A y, 0 = generate.
    Only the known part of y matters (Alg. 4, line 2 zeroes the rest).

    ``repeats`` runs every level that many times (re-noise, jump, project), RePaint's resampling
    (Lugmayr et al. 2022): more of the Langevin-like steps at the levels where the content is decided,
    so the generated part agrees better with the kept part. An integer applies to every level, a
    sequence gives one count per level. NFE = 1 + the sum of the repeats over the levels.

    Starts at x_T = y' + T z (y' = the zeroed reference) unless ``x_T`` is given.
    The projection is a select, not a blend, so kept coordinates are copied bit for bit when
    A is the identity. With ``return_all`` returns the projected sample after every step.
    ``taus='auto'`` (and ``repeats=None``) take ``default_schedule(task, y)``: the image schedule for images.
    """
    taus, repeats = default_schedule(task, y, taus, repeats)
    taus = check_taus(taus, eps, T)
    reps = [repeats] * len(taus) if isinstance(repeats, (int, float)) else list(repeats)
    if len(reps) != len(taus) or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in reps):
        raise ValueError(f"repeats must be an integer >= 1, or one such integer per level ({len(taus)} levels); "
                         f"got {repeats!r}")
    if transform is None:
        A = A_inv = None
    elif isinstance(transform, torch.Tensor):
        if transform.ndim != 2 or transform.shape[0] != transform.shape[1] or transform.shape[0] != y.shape[1]:
            raise ValueError(f"a matrix transform must be square of size y.shape[1] = {y.shape[1]} "
                             f"(it acts on axis 1); got shape {tuple(transform.shape)}")
        A, A_inv = _channel_transform(transform)
    else:
        A, A_inv = transform
    Ay = y if A is None else A(y)
    known = torch.as_tensor(known, device=y.device)
    if ((known != 0) & (known != 1)).any():
        raise ValueError("known must be a binary mask (1 = keep the reference, 0 = generate)")
    try:
        keep = torch.broadcast_to(known.bool(), Ay.shape)
    except RuntimeError:
        raise ValueError(f"known of shape {tuple(known.shape)} does not broadcast against A(y) of shape "
                         f"{tuple(Ay.shape)}; give it A(y)'s shape or one sample's shape "
                         f"{tuple(Ay.shape[1:])}") from None

    def project(x):
        if A is None:
            return torch.where(keep, y, x)
        return A_inv(torch.where(keep, Ay, A(x)))

    if x_T is None:
        y0 = project(torch.zeros_like(y))  # Alg. 4, line 2: A⁻¹[(A y) ⊙ (1 − Ω)]
        x_T = y0 + T * torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
    elif x_T.shape != y.shape:
        raise ValueError(f"x_T must have y's shape {tuple(y.shape)}; got {tuple(x_T.shape)}")
    x = project(f(x_T, T))
    out = [x]
    for tau in (tau for tau, r in zip(taus, reps) for _ in range(r)):
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x = project(f(x + math.sqrt(tau**2 - eps**2) * z, tau))
        out.append(x)
    return out if return_all else x


def inpaint(f, y: torch.Tensor, mask, taus="auto", **kw):
    """Alg. 4 with A = identity: keep the pixels where ``mask`` is 1, generate the rest.

    ``mask`` has y's shape, or one sample's shape (e.g. (C, H, W)), or broadcasts to it
    ((1, H, W) or (H, W) for one mask over all channels). On 2-D points, mask (2,) = [1, 0]
    fixes coordinate 0 to y[:, 0] and samples coordinate 1: conditional sampling. The final
    projection copies y, so the known pixels of the result equal y exactly.
    Keyword arguments go to ``iterative_edit`` (eps, T, generator, x_T, return_all, repeats).
    """
    mask = torch.as_tensor(mask, device=y.device)
    try:
        ok = torch.broadcast_shapes(mask.shape, y.shape) == y.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit y of shape {tuple(y.shape)}: give it y's "
                         f"shape, one sample's shape {tuple(y.shape[1:])}, or a shape that broadcasts to it "
                         f"such as (1, H, W) or (H, W) (1 = known pixel)")
    return iterative_edit(f, y, mask, taus, transform=None, task="inpaint", **kw)


# Luma weights of colorization: "rec601" is the CM code's (openai/consistency_models, iterative_colorization:
# Rec. 601 luma 0.2989 R + 0.5870 G + 0.1140 B); "mean" is the channel mean (R + G + B) / 3, gray = (1, 1, 1)/sqrt(3).
LUMA_WEIGHTS = {"rec601": (0.2989, 0.5870, 0.1140), "mean": (1 / 3, 1 / 3, 1 / 3)}


def luma_weights(luma="rec601", dtype=torch.float32) -> torch.Tensor:
    """The weights w of luma(x) = Σ_c w_c x_c: a name of ``LUMA_WEIGHTS`` or three positive numbers."""
    if isinstance(luma, str):
        if luma not in LUMA_WEIGHTS:
            raise ValueError(f"luma must be one of {sorted(LUMA_WEIGHTS)} or three weights (w_R, w_G, w_B); got {luma!r}")
        luma = LUMA_WEIGHTS[luma]
    w = torch.as_tensor(luma, dtype=torch.float64).flatten()
    if w.shape != (3,) or not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
        raise ValueError(f"luma weights must be three positive numbers (w_R, w_G, w_B); got {luma!r}")
    return w.to(dtype)


def color_basis(dtype=torch.float32, luma="rec601") -> torch.Tensor:
    """The orthogonal 3×3 matrix of colorization: row 0 is the luma direction w/|w|, rows 1–2 span its complement.

    ``luma='rec601'`` (default) uses the CM code's Rec. 601 weights w = (0.2989, 0.5870, 0.1140);
    ``luma='mean'`` the equal weights, row 0 = (1, 1, 1)/√3 (gray = channel mean), the library's axis before;
    three numbers give any other positive weights. Keeping coordinate 0 of Q x keeps luma(x) = w · x.
    Rows 1 and 2 span the plane orthogonal to w; which basis of it does not matter (Ω generates both).
    For ``'mean'`` they are (1, −1, 0)/√2 and (1, 1, −2)/√6; otherwise QR of [w/|w|, e_2, e_3], as in the CM code.
    """
    if isinstance(luma, str) and luma == "mean":
        return torch.tensor([[1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)],
                             [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],
                             [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)]], dtype=dtype)
    w = luma_weights(luma, torch.float64)
    m = torch.eye(3, dtype=torch.float64)
    m[:, 0] = w / w.norm()
    q = torch.linalg.qr(m).Q
    q = q * torch.sign(q[:, 0].sum())  # QR fixes columns up to sign; make the luma axis point along +w
    return q.T.contiguous().to(dtype)


def luma_of(x: torch.Tensor, luma="rec601") -> torch.Tensor:
    """luma(x) = Σ_c w_c x_c over axis 1 of (B, 3, H, W) images, keepdim: (B, 1, H, W)."""
    w = luma_weights(luma, x.dtype).to(x.device)
    return torch.einsum("c,bchw->bhw", w, x).unsqueeze(1)


def colorize(f, y_gray: torch.Tensor, taus="auto", luma="rec601", **kw):
    """Alg. 4 with A = ``color_basis(luma=luma)`` on the channels: keep the luma, generate the two other axes.

    ``y_gray`` is (B, 1, H, W) (the luma itself) or (B, 3, H, W) (an RGB image, whose luma is kept).
    ``luma`` names the weights w of luma(x) = Σ_c w_c x_c: ``'rec601'`` (default, the CM code's
    (0.2989, 0.5870, 0.1140)), ``'mean'`` (the channel mean) or three positive numbers.
    Returns (B, 3, H, W) RGB images whose luma equals the input's (up to float rounding).
    """
    if y_gray.ndim != 4 or y_gray.shape[1] not in (1, 3):
        raise ValueError(f"colorize works on RGB models: give y_gray as (B, 1, H, W) or (B, 3, H, W); "
                         f"got shape {tuple(y_gray.shape)}")
    w = luma_weights(luma, y_gray.dtype).to(y_gray.device)
    L = y_gray if y_gray.shape[1] == 1 else torch.einsum("c,bchw->bhw", w, y_gray).unsqueeze(1)
    # the RGB point on the luma axis with luma L: y = L w/|w|², so A y = (L/|w|, 0, 0) and w · y = L
    y = L * (w / (w * w).sum()).view(1, 3, 1, 1)
    known = torch.tensor([1.0, 0.0, 0.0], device=y.device).view(3, 1, 1)
    return iterative_edit(f, y, known, taus, transform=color_basis(y.dtype, luma=luma), task="colorize", **kw)


def patch_basis(factor: int, dtype=torch.float32) -> torch.Tensor:
    """Orthogonal (factor², factor²) matrix whose first column is the constant vector 1/factor.

    QR of [1 | e_2 … e_n] (Gram–Schmidt on the constant vector first): coefficient 0 of a patch
    in this basis is factor × (patch mean), the other coefficients are orthogonal to the mean.
    """
    n = factor * factor
    m = torch.eye(n, dtype=torch.float64)
    m[:, 0] = 1.0
    q = torch.linalg.qr(m).Q
    q = q * torch.sign(q[0, 0])  # QR fixes columns up to sign; make the mean axis +1/factor
    return q.to(dtype)


def _patch_transform(factor: int, H: int, W: int, dtype):
    Q = patch_basis(factor, dtype)
    h, w, k = H // factor, W // factor, factor

    def A(x):  # (B, C, H, W) -> (B, C, h, w, k²) coefficients
        p = x.reshape(*x.shape[:2], h, k, w, k).permute(0, 1, 2, 4, 3, 5).reshape(*x.shape[:2], h, w, k * k)
        return p @ Q.to(x)

    def A_inv(u):
        p = (u @ Q.to(u).T).reshape(*u.shape[:2], h, w, k, k).permute(0, 1, 2, 4, 3, 5)
        return p.reshape(*u.shape[:2], H, W)

    return A, A_inv


def block_mean(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Means over factor×factor blocks: (B, C, H, W) -> (B, C, H/factor, W/factor), the low-res image."""
    _check_factor(x, factor)
    B, C, H, W = x.shape
    return x.reshape(B, C, H // factor, factor, W // factor, factor).mean((3, 5))


def _check_factor(x, factor):
    if x.ndim != 4 or int(factor) != factor or factor < 1 or x.shape[2] % factor or x.shape[3] % factor:
        raise ValueError(f"factor must be an integer >= 1 that divides H and W of a (B, C, H, W) image; got "
                         f"factor {factor} for shape {tuple(x.shape)}: crop or pad the image, or pick a divisor")


def super_resolve(f, y_lowres: torch.Tensor, factor: int, taus="auto", **kw):
    """Alg. 4 with A = a per-patch orthogonal basis (``patch_basis``): keep the factor×factor block
    means (= ``y_lowres``), generate everything orthogonal to them.

    ``y_lowres`` is (B, C, h, w) (e.g. ``block_mean(x, factor)``); returns (B, C, h·factor, w·factor)
    whose block means equal y_lowres. A given ``x_T`` must have that shape.
    """
    if y_lowres.ndim != 4 or int(factor) != factor or factor < 1:
        raise ValueError(f"super_resolve needs y_lowres of shape (B, C, h, w) and an integer factor >= 1; "
                         f"got shape {tuple(y_lowres.shape)} and factor {factor}")
    factor = int(factor)
    # Nearest upsampling: patch coefficients (factor · mean, 0, …, 0) = Alg. 4 line 2's A⁻¹[(A y) ⊙ (1 − Ω)].
    y = y_lowres.repeat_interleave(factor, 2).repeat_interleave(factor, 3)
    if kw.get("x_T") is not None and kw["x_T"].shape != y.shape:
        _check_factor(kw["x_T"], factor)
        raise ValueError(f"x_T of shape {tuple(kw['x_T'].shape)} must be y_lowres upsampled by {factor}: "
                         f"{tuple(y.shape)}")
    known = torch.zeros(factor * factor, device=y.device)
    known[0] = 1
    return iterative_edit(f, y, known, taus, transform=_patch_transform(factor, *y.shape[2:], y.dtype),
                          task="super_resolve", **kw)


@torch.no_grad()
def stroke_guided(f, strokes: torch.Tensor, t_start: float, taus=(), eps: float = 0.002, T: float = 80.0,
                  generator=None):
    """Stroke-guided generation (SDEdit, Meng et al. 2022, with a CM as in CM paper Sec. 6.3):
    treat the strokes as data, noise them to t_start, jump back with f, then Alg. 1 steps at ``taus``.

    t_start trades faithfulness (small) for realism (large); taus must decrease inside (eps, t_start).
    ``strokes`` must lie in [-1, 1], the range of the training images: the noise level t_start only
    means what it says for data on the model's scale.
    """
    t_start = _check_level("t_start", t_start, eps, T)
    taus = check_taus(taus, eps, t_start)
    lo, hi = float(strokes.min()), float(strokes.max())
    if not (lo >= -1 - 1e-5 and hi <= 1 + 1e-5):  # written so that NaN fails too
        raise ValueError(f"strokes must lie in [-1, 1] like the training images; got values in [{lo:.4g}, {hi:.4g}]. "
                         f"Map an image in [0, 1] with x * 2 - 1, or clamp it with strokes.clamp(-1, 1)")
    z = torch.randn(strokes.shape, generator=generator, dtype=strokes.dtype).to(strokes)
    x = f(strokes + t_start * z, t_start)
    for tau in taus:
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x)
        x = f(x + math.sqrt(tau**2 - eps**2) * z, tau)
    return x


@torch.no_grad()
def denoise(f, y_noisy: torch.Tensor, sigma: float, eps: float = 0.002, T: float = 80.0):
    """y_noisy = x_0 + sigma z is exactly x_sigma, so one step f(y_noisy, sigma) denoises it (CM paper, App. D).

    f follows the PF-ODE back to the data, so the result is a clean *sample* (the ODE endpoint), not
    the posterior mean E[x_0 | x_sigma]: sharp rather than minimum-MSE.
    """
    sigma = _check_level("sigma", sigma, eps, T)
    return f(y_noisy, sigma)


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical linear interpolation per sample (batch axis 0):
    z_α = sin((1−α)ψ)/sin ψ · z0 + sin(αψ)/sin ψ · z1, ψ = angle(z0, z1) (CM paper, App. D).

    Gaussian noise lives near a sphere, so slerp keeps |z_α| ≈ |z0| where a straight line would
    cut inside it (|z_0.5| ≈ |z0|/√2) and leave the prior. α = 0 and 1 return z0 and z1 exactly.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape; got {tuple(z0.shape)} and {tuple(z1.shape)}")
    a, b = z0.flatten(1), z1.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    psi = torch.arccos(cos.clamp(-1, 1))
    s = torch.sin(psi)
    near = s < 1e-6  # (anti)parallel: the great circle is undefined, fall back to a straight line
    s_safe = torch.where(near, torch.ones_like(s), s)
    w0 = torch.where(near, torch.full_like(s, 1 - alpha), torch.sin((1 - alpha) * psi) / s_safe)
    w1 = torch.where(near, torch.full_like(s, alpha), torch.sin(alpha * psi) / s_safe)
    shape = (-1,) + (1,) * (z0.ndim - 1)
    return w0.view(shape) * z0 + w1.view(shape) * z1


@torch.no_grad()
def interpolate(f, z0: torch.Tensor, z1: torch.Tensor, alphas, T: float = 80.0) -> torch.Tensor:
    """One-step samples along the slerp between two standard-normal noises: f(T z_α, T) for α in alphas.

    Returns a tensor of shape (len(alphas), *z0.shape).
    """
    return torch.stack([f(T * slerp(z0, z1, float(a)), T) for a in alphas])
