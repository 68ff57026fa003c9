"""cmedu.classifier: the Fréchet distance against closed forms, and the committed MNIST classifier."""
import os

import numpy as np
import pytest
import torch

from cmedu.classifier import (DEFAULT_PATH, MnistClassifier, accuracy, class_histogram, extract_features, fd_mnist,
                              frechet_distance, gaussian_frechet_distance, load_classifier, train_classifier)
from cmedu.data import load_mnist

slow = pytest.mark.skipif(os.environ.get("CMEDU_SLOW") != "1", reason="slow test: set CMEDU_SLOW=1")


def test_gaussian_fd_diagonal_closed_form():
    """Diagonal covariances commute: FD = |mu_a - mu_b|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    exact = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert gaussian_frechet_distance(mu_a, np.diag(a), mu_b, np.diag(b)) == pytest.approx(exact, rel=1e-10)
    # rotating both Gaussians by the same orthogonal matrix changes nothing
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    rotated = gaussian_frechet_distance(q @ mu_a, q @ np.diag(a) @ q.T, q @ mu_b, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(exact, rel=1e-8)


def test_gaussian_fd_full_covariance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    ma, mb = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    ca, cb = ma @ ma.T + 0.1 * np.eye(8), mb @ mb.T + 0.1 * np.eye(8)
    mu_a, mu_b = rng.normal(size=8), rng.normal(size=8)
    covmean = linalg.sqrtm(ca @ cb).real
    ref = ((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * covmean)
    assert gaussian_frechet_distance(mu_a, ca, mu_b, cb) == pytest.approx(ref, rel=1e-8)


def test_fd_of_samples():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 5, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # N(0, I) vs N(1, 4 I) in 5-D: FD = 5 * 1^2 + 5 * (1 - 2)^2 = 10
    b = 1 + 2 * torch.randn(4000, 5, generator=g, dtype=torch.float64)
    assert frechet_distance(a, b) == pytest.approx(10.0, rel=0.05)
    with pytest.raises(ValueError):
        frechet_distance(a, b[:, :3])


@pytest.fixture(scope="module")
def clf():
    return load_classifier()


@pytest.fixture(scope="module")
def test_set():
    return load_mnist(train=False)


def test_committed_classifier_accuracy(clf, test_set):
    x, y = test_set
    assert accuracy(clf, x[:2000], y[:2000]) >= 0.99
    assert clf.metadata["test_accuracy"] >= 0.99
    assert "train-classifier" in clf.metadata["command"]


def test_features_histogram_and_fd(clf, test_set):
    x, y = test_set
    feats = extract_features(clf, x[:500])
    assert feats.shape == (500, MnistClassifier.feature_dim) and feats.dtype == torch.float64
    # 32x32 (padded) images are centre-cropped: the same features
    padded = torch.nn.functional.pad(x[:500], (2, 2, 2, 2), value=-1.0)
    assert torch.allclose(extract_features(clf, padded), feats, atol=1e-5)
    hist = class_histogram(clf, x[:1000])
    assert hist.shape == (10,) and hist.sum().item() == pytest.approx(1.0)
    true = torch.bincount(y[:1000], minlength=10).double() / 1000
    assert (hist - true).abs().max() < 0.01
    # real digits are close to real digits; noise and a single digit class are far
    real = fd_mnist(clf, x[:1000], x[1000:2000])
    noise = fd_mnist(clf, torch.rand(500, 1, 28, 28) * 2 - 1, x[1000:2000])
    ones = fd_mnist(clf, x[:2000][y[:2000] == 1], x[1000:2000])
    assert real < 0.2 * ones and ones < noise


def test_classifier_input_check_and_missing_file(tmp_path, clf):
    with pytest.raises(ValueError, match="28, 28"):
        clf(torch.zeros(2, 1, 30, 30))
    with pytest.raises(FileNotFoundError, match="train-classifier"):
        load_classifier(tmp_path / "none.pt")


def test_train_classifier_runs_on_a_subset():
    model, acc = train_classifier(epochs=1, batch_size=64, limit=256, progress=False)
    assert isinstance(model, MnistClassifier) and 0.0 <= acc <= 1.0


@pytest.mark.slow
@slow
def test_train_classifier_reaches_99_percent():
    model, acc = train_classifier(epochs=3)
    assert acc >= 0.99
