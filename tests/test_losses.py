import copy
import math

import numpy as np
import pytest
import torch

from cmedu.losses import cd_loss, ct_loss, edm_loss, get_distance, ict_weighting, l1, pseudo_huber, squared_l2
from cmedu.nets import make_mlp
from cmedu.parameterization import ConsistencyModel, EDMDenoiser
from cmedu.schedules import karras_sigmas

EPS = 0.002


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_distances_formulas():
    g = gen()
    x = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    xn, yn = x.reshape(5, -1).numpy(), y.reshape(5, -1).numpy()
    np.testing.assert_allclose(squared_l2(x, y).numpy(), ((xn - yn) ** 2).sum(1), rtol=1e-12)
    np.testing.assert_allclose(l1(x, y).numpy(), np.abs(xn - yn).sum(1), rtol=1e-12)
    c = 0.3
    np.testing.assert_allclose(
        pseudo_huber(x, y, c).numpy(), np.sqrt(((xn - yn) ** 2).sum(1) + c**2) - c, rtol=1e-12
    )
    assert get_distance("l2") is squared_l2 and get_distance("l1") is l1 and get_distance("pseudo_huber") is pseudo_huber


@pytest.mark.parametrize("shape", [(7, 2), (3, 3, 8, 8), (2, 1, 28, 28)])
def test_pseudo_huber_default_c(shape):
    g = gen(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = x + 1e-3 * torch.randn(shape, generator=g, dtype=torch.float64)
    d = math.prod(shape[1:])
    c = 0.00054 * math.sqrt(d)
    sq = ((x - y) ** 2).reshape(shape[0], -1).sum(1)
    torch.testing.assert_close(pseudo_huber(x, y), torch.sqrt(sq + c**2) - c, rtol=1e-12, atol=0)
    # a different c gives a different value (the default is really used)
    assert not torch.allclose(pseudo_huber(x, y), pseudo_huber(x, y, 2 * c))


def test_pseudo_huber_limits():
    x = torch.zeros(1, 4, dtype=torch.float64)
    c = 0.5
    small = torch.full((1, 4), 1e-4, dtype=torch.float64)
    big = torch.full((1, 4), 1e3, dtype=torch.float64)
    # ~ ||d||^2 / (2c) near 0, ~ ||d|| far away
    assert pseudo_huber(small, x, c).item() == pytest.approx(4e-8 / (2 * c), rel=1e-6)
    assert pseudo_huber(big, x, c).item() == pytest.approx(2e3 - c, rel=1e-6)
    assert pseudo_huber(x, x, c).item() == 0.0


def test_ict_weighting():
    t_n = torch.tensor([0.002, 0.5, 10.0], dtype=torch.float64)
    t_next = torch.tensor([0.01, 0.7, 20.0], dtype=torch.float64)
    torch.testing.assert_close(ict_weighting(t_n, t_next), 1 / (t_next - t_n))


def identity(x, t):
    return x


def test_ct_loss_uses_the_same_noise():
    """With f(x, t) = x / t and x0 = 0: f(0 + t z, t) = z for any t, so the loss is 0 iff both
    points of the pair use the same z (independent noises would give E||z - z'||^2 = 2d)."""
    x0 = torch.zeros(256, 2, dtype=torch.float64)
    sigmas = karras_sigmas(10).double()
    f = lambda x, t: x / t[:, None]  # noqa: E731
    loss = ct_loss(f, f, x0, sigmas, gen())
    assert loss.item() < 1e-20
    # the loss is not trivially zero: with the identity model it is E (t_{n+1} - t_n)^2 ||z||^2 > 0
    assert ct_loss(identity, identity, x0, sigmas, gen()).item() > 1.0


def test_ct_loss_single_interval_closed_form():
    """A two-point grid fixes (t_n, t_{n+1}) = (a, b). With the identity model, online - target
    = (b - a) z, so uniform weighting gives (b - a)^2 E||z||^2 and iCT weighting (b - a) E||z||^2."""
    a, b = 0.5, 1.25
    sigmas = torch.tensor([a, b], dtype=torch.float64)
    x0 = torch.randn(4000, 2, generator=gen(3), dtype=torch.float64)
    uni = ct_loss(identity, identity, x0, sigmas, gen(7), distance="l2", weighting="uniform")
    ict = ct_loss(identity, identity, x0, sigmas, gen(7), distance="l2", weighting="ict")
    assert ict.item() == pytest.approx(uni.item() / (b - a), rel=1e-12)
    assert uni.item() == pytest.approx((b - a) ** 2 * 2, rel=0.05)  # E||z||^2 = d = 2
    l1_loss = ct_loss(identity, identity, x0, sigmas, gen(7), distance="l1")
    assert l1_loss.item() == pytest.approx((b - a) * 2 * math.sqrt(2 / math.pi), rel=0.05)  # E|z_i| = sqrt(2/pi)


def test_ct_loss_step_probs_are_used():
    # all probability on the last interval: the identity-model loss is (t_N - t_{N-1})^2 * 2
    sigmas = karras_sigmas(5).double()
    probs = torch.tensor([0.0, 0.0, 0.0, 1.0])
    x0 = torch.zeros(4000, 2, dtype=torch.float64)
    loss = ct_loss(identity, identity, x0, sigmas, gen(), step_probs=probs)
    assert loss.item() == pytest.approx(((sigmas[4] - sigmas[3]) ** 2 * 2).item(), rel=0.05)


def test_cd_loss_zero_for_exact_flow_map_of_point_mass():
    """Data = a point mass at 0: D = 0, the PF-ODE is x(t) ∝ t (one Euler or Heun step is exact)
    and the exact consistency function is f(x, t) = x eps / t, so CD's loss is 0."""
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    f = lambda x, t: x * EPS / t[:, None]  # noqa: E731
    x0 = torch.zeros(128, 2, dtype=torch.float64)
    sigmas = karras_sigmas(18).double()
    for solver in ("euler", "heun"):
        assert cd_loss(f, f, zero, x0, sigmas, gen(), solver=solver).item() < 1e-24
        # while a wrong model (the identity) has a clearly positive loss
        assert cd_loss(identity, identity, zero, x0, sigmas, gen(), solver=solver).item() > 1.0


def test_cd_loss_small_for_mixture_flow_map(mixture):
    """With the exact mixture denoiser as teacher and the exact flow map as model and target, the
    only error is the teacher's local truncation error: Heun's loss is far below Euler's, which is
    far below a wrong model's."""

    def f(x, t):  # the exact consistency function, one flow_map call per distinct time
        out = torch.empty_like(x)
        for tv in t.unique():
            rows = t == tv
            out[rows] = mixture.flow_map(x[rows], tv.item(), steps=128)
        return out

    x0 = mixture.sample(48, generator=gen(2)).double()
    sigmas = karras_sigmas(18).double()
    heun = cd_loss(f, f, mixture.denoiser, x0, sigmas, gen(4), solver="heun").item()
    euler = cd_loss(f, f, mixture.denoiser, x0, sigmas, gen(4), solver="euler").item()
    wrong = cd_loss(identity, identity, mixture.denoiser, x0, sigmas, gen(4), solver="heun").item()
    assert heun < euler / 10, (heun, euler)
    assert euler < wrong / 10, (euler, wrong)
    assert heun < 1e-4


def test_cd_loss_gradients_only_into_online_model():
    torch.manual_seed(0)
    model = ConsistencyModel(make_mlp("tiny"))
    target = copy.deepcopy(model)  # still requires grad: the loss itself must not send gradient there
    teacher = EDMDenoiser(make_mlp("tiny"))
    x0 = torch.randn(32, 2, generator=gen())
    sigmas = karras_sigmas(18)
    loss = cd_loss(model, target, teacher, x0, sigmas, gen(1), solver="euler")
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(gr is not None for gr in grads)
    assert sum(gr.abs().sum().item() for gr in grads) > 0
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    # the same network as online and target: same loss and same gradient (the target is stop-grad)
    model2 = copy.deepcopy(model)
    model2.zero_grad(set_to_none=True)
    loss2 = cd_loss(model2, model2, teacher, x0, sigmas, gen(1), solver="euler")
    loss2.backward()
    assert loss2.item() == loss.item()
    for p, q in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_ct_loss_gradients_only_into_online_model():
    torch.manual_seed(0)
    model = ConsistencyModel(make_mlp("tiny"))
    target = copy.deepcopy(model)
    x0 = torch.randn(32, 2, generator=gen())
    loss = ct_loss(model, target, x0, karras_sigmas(11), gen(), distance="pseudo_huber", weighting="ict")
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad is None for p in target.parameters())


