import numpy as np
import pytest
import torch

from cmedu.nets import make_mlp
from cmedu.parameterization import ConsistencyModel, EDMDenoiser, consistency_scalings, edm_scalings

EPS, SD = 0.002, 0.5


@pytest.fixture
def cm():
    torch.manual_seed(0)
    return ConsistencyModel(make_mlp("tiny"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_boundary_condition_is_exact(cm, dtype):
    cm = cm.to(dtype)
    g = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(64, 2, generator=g)).to(dtype)
    # scalar t and a full (batch,) tensor of eps
    assert torch.equal(cm(x, EPS), x)
    assert torch.equal(cm(x, torch.full((64,), EPS, dtype=dtype)), x)
    # sanity: the network does matter away from eps (the check above is not vacuous)
    assert not torch.allclose(cm(x, 1.0), x)
    # a per-sample t: rows at eps are returned untouched, the others are not
    t = torch.where(torch.arange(64) % 2 == 0, torch.tensor(EPS, dtype=dtype), torch.tensor(0.5, dtype=dtype))
    out = cm(x, t)
    assert torch.equal(out[::2], x[::2])
    assert not torch.allclose(out[1::2], x[1::2])


def test_boundary_condition_survives_training_noise(cm):
    # Randomising the weights (as training does) must not break f(x, eps) = x.
    with torch.no_grad():
        for p in cm.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(32, 2)
    assert torch.equal(cm(x, EPS), x)


def test_consistency_scalings_at_eps():
    c_skip, c_out = consistency_scalings(torch.tensor(EPS, dtype=torch.float64))
    assert c_skip.item() == 1.0
    assert c_out.item() == 0.0
    c_skip, c_out = consistency_scalings(torch.tensor(EPS))  # float32
    assert c_skip.item() == 1.0 and c_out.item() == 0.0


def test_consistency_scalings_formula():
    t = np.array([0.002, 0.01, 0.3, 1.0, 7.5, 80.0])
    c_skip, c_out = consistency_scalings(torch.from_numpy(t), sigma_data=SD, eps=EPS)
    np.testing.assert_allclose(c_skip.numpy(), SD**2 / ((t - EPS) ** 2 + SD**2), rtol=1e-13)
    np.testing.assert_allclose(c_out.numpy(), SD * (t - EPS) / np.sqrt(SD**2 + t**2), rtol=1e-13, atol=1e-300)
    # far from eps the model is almost all network
    assert c_skip[-1] < 1e-4 and c_out[-1] == pytest.approx(SD, rel=1e-3)
    # other sigma_data / eps
    c_skip, c_out = consistency_scalings(torch.tensor(0.1, dtype=torch.float64), sigma_data=1.0, eps=0.1)
    assert c_skip.item() == 1.0 and c_out.item() == 0.0


def test_edm_scalings_formula():
    t = np.array([0.002, 0.1, 0.5, 2.0, 80.0])
    c_skip, c_out, c_in, c_noise = edm_scalings(torch.from_numpy(t), sigma_data=SD)
    np.testing.assert_allclose(c_skip.numpy(), SD**2 / (t**2 + SD**2), rtol=1e-13)
    np.testing.assert_allclose(c_out.numpy(), t * SD / np.sqrt(t**2 + SD**2), rtol=1e-13)
    np.testing.assert_allclose(c_in.numpy(), 1 / np.sqrt(t**2 + SD**2), rtol=1e-13)
    np.testing.assert_allclose(c_noise.numpy(), np.log(t) / 4, rtol=1e-13)
    # EDM's unit-variance design: Var(c_in x_t) = 1 and the effective training target has unit variance
    np.testing.assert_allclose((c_in**2).numpy() * (SD**2 + t**2), 1.0, rtol=1e-12)


def test_edm_denoiser_uses_edm_scalings():
    class Zero(torch.nn.Module):
        def forward(self, x, c_noise):
            return torch.zeros_like(x)

    d = EDMDenoiser(Zero())
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.tensor([0.002, 0.1, 0.5, 2.0, 80.0], dtype=torch.float64)
    # with F = 0, D(x, t) = c_skip(t) x
    np.testing.assert_allclose(d(x, t).numpy(), (SD**2 / (t**2 + SD**2))[:, None].numpy() * x.numpy(), rtol=1e-13)


def test_network_receives_preconditioned_inputs():
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, c_noise):
            seen["x"], seen["c_noise"] = x.clone(), c_noise.clone()
            return torch.ones_like(x)

    m = ConsistencyModel(Spy())
    x = torch.randn(3, 2, dtype=torch.float64)
    t = torch.tensor([0.01, 1.0, 10.0], dtype=torch.float64)
    out = m(x, t)
    c_in = 1 / torch.sqrt(t**2 + SD**2)
    torch.testing.assert_close(seen["x"], c_in[:, None] * x)
    torch.testing.assert_close(seen["c_noise"], torch.log(t) / 4)
    c_skip = SD**2 / ((t - EPS) ** 2 + SD**2)
    c_out = SD * (t - EPS) / torch.sqrt(SD**2 + t**2)
    torch.testing.assert_close(out, c_skip[:, None] * x + c_out[:, None])


@pytest.mark.parametrize("t", [0.001, 0.0, 80.5, 1000.0])
def test_time_outside_range_raises(cm, t):
    with pytest.raises(ValueError, match=r"\[eps, T\]"):
        cm(torch.zeros(4, 2), t)


def test_time_partly_outside_range_raises(cm):
    with pytest.raises(ValueError, match=r"\[eps, T\]"):
        cm(torch.zeros(3, 2), torch.tensor([0.5, 1.0, 100.0]))


@pytest.mark.parametrize("shape", [(3,), (5, 1), (1, 5)])
def test_wrong_time_shape_raises(cm, shape):
    with pytest.raises(ValueError, match="shape"):
        cm(torch.zeros(5, 2), torch.full(shape, 0.5))


def test_edm_denoiser_range_check():
    d = EDMDenoiser(make_mlp("tiny"))
    with pytest.raises(ValueError):
        d(torch.zeros(2, 2), 200.0)
