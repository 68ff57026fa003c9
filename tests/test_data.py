"""cmedu.data: MNIST from the committed .gz files; clear errors for missing or corrupt files."""
import gzip
import shutil

import numpy as np
import pytest
import torch

from cmedu import data
from cmedu.data import MNIST_FILES, find_mnist_root, load_mnist

ALL_FILES = MNIST_FILES[True] + MNIST_FILES[False]


def _idx(magic, dims, payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload


def _write(folder, name, content: bytes, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(gzip.compress(content) if compress else content)


@pytest.fixture(scope="module")
def train():
    return load_mnist(train=True)


@pytest.fixture(scope="module")
def test():
    return load_mnist(train=False)


def test_train_shapes_range_labels(train):
    x, y = train
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert x.min() == -1 and x.max() == 1
    counts = torch.bincount(y, minlength=10)
    assert counts.numel() == 10 and counts.sum() == 60000
    assert counts.min() >= 5000 and counts.max() <= 7000  # MNIST: 5421 (digit 5) .. 6742 (digit 1)
    assert counts[1] == 6742 and counts[5] == 5421


def test_test_split(test):
    x, y = test
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert torch.bincount(y, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # about 19% of MNIST pixels are non-zero (ink); the background is exactly -1
    assert 0.15 < (x > -1).double().mean() < 0.25
    assert (x[:, :, 0, :] == -1).all()


def test_pad_to_32(test):
    x32, y32 = load_mnist(train=False, pad_to_32=True)
    assert x32.shape == (10000, 1, 32, 32)
    assert torch.equal(x32[:, :, 2:30, 2:30], test[0]) and torch.equal(y32, test[1])
    assert (x32[:, :, :2] == -1).all() and (x32[:, :, :, -2:] == -1).all()


def test_decoded_files_are_cached_and_results_fresh(test):
    hits = data._load_mnist_uint8.cache_info().hits
    x, _ = load_mnist(train=False)
    assert data._load_mnist_uint8.cache_info().hits == hits + 1
    x.fill_(0)  # callers own their tensors: the cache is not touched
    assert load_mnist(train=False)[0].min() == -1


def test_root_resolution(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ALL_FILES:
        (raw / name).symlink_to(data.REPO_DATA / "MNIST" / "raw" / name)
    monkeypatch.setenv("CMEDU_DATA", str(tmp_path))
    assert find_mnist_root() == tmp_path
    # an empty CMEDU_DATA folder falls back to the repository's data/
    monkeypatch.setenv("CMEDU_DATA", str(tmp_path / "elsewhere"))
    assert find_mnist_root() == data.REPO_DATA
    # an explicit root is the only place searched
    with pytest.raises(FileNotFoundError):
        find_mnist_root(tmp_path / "elsewhere")


def test_missing_folder_error_names_files_folder_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_mnist(root=tmp_path, train=False)
    msg = str(e.value)
    for name in ALL_FILES:
        assert name in msg
    assert str((tmp_path / "MNIST" / "raw").resolve()) in msg
    assert "download=True" in msg and "never downloads" in msg


def _labels_ok(raw):
    _write(raw, "t10k-labels-idx1-ubyte.gz", _idx(2049, [10000], bytes(10000)))


def test_corrupt_gzip(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _labels_ok(raw)
    _write(raw, "t10k-images-idx3-ubyte.gz", b"this is not gzip data", compress=False)
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz") as e:
        load_mnist(root=tmp_path, train=False)
    assert "corrupt" in str(e.value)


def test_bad_magic_number(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _labels_ok(raw)
    _write(raw, "t10k-images-idx3-ubyte.gz", _idx(1234, [10000, 28, 28], bytes(10000 * 784)))
    with pytest.raises(ValueError, match="magic number 1234") as e:
        load_mnist(root=tmp_path, train=False)
    assert "t10k-images-idx3-ubyte.gz" in str(e.value)


def test_wrong_size(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _labels_ok(raw)
    _write(raw, "t10k-images-idx3-ubyte.gz", _idx(2051, [10000, 28, 28], bytes(5 * 784)))  # truncated
    with pytest.raises(ValueError, match="truncated") as e:
        load_mnist(root=tmp_path, train=False)
    assert "t10k-images-idx3-ubyte.gz" in str(e.value)
    _write(raw, "t10k-images-idx3-ubyte.gz", _idx(2051, [100, 28, 28], bytes(100 * 784)))  # too few images
    with pytest.raises(ValueError, match=r"\(100, 28, 28\)"):
        load_mnist(root=tmp_path, train=False)


def test_uncompressed_files_are_accepted(tmp_path):
    """torchvision's download leaves the decompressed files next to the .gz ones."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES[False]:
        with gzip.open(data.REPO_DATA / "MNIST" / "raw" / name) as f, open(raw / name[:-3], "wb") as g:
            shutil.copyfileobj(f, g)
    x, y = load_mnist(root=tmp_path, train=False)
    x0, y0 = load_mnist(train=False)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert np.array_equal(y.numpy(), y0.numpy())
