"""ECT (Geng et al. 2024): the r(t) mapping, the loss against a hand computation, the shared dropout mask,
students that start from the teacher, the EMA ramp-up and time-budgeted runs."""
import math
import time

import pytest
import torch
from torch import nn

from cmedu.losses import ect_loss, ect_r
from cmedu.nets import UNet, make_mlp
from cmedu.parameterization import ConsistencyModel, EDMDenoiser
from cmedu.toy import make_dataset
from cmedu.methods import copy_teacher_weights
from cmedu.training import TrainConfig, Trainer, ema_decay_at


def test_ect_r_against_hand_computation():
    t = torch.tensor([0.01, 0.5, 2.0, 80.0])
    for stage in (0, 1, 3):
        expect = [max(0.0, ti * (1 - 2.0 ** -(stage + 1) * (1 + 8 / (1 + math.exp(ti))))) for ti in t.tolist()]
        assert torch.allclose(ect_r(t, stage), torch.tensor(expect), rtol=1e-5, atol=1e-7)
    # stage 0 maps small t to 0 (the clean image is the target); later stages move r towards t
    assert ect_r(torch.tensor(0.01), 0) == 0
    r = [float(ect_r(torch.tensor(2.0), s)) for s in range(6)]
    assert all(a < b < 2.0 for a, b in zip(r, r[1:]))


class Affine(nn.Module):
    """F(x, c) = a x: simple enough to compute the ECT loss by hand."""

    def __init__(self, a=0.3):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.config = {"a": a}

    def forward(self, x, c_noise):
        return self.a * x


def test_ect_loss_against_hand_computation():
    torch.manual_seed(0)
    model = ConsistencyModel(Affine())
    x0 = torch.randn(64, 3)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    loss = ect_loss(model, x0, stage=2, generator=g1)
    # the same draws by hand: lognormal t, then z
    t = torch.exp(-1.1 + 2.0 * torch.randn(64, generator=g2)).clamp(0.002, 80.0)
    z = torch.randn(x0.shape, generator=g2)
    r = ect_r(t, 2)
    with torch.no_grad():
        online = model(x0 + t[:, None] * z, t)
        inside = r >= 0.002
        target = torch.where(inside[:, None], model(x0 + r.clamp(min=0.002)[:, None] * z, r.clamp(min=0.002)), x0)
        r = torch.where(inside, r, torch.zeros_like(r))
    expect = ((online - target).norm(dim=1) / (t - r)).mean()
    assert inside.any() and not inside.all()  # both branches are exercised
    assert torch.allclose(loss, expect, rtol=1e-5)


def test_ect_loss_gradient_only_through_online_branch():
    model = ConsistencyModel(Affine())
    loss = ect_loss(model, torch.randn(32, 2), stage=1, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert model.net.a.grad is not None and torch.isfinite(model.net.a.grad)


def test_ect_shares_the_dropout_mask():
    """With the same dropout mask at t and r, a model whose output does not depend on t gives zero loss
    wherever r >= eps (the target equals the online output); without it the masks differ."""

    class DropoutOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop, self.config = nn.Dropout(0.5), {}
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x, c_noise):
            return self.drop(self.w * torch.ones_like(x))

    class Const(ConsistencyModel):
        def forward(self, x, t):  # f = F(.) only: the same value at t and r when the dropout mask is the same
            return self.net(x, t)

    model = Const(DropoutOnly()).train()
    x0 = torch.zeros(256, 8)
    torch.manual_seed(0)
    loss = ect_loss(model, x0, stage=5, generator=torch.Generator().manual_seed(1), p_mean=1.0, p_std=0.1)
    assert loss.item() < 1e-4  # r >= eps for every sample here (t ~ e), so online == target exactly