def test_edm_loss_zero_for_exact_denoiser_of_point_mass(mixture):
    x0 = torch.zeros(64, 2, dtype=torch.float64)
    assert edm_loss(lambda x, t: torch.zeros_like(x), x0, gen()).item() == 0.0
    # for the mixture, the exact denoiser beats an untrained network with the same noise
    torch.manual_seed(0)
    x0 = mixture.sample(512, generator=gen(1))
    exact = edm_loss(mixture.denoiser, x0, gen(2)).item()
    net = EDMDenoiser(make_mlp("tiny"))
    untrained = edm_loss(net, x0, gen(2))
    assert torch.isfinite(untrained) and exact < untrained.item()
    untrained.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unknown_choices_name_allowed_values():
    x0 = torch.zeros(4, 2)
    sigmas = karras_sigmas(5)
    with pytest.raises(ValueError, match=r"l2, l1, pseudo_huber"):
        ct_loss(identity, identity, x0, sigmas, distance="lpips2")
    with pytest.raises(ValueError, match=r"l2, l1, pseudo_huber"):
        get_distance("L2")
    with pytest.raises(ValueError, match=r"uniform, ict"):
        ct_loss(identity, identity, x0, sigmas, weighting="snr")
    with pytest.raises(ValueError, match=r"euler, heun"):
        cd_loss(identity, identity, lambda x, t: x, x0, sigmas, solver="rk4")
    with pytest.raises(ValueError, match=r"l2, l1, pseudo_huber"):
        cd_loss(identity, identity, lambda x, t: x, x0, sigmas, distance="l3")


