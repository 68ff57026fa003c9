"""A small MNIST classifier and the sample-quality numbers built on it.

FID (Heusel et al. 2017) compares Gaussians fitted to Inception features. For MNIST an
ImageNet network is a poor judge, so — as is common for MNIST — we use the penultimate
layer of a small CNN trained on MNIST itself ("FD-MNIST"). Its numbers are comparable
only with each other (same classifier weights, same reference set), never with FID.

    FD = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})

The classifier in ``checkpoints/mnist_classifier.pt`` was trained by ``train_classifier``
(command and accuracy in ``checkpoints/README.md``).
"""
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import load_mnist
from .profiles import progress_disabled
from .checkpoints import save_atomic

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "checkpoints" / "mnist_classifier.pt"
FORMAT = "cmedu-mnist-classifier-v1"


class MnistClassifier(nn.Module):
    """Three conv blocks (32, 64, 128 channels; BatchNorm, ReLU, 2x2 max-pool), a 128-unit
    hidden layer (the features of FD-MNIST) and a linear read-out to 10 logits.

    Inputs are images in [-1, 1] of shape (batch, 1, 28, 28); 32x32 images (MNIST padded by
    2 pixels) are centre-cropped to 28x28 first.
    """

    feature_dim = 128

    def __init__(self, dropout: float = 0.3):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                                 nn.MaxPool2d(2))

        self.conv = nn.Sequential(block(1, 32), block(32, 64), block(64, 128))  # 28 -> 14 -> 7 -> 3
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(128 * 3 * 3, self.feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, 10))

    @staticmethod
    def _prepare(x):
        if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) not in ((28, 28), (32, 32)):
            raise ValueError(f"expected MNIST images of shape (batch, 1, 28, 28) or (batch, 1, 32, 32); got {tuple(x.shape)}")
        return x[:, :, 2:30, 2:30] if x.shape[-1] == 32 else x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate-layer features (batch, 128) used by FD-MNIST."""
        return self.hidden(self.conv(self._prepare(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _param_device(model):
    return next(model.parameters()).device


@torch.no_grad()
def extract_features(classifier: MnistClassifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Features of many images, in eval mode and in batches; returns a float64 CPU tensor (n, 128)."""
    was_training = classifier.training
    classifier.eval()
    dev = _param_device(classifier)
    out = [classifier.features(b.to(dev, torch.float32)).double().cpu() for b in images.split(batch_size)]
    classifier.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def predict(classifier: MnistClassifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted digit (int64) of each image."""
    was_training = classifier.training
    classifier.eval()
    dev = _param_device(classifier)
    out = [classifier(b.to(dev, torch.float32)).argmax(1).cpu() for b in images.split(batch_size)]
    classifier.train(was_training)
    return torch.cat(out)


def accuracy(classifier: MnistClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of correctly classified images."""
    return (predict(classifier, images) == labels.cpu()).double().mean().item()


def gaussian_frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2}), in float64.

    tr (S_a S_b)^{1/2} is computed as tr (S_a^{1/2} S_b S_a^{1/2})^{1/2}: the two matrices are
    similar, and the second is symmetric PSD, so two symmetric eigen-decompositions suffice
    (no complex round-off as with a general matrix square root).
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt_a @ cov_b @ sqrt_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    fd = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt
    return float(max(fd, 0.0))


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted (mean, covariance) to two feature sets (n, d) and (m, d)."""
    a, b = (np.asarray(f.cpu() if torch.is_tensor(f) else f, np.float64) for f in (feats_a, feats_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets (n, d) and (m, d) with n, m >= 2; got {a.shape} and {b.shape}")
    return gaussian_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def fd_mnist(classifier: MnistClassifier, samples: torch.Tensor, reference=None) -> float:
    """FD-MNIST: Fréchet distance of the classifier's features of ``samples`` and ``reference``.

    ``reference`` defaults to the 10,000 MNIST test images. Both are images in [-1, 1]
    (28x28 or 32x32). Finite samples give a positive floor: 10k train vs 10k test images
    is the number to beat (see checkpoints/README.md).
    """
    if reference is None:
        reference = load_mnist(train=False)[0]
    return frechet_distance(extract_features(classifier, samples), extract_features(classifier, reference))


def class_histogram(classifier: MnistClassifier, samples: torch.Tensor) -> torch.Tensor:
    """Fraction of ``samples`` classified as each digit 0..9 (a tensor of 10 numbers summing to 1).

    Mode dropping shows up as digits with a fraction far below MNIST's ~0.1.
    """
    pred = predict(classifier, samples)
    return torch.bincount(pred, minlength=10).double() / len(pred)


def _random_shift(x, generator, max_shift: int = 2):
    """Augmentation: translate each image by up to ``max_shift`` pixels (background -1 fills in)."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (max_shift,) * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, :].expand(n, h, w)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def train_classifier(epochs: int = 3, batch_size: int = 128, lr: float = 3e-3, seed: int = 0, root=None,
                     device: str = "cpu", augment: bool = True, progress=None, limit: int = None):
    """Train ``MnistClassifier`` on the 60k training images; returns (model, test accuracy).

    Adam with a one-cycle learning rate (warm-up then cosine decay to 0), label smoothing
    0.1, random shifts of up to 2 pixels. Deterministic on CPU for a given seed.
    ``limit`` uses only the first ``limit`` training images (quick checks).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = load_mnist(root, train=True)
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    x_test, y_test = load_mnist(root, train=False)
    model = MnistClassifier().to(device)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    disable = progress_disabled() if progress is None else not progress
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        t0 = time.time()
        with tqdm(perm.split(batch_size), desc=f"epoch {epoch + 1}/{epochs}", disable=disable) as bar:
            for i, idx in enumerate(bar):
                x = x_train[idx]
                if augment:
                    x = _random_shift(x, gen)
                loss = loss_fn(model(x.to(device)), y_train[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{(i + 1) * batch_size / (time.time() - t0):.0f}")
    model.eval()
    return model, accuracy(model, x_test, y_test)


def save_classifier(model: MnistClassifier, path=DEFAULT_PATH, **metadata):
    """Save the weights in float16 (half the size; accuracy unchanged) with ``metadata``, atomically."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    save_atomic({"format": FORMAT, "state_dict": state, "metadata": metadata}, str(path))


def load_classifier(path=None, device: str = "cpu") -> MnistClassifier:
    """The classifier saved by ``save_classifier`` (default: the repository's checkpoints/mnist_classifier.pt), in eval mode.

    Its metadata (test accuracy, FD floor, training command) is in ``model.metadata``.
    """
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"no MNIST classifier at {path}; train one with "
            f"`python -m cmedu train-classifier --out {path}` (a few minutes on a CPU)"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cmedu MNIST classifier (expected a file written by save_classifier)")
    model = MnistClassifier()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    model.metadata = ckpt.get("metadata", {})
    return model.to(device).eval()


__all__ = [
    "MnistClassifier", "train_classifier", "save_classifier", "load_classifier", "extract_features", "predict",
    "accuracy", "frechet_distance", "gaussian_frechet_distance", "fd_mnist", "class_histogram",
]
