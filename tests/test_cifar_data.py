"""cmedu.data: CIFAR-10 from torchvision's lossless batches or the JPEG-75 stand-in zips.

The stand-in is tested on tests/data/CIFAR10-jpeg75 (20 images per class and split, the JPEG
bytes copied unchanged from the full zips; see tests/data/README.md); the lossless layout on
a tiny synthetic cifar-10-batches-py written here.
"""
import io
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmedu import data
from cmedu.data import CIFAR10_CLASSES, cifar10_source, load_cifar10

FIXTURE = Path(__file__).resolve().parent / "data"


def _write_batches(folder: Path, n_per_batch=4, seed=0):
    """A synthetic cifar-10-batches-py as torchvision leaves it (bytes keys, as Python 2 pickled them)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
        written[name] = batch
    return written


def _zip(path: Path, members: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)


def _jpeg(size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, format="JPEG", quality=75)
    return buf.getvalue()


def test_fixture_shapes_range_labels_order():
    x, y = load_cifar10(FIXTURE, train=True)
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (200,) and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.9 and x.max() > 0.9
    # class order, then file number: 20 airplanes (0000..0019), then 20 automobiles, ...
    assert torch.equal(y, torch.arange(10).repeat_interleave(20))
    with zipfile.ZipFile(FIXTURE / "CIFAR10-jpeg75" / "train.zip") as zf:
        for index, member in [(0, "train/airplane/0000.jpg"), (21, "train/automobile/0001.jpg"),
                              (199, "train/truck/0019.jpg")]:
            direct = np.asarray(Image.open(io.BytesIO(zf.read(member))).convert("RGB"))
            expected = torch.from_numpy(direct.transpose(2, 0, 1).astype(np.float32)) / 127.5 - 1
            assert torch.equal(x[index], expected), member


def test_fixture_test_split_and_source():
    x, y = load_cifar10(FIXTURE, train=False)
    assert x.shape == (200, 3, 32, 32) and torch.equal(torch.bincount(y), torch.full((10,), 20))
    assert not torch.equal(x, load_cifar10(FIXTURE, train=True)[0])
    source = cifar10_source(FIXTURE, train=False)
    assert source.kind == "jpeg75" and source.path == FIXTURE / "CIFAR10-jpeg75" / "test.zip"
    assert source.lossy and "JPEG-75" in source.label


def test_cached_and_results_fresh():
    x, _ = load_cifar10(FIXTURE, train=False)
    hits = data._load_cifar10_uint8.cache_info().hits
    x.fill_(0)  # callers own their tensors: the cache is not touched
    x2, _ = load_cifar10(FIXTURE, train=False)
    assert data._load_cifar10_uint8.cache_info().hits == hits + 1
    assert x2.min() < -0.9


def test_lossless_batches(tmp_path):
    written = _write_batches(tmp_path / "cifar-10-batches-py")
    x, y = load_cifar10(tmp_path, train=True)
    assert x.shape == (20, 3, 32, 32) and y.shape == (20,)
    first = written["data_batch_1"]
    # each row holds the R, G, B planes in turn; pixel (row 0, col 1) of the first image:
    r, g, b = (int(first[b"data"][0, plane * 1024 + 1]) for plane in range(3))
    assert x[0, :, 0, 1].tolist() == pytest.approx([v / 127.5 - 1 for v in (r, g, b)], abs=1e-6)
    assert y.tolist() == sum((written[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    xt, yt = load_cifar10(tmp_path, train=False)
    assert xt.shape == (4, 3, 32, 32) and yt.tolist() == written["test_batch"][b"labels"]
    assert cifar10_source(tmp_path).kind == "cifar-10-batches-py" and not cifar10_source(tmp_path).lossy


def test_lossless_preferred_when_both_exist(tmp_path):
    shutil.copytree(FIXTURE / "CIFAR10-jpeg75", tmp_path / "CIFAR10-jpeg75")
    assert cifar10_source(tmp_path).kind == "jpeg75"
    _write_batches(tmp_path / "cifar-10-batches-py")
    source = cifar10_source(tmp_path)
    assert source == ("cifar-10-batches-py", tmp_path / "cifar-10-batches-py")
    assert load_cifar10(tmp_path)[0].shape == (20, 3, 32, 32)


def test_root_resolution(tmp_path, monkeypatch):
    shutil.copytree(FIXTURE / "CIFAR10-jpeg75", tmp_path / "env" / "CIFAR10-jpeg75")
    monkeypatch.setenv("CMEDU_DATA", str(tmp_path / "env"))
    assert cifar10_source().path == tmp_path / "env" / "CIFAR10-jpeg75" / "train.zip"
    roots = data.cifar10_roots()
    assert roots[0] == tmp_path / "env" and roots[-1] == data.SHARED_DATA
    assert data.SHARED_DATA == data.REPO_DATA.parent.parent / "shared" / "data"
    assert data.cifar10_roots(tmp_path) == [tmp_path]  # an explicit root is the only place searched


def test_missing_error_names_layouts_folders_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CMEDU_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(data, "SHARED_DATA", tmp_path / "shared")
    monkeypatch.setattr(data, "REPO_DATA", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        load_cifar10(train=False)
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "test_batch" in msg and "CIFAR10-jpeg75/test.zip" in msg
    for folder in ("env", "repo", "data", "shared"):
        assert str((tmp_path / folder).resolve()) in msg
    assert "torchvision.datasets.CIFAR10('<root>', download=True)" in msg and "never downloads" in msg


def test_incomplete_lossless_folder_is_not_used(tmp_path):
    _write_batches(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    assert cifar10_source(tmp_path, train=False).kind == "cifar-10-batches-py"
    with pytest.raises(FileNotFoundError, match="data_batch_5"):
        cifar10_source(tmp_path, train=True)


def test_corrupt_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch") as e:
        load_cifar10(tmp_path, train=False)
    assert "corrupt" in str(e.value)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"\(2, 100\)"):
        load_cifar10(tmp_path, train=False)


def test_corrupt_zip(tmp_path):
    path = tmp_path / "CIFAR10-jpeg75" / "test.zip"
    path.parent.mkdir()
    path.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(ValueError, match="test.zip") as e:
        load_cifar10(tmp_path, train=False)
    assert "corrupt" in str(e.value)


@pytest.mark.parametrize("members, match", [
    ({"images/cat_0001.png": b"x"}, "images/cat_0001.png"),        # another layout
    ({"test/kitten/0001.jpg": b"x"}, "test/kitten/0001.jpg"),       # not a CIFAR-10 class
    ({"train/cat/0001.jpg": b"x"}, "train/cat/0001.jpg"),           # the other split
    ({f"test/{c}/0000.jpg": _jpeg() for c in CIFAR10_CLASSES[:9]}, "truck"),  # a class missing
    ({f"test/{c}/0000.jpg": _jpeg((16, 16)) for c in CIFAR10_CLASSES}, "16x16"),  # not 32x32
    ({f"test/{c}/0000.jpg": b"not a jpeg" for c in CIFAR10_CLASSES}, "cannot decode"),
])
def test_odd_zip(tmp_path, members, match):
    _zip(tmp_path / "CIFAR10-jpeg75" / "test.zip", members)
    with pytest.raises(ValueError, match=match) as e:
        load_cifar10(tmp_path, train=False)
    assert "test.zip" in str(e.value)


def test_full_stand_in_when_present():
    """The complete test split, where ../shared/data (or CMEDU_DATA) holds it."""
    try:
        source = cifar10_source(train=False)
    except FileNotFoundError:
        pytest.skip("no CIFAR-10 test split in the searched folders")
    x, y = load_cifar10(train=False)
    assert x.shape == (10000, 3, 32, 32) and torch.equal(torch.bincount(y), torch.full((10,), 1000))
    assert source.kind in ("jpeg75", "cifar-10-batches-py")
    # CIFAR-10's per-channel means (0.491, 0.482, 0.447 in [0, 1]) survive JPEG-75
    mean01 = (x.mean((0, 2, 3)) + 1) / 2
    assert mean01.tolist() == pytest.approx([0.494, 0.485, 0.450], abs=0.01)
