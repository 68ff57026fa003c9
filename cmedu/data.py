"""Datasets from local files: MNIST from its four original ``.gz`` files, never downloaded.

The files use the IDX format (LeCun et al.): a big-endian header, the magic number
``0x00000803`` (images, 3 dims) or ``0x00000801`` (labels, 1 dim), one uint32 per
dimension, then the raw uint8 values. Parsing it takes a dozen lines of numpy, so the
library needs no download code and no torchvision dataset class.

Where the files are looked for (first match wins):

1. the ``root`` argument (only there, when given);
2. the ``CMEDU_DATA`` environment variable;
3. the repository's ``data/`` folder (next to the ``cmedu`` package);
4. ``./data`` in the current directory.

Each is a folder holding ``MNIST/raw/`` — torchvision's layout, so a folder made by
``torchvision.datasets.MNIST(root, download=True)`` works as it is.

CIFAR-10 (Krizhevsky 2009) is looked for in the same folders and, last, in the
stand-in folder ``../shared/data`` beside the repository. The first folder holding
either layout wins; inside it, torchvision's lossless ``cifar-10-batches-py/`` (pickled
``data_batch_1..5`` and ``test_batch``) is preferred to ``CIFAR10-jpeg75/{train,test}.zip``,
the complete dataset re-encoded as JPEG quality 75 (``train/<class>/NNNN.jpg``), read
straight from the zip. Pixels and FID on the stand-in differ from the originals, so
``cifar10_source`` says which one was read: anything measured on it should say
"JPEG-75".
"""
import functools
import gzip
import io
import os
import pickle
import re
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