def test_students_start_from_the_teacher():
    torch.manual_seed(0)
    teacher = EDMDenoiser(UNet(base=8, mults=(1, 2), attn_res=(), img_size=8, dropout=0.0))
    for p in teacher.parameters():
        nn.init.normal_(p, std=0.05)  # not the zero-initialised output layers of a fresh network
    student = ConsistencyModel(UNet(base=8, mults=(1, 2), attn_res=(), img_size=8, dropout=0.0))
    data = torch.randn(16, 1, 8, 8)
    for method in ("cd", "ect"):
        tr = Trainer(student, data, TrainConfig(method=method, steps=2, batch_size=4), teacher=teacher)
        x, c = torch.randn(4, 1, 8, 8), torch.full((4,), 0.3)
        for net in (tr.model.net, tr.ema.net):
            assert torch.equal(net(x, c), teacher.net(x, c))  # F of the student = F of the teacher at step 0
        assert tr.target is None or torch.equal(tr.target.net(x, c), teacher.net(x, c))
    other = ConsistencyModel(UNet(base=16, mults=(1, 2), attn_res=(), img_size=8))
    with pytest.raises(ValueError, match="preset"):
        copy_teacher_weights(other, teacher)
    # from scratch when asked
    fresh = ConsistencyModel(UNet(base=8, mults=(1, 2), attn_res=(), img_size=8, dropout=0.0))
    tr = Trainer(fresh, data, TrainConfig(method="cd", steps=2, batch_size=4, init_from_teacher=False), teacher=teacher)
    assert not torch.equal(tr.model.net(x, c), teacher.net(x, c))


def test_ema_rampup():
    assert ema_decay_at(0.999, 10, None) == 0.999
    # EDM: half-life = rampup * images seen, in steps: rampup * step -> beta = 0.5 ** (1 / (rampup * step))
    assert math.isclose(ema_decay_at(0.999, 100, 0.05), 0.5 ** (1 / 5))
    assert ema_decay_at(0.999, 10**6, 0.05) == 0.999
    # after 900 steps the initial weights keep a small share (not the 41% of a fixed 0.999)
    share = 1.0
    for k in range(1, 901):
        share *= ema_decay_at(0.999, k, 0.05)
    assert share < 1e-6 and 0.999**900 > 0.4


def _toy_trainer(method="ect", steps=50, **cfg):
    torch.manual_seed(0)
    gmm = make_dataset("gmm")
    return Trainer(ConsistencyModel(make_mlp("tiny")), gmm, TrainConfig(method=method, steps=steps, batch_size=64, **cfg))


def test_ect_stages_rise_evenly():
    tr = _toy_trainer(steps=60, ect_stages=6)
    assert [tr.stage_at(k) for k in (0, 9, 10, 30, 59)] == [0, 0, 1, 3, 5]
    recs = list(tr.run(steps=3, progress=False))
    assert all(math.isfinite(r.loss) for r in recs)


def test_plan_steps_and_time_limit():
    tr = _toy_trainer(steps=10**6)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    steps = tr.plan_steps(minutes=0.02)
    assert tr.config.steps == steps >= 1 and tr.step == 0
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())  # timing left no trace
    t0 = time.perf_counter()
    recs = list(tr.run(progress=False, seconds=0.3))
    assert time.perf_counter() - t0 < 5 and 0 < len(recs) < steps  # stopped on time, before the planned total
    with pytest.raises(ValueError, match="minutes"):
        tr.plan_steps(0)


@pytest.mark.skipif(__import__("os").environ.get("CMEDU_SLOW") != "1", reason="slow test: set CMEDU_SLOW=1")
def test_ect_vs_cd_consistency_error_on_the_mixture():
    """ECT against CD on the 2-D mixture, 3000 steps each, consistency error against the exact flow map.

    Measured (one thread): ECT is closer than CD at small t (0.013 vs 0.024 at t = 0.1) but about twice
    as far for t >= 0.5 (0.08-0.13 vs 0.04). Why not below CD everywhere: here ECT starts from scratch (the
    exact 2-D teacher has no weights to start from, which is ECT's main advantage on images) and learns
    from single-sample targets like CT, while CD follows the exact teacher's ODE steps.
    """
    from cmedu import metrics, recipes, schedules

    gmm = make_dataset("gmm")
    ts = schedules.karras_sigmas(12, 0.01, 80.0)
    err = {}
    for method in ("cd", "ect"):
        tr = recipes.toy_trainer(method, "cpu", steps=3000)
        tr.fit(progress=False)
        err[method] = metrics.consistency_error(tr.ema, gmm, ts.tolist(), n=2000,
                                                generator=torch.Generator().manual_seed(2))
    small = (ts > 0.02) & (ts <= 0.1)
    assert (err["ect"][small] < err["cd"][small]).all()
    assert (err["ect"] < 4 * err["cd"] + 0.01).all()