class _DropoutOnly(torch.nn.Module):
    """F = dropout(w * 1): its output depends only on the dropout mask, not on x or t."""

    def __init__(self):
        super().__init__()
        self.drop, self.config = torch.nn.Dropout(0.5), {}
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, c_noise):
        return self.drop(self.w * torch.ones_like(x))


class _MaskOnly(ConsistencyModel):
    def forward(self, x, t):  # f = F(.) alone: online == target exactly when both passes draw the same mask
        return self.net(x, t)


@pytest.mark.parametrize("method", ["cd", "ct", "ict"])
def test_cd_ct_ict_share_the_dropout_mask(method):
    """The online and target passes use one dropout mask (the CM paper's code; iCT Sec. 3.1), so a model whose
    output is its dropout mask alone has zero loss. With independent masks the loss would be about 0.5 * d."""
    model = _MaskOnly(_DropoutOnly()).train()
    target = model if method == "ict" else copy.deepcopy(model)
    x0, sigmas = torch.zeros(256, 8), karras_sigmas(10)
    torch.manual_seed(0)
    if method == "cd":
        loss = cd_loss(model, target, lambda x, t: x, x0, sigmas, gen(1))
    else:
        loss = ct_loss(model, target, x0, sigmas, gen(1))
    assert loss.item() == 0.0
    # the check can fail: two passes with independent masks differ
    torch.manual_seed(0)
    a, b = model(x0, 1.0), model(x0, 1.0)
    assert squared_l2(a, b).mean().item() > 1.0