MNIST_FILES = {
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MNIST_SIZES = {True: 60000, False: 10000}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049
REPO_DATA = Path(__file__).resolve().parent.parent / "data"

_HOW_TO_GET = (
    "To get them: copy the four files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz into <root>/MNIST/raw/ (this repository "
    "ships them in data/MNIST/raw/), or on a machine with internet run "
    "`python -c \"import torchvision; torchvision.datasets.MNIST('<root>', download=True)\"`; "
    "then pass root=<root> or set CMEDU_DATA=<root>. cmedu never downloads."
)


def candidate_roots(root=None):
    """The data folders searched, in order (see the module docstring)."""
    if root is not None:
        return [Path(root)]
    roots = []
    if os.environ.get("CMEDU_DATA"):
        roots.append(Path(os.environ["CMEDU_DATA"]))
    roots += [REPO_DATA, Path("data")]
    return roots


def find_mnist_root(root=None, train: bool = True) -> Path:
    """The first candidate root whose ``MNIST/raw/`` holds the files for ``train``; else FileNotFoundError."""
    names = MNIST_FILES[bool(train)]
    roots = candidate_roots(root)
    for r in roots:
        raw = r / "MNIST" / "raw"
        if all((raw / n).is_file() or (raw / n[:-3]).is_file() for n in names):
            return r
    searched = ", ".join(str((r / "MNIST" / "raw").resolve()) for r in roots)
    raise FileNotFoundError(
        f"MNIST {'training' if train else 'test'} files {names[0]} and {names[1]} not found; "
        f"searched: {searched}. {_HOW_TO_GET}"
    )


def _read_idx(path: Path, magic: int, shape: tuple) -> np.ndarray:
    """Decode one IDX file (gzipped or not) and check its magic number, dimensions and size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot read {path}: {e}. The file is corrupt; replace it. {_HOW_TO_GET}") from e
    ndim = len(shape)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated ({len(raw)} bytes). {_HOW_TO_GET}")
    found = int.from_bytes(raw[:4], "big")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if found != magic:
        raise ValueError(f"{path} has magic number {found}, expected {magic}: not an MNIST IDX file. {_HOW_TO_GET}")
    if dims != shape or len(raw) != header + int(np.prod(shape)):
        raise ValueError(
            f"{path} has dimensions {dims} and {len(raw) - header} data bytes; expected {shape} and "
            f"{int(np.prod(shape))} bytes. The file is truncated or from another dataset. {_HOW_TO_GET}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _file(raw: Path, name: str) -> Path:
    return raw / name if (raw / name).is_file() else raw / name[:-3]


@functools.lru_cache(maxsize=4)
def _load_mnist_uint8(root: str, train: bool):
    """The decoded uint8 images (N, 28, 28) and labels (N,), cached per process."""
    raw = Path(root) / "MNIST" / "raw"
    n = MNIST_SIZES[train]
    img_name, lbl_name = MNIST_FILES[train]
    images = _read_idx(_file(raw, img_name), _IMAGE_MAGIC, (n, 28, 28))
    labels = _read_idx(_file(raw, lbl_name), _LABEL_MAGIC, (n,))
    if labels.max() > 9:
        raise ValueError(f"{_file(raw, lbl_name)} holds labels above 9: not MNIST. {_HOW_TO_GET}")
    images.flags.writeable = labels.flags.writeable = False  # shared by every caller
    return images, labels


def load_mnist(root=None, train: bool = True, pad_to_32: bool = False):
    """MNIST as tensors: images float32 in [-1, 1] of shape (N, 1, 28, 28), labels int64 (N,).

    ``train`` picks the 60,000 training or the 10,000 test images. ``pad_to_32`` pads two
    background pixels (value -1) on each side, giving (N, 1, 32, 32) for networks that
    halve the resolution more often. The decoded files are cached in-process, so repeated
    calls cost only the conversion to float. Each call returns fresh tensors.
    """
    found = find_mnist_root(root, train)
    images, labels = _load_mnist_uint8(str(found.resolve()), bool(train))
    x = torch.from_numpy(images.astype(np.float32)).div_(127.5).sub_(1.0).unsqueeze(1)
    if pad_to_32:
        x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    return x, torch.from_numpy(labels.astype(np.int64))



# ---------------------------------------------------------------------------------------------
# CIFAR-10

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_SIZES = {True: 50000, False: 10000}
LOSSLESS, JPEG75 = "cifar-10-batches-py", "jpeg75"
CIFAR10_BATCHES = {True: tuple(f"data_batch_{i}" for i in range(1, 6)), False: ("test_batch",)}
CIFAR10_ZIPS = {True: "train.zip", False: "test.zip"}
SHARED_DATA = REPO_DATA.parent.parent / "shared" / "data"  # ../shared/data beside the repository

_CIFAR_HOW_TO_GET = (
    "To get the lossless files, on a machine with internet run "
    "`python -c \"import torchvision; torchvision.datasets.CIFAR10('<root>', download=True)\"` "
    "(it makes <root>/cifar-10-batches-py/); then pass root=<root> or set CMEDU_DATA=<root>. "
    "cmedu never downloads."
)


class Cifar10Source(NamedTuple):
    """Which CIFAR-10 files a loader reads: ``kind`` is 'cifar-10-batches-py' (lossless) or 'jpeg75'."""

    kind: str
    path: Path  # the cifar-10-batches-py folder, or the train.zip / test.zip of the stand-in

    @property
    def lossy(self) -> bool:
        return self.kind == JPEG75

    @property
    def label(self) -> str:
        """What to print beside a number measured on this data."""
        return "CIFAR-10 (JPEG-75 stand-in)" if self.lossy else "CIFAR-10"


def cifar10_roots(root=None):
    """The folders searched for CIFAR-10: ``candidate_roots`` and, without ``root``, ../shared/data last."""
    roots = candidate_roots(root)
    if root is None:
        roots.append(SHARED_DATA)
    return roots


def cifar10_source(root=None, train: bool = True) -> Cifar10Source:
    """The CIFAR-10 files ``load_cifar10(root, train)`` reads; FileNotFoundError when there are none."""
    train = bool(train)
    roots = cifar10_roots(root)
    for r in roots:
        batches = r / LOSSLESS
        if all((batches / n).is_file() for n in CIFAR10_BATCHES[train]):
            return Cifar10Source(LOSSLESS, batches)
        zip_path = r / "CIFAR10-jpeg75" / CIFAR10_ZIPS[train]
        if zip_path.is_file():
            return Cifar10Source(JPEG75, zip_path)
    searched = ", ".join(str(r.resolve()) for r in roots)
    raise FileNotFoundError(
        f"CIFAR-10 {'training' if train else 'test'} files not found. Looked for (1) torchvision's lossless "
        f"{LOSSLESS}/ with {', '.join(CIFAR10_BATCHES[train])} and (2) the JPEG-75 stand-in "
        f"CIFAR10-jpeg75/{CIFAR10_ZIPS[train]} in each of: {searched}. {_CIFAR_HOW_TO_GET}"
    )


def _read_cifar_batch(path: Path):
    """One pickled batch of torchvision's layout: uint8 images (n, 3, 32, 32) and labels (n,).

    The files were pickled by Python 2, so keys are bytes (b'data', b'labels'); a batch written
    by Python 3 with str keys is accepted too. Each row of ``data`` holds the red, green and
    blue 32x32 planes one after the other, hence the reshape to (n, 3, 32, 32).
    """
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except Exception as e:  # unpickling a damaged file can raise almost anything
        raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}. The file is corrupt; replace it. "
                         f"{_CIFAR_HOW_TO_GET}") from e
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise ValueError(f"{path} holds data of shape {data.shape} and {labels.size} labels; expected (n, 3072) "
                         f"and n labels. Not a CIFAR-10 batch. {_CIFAR_HOW_TO_GET}")
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar_batches(folder: Path, train: bool):
    parts = [_read_cifar_batch(folder / n) for n in CIFAR10_BATCHES[train]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _jpeg_members(zf: zipfile.ZipFile, zip_path: Path, split: str):
    """(label, number, member name) of every image, sorted by class and then file number."""
    pattern = re.compile(rf"{split}/([a-z]+)/(\d+)\.jpg")
    found = []
    for name in zf.namelist():
        if name.endswith("/"):  # folder entries
            continue
        m = pattern.fullmatch(name)
        if m is None or m.group(1) not in CIFAR10_CLASSES:
            raise ValueError(f"{zip_path} holds {name!r}, which is not {split}/<class>/NNNN.jpg with a CIFAR-10 "
                             f"class ({', '.join(CIFAR10_CLASSES)}): not the JPEG-75 stand-in. {_CIFAR_HOW_TO_GET}")
        found.append((CIFAR10_CLASSES.index(m.group(1)), int(m.group(2)), name))
    missing = set(range(10)) - {label for label, _, _ in found}
    if missing:
        raise ValueError(f"{zip_path} has no images of class {', '.join(CIFAR10_CLASSES[i] for i in sorted(missing))}; "
                         f"expected {split}/<class>/NNNN.jpg for all ten classes. {_CIFAR_HOW_TO_GET}")
    return sorted(found)


def _decode_jpeg(data: bytes, where: str) -> np.ndarray:
    """One 32x32 RGB image (32, 32, 3) from JPEG bytes; ``where`` names it in errors."""
    from PIL import Image  # only the stand-in needs PIL

    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:  # PIL's decode errors are mostly OSErrors
        raise ValueError(f"cannot decode {where}: {type(e).__name__}: {e}. The file is corrupt; replace it. "
                         f"{_CIFAR_HOW_TO_GET}") from e
    if rgb.shape != (32, 32, 3):
        raise ValueError(f"{where} is {rgb.shape[1]}x{rgb.shape[0]}, not 32x32: not CIFAR-10. {_CIFAR_HOW_TO_GET}")
    return rgb


def _read_cifar_jpeg_zip(zip_path: Path, train: bool):
    """Decode every JPEG of the stand-in zip in place (no extraction): uint8 (n, 3, 32, 32), labels (n,)."""
    split = "train" if train else "test"
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = _jpeg_members(zf, zip_path, split)
            images = np.empty((len(members), 32, 32, 3), dtype=np.uint8)
            for i, (_, _, name) in enumerate(members):
                images[i] = _decode_jpeg(zf.read(name), f"{zip_path}:{name}")
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:  # a damaged archive, or a bad CRC
        raise ValueError(f"cannot read {zip_path}: {type(e).__name__}: {e}. The file is corrupt; replace it. "
                         f"{_CIFAR_HOW_TO_GET}") from e
    labels = np.array([label for label, _, _ in members], dtype=np.int64)
    return images.transpose(0, 3, 1, 2).copy(), labels


@functools.lru_cache(maxsize=4)
def _load_cifar10_uint8(kind: str, path: str, train: bool):
    """The decoded uint8 images (N, 3, 32, 32) and labels (N,), cached per process (decoding 50k JPEGs takes ~10 s)."""
    if kind == LOSSLESS:
        images, labels = _read_cifar_batches(Path(path), train)
    else:
        images, labels = _read_cifar_jpeg_zip(Path(path), train)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path} holds labels outside 0..9: not CIFAR-10. {_CIFAR_HOW_TO_GET}")
    images.flags.writeable = labels.flags.writeable = False  # shared by every caller
    return images, labels


def load_cifar10(root=None, train: bool = True):
    """CIFAR-10 as tensors: images float32 in [-1, 1] of shape (N, 3, 32, 32), labels int64 (N,).

    ``train`` picks the 50,000 training or the 10,000 test images. Which files are read —
    lossless or the JPEG-75 stand-in — is ``cifar10_source(root, train)``; print its
    ``label`` beside any number measured on these images. Images of the stand-in come in
    class order (airplane ... truck), and within a class in the order of the original
    batches. Decoded files are cached in-process; each call returns fresh tensors.
    """
    source = cifar10_source(root, train)
    images, labels = _load_cifar10_uint8(source.kind, str(source.path.resolve()), bool(train))
    x = torch.from_numpy(images.astype(np.float32)).div_(127.5).sub_(1.0)
    return x, torch.from_numpy(labels.astype(np.int64))


IMAGE_DATASETS = ("mnist", "cifar10")


def load_images(name: str, root=None, train: bool = True, pad_to_32: bool = False) -> torch.Tensor:
    """The images of an image dataset by name ('mnist' or 'cifar10'), float32 in [-1, 1], shape (N, C, H, W)."""
    if name == "mnist":
        return load_mnist(root, train, pad_to_32)[0]
    if name == "cifar10":
        if pad_to_32:
            raise ValueError("pad_to_32 is for MNIST (28x28); CIFAR-10 images are already 32x32")
        return load_cifar10(root, train)[0]
    raise ValueError(f"unknown image dataset {name!r}; allowed values: {', '.join(IMAGE_DATASETS)}")


__all__ = ["load_mnist", "load_images", "IMAGE_DATASETS", "find_mnist_root", "candidate_roots", "MNIST_FILES",
           "load_cifar10", "cifar10_source", "cifar10_roots", "Cifar10Source", "CIFAR10_CLASSES"]
