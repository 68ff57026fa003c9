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
"""
import functools
import gzip
import os
import zlib
from pathlib import Path

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


__all__ = ["load_mnist", "find_mnist_root", "candidate_roots", "MNIST_FILES"]
