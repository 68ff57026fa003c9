import math
import os

import pytest
import torch

from cmedu.nets import make_mlp
from cmedu.parameterization import ConsistencyModel, EDMDenoiser
from cmedu.toy import make_dataset
from cmedu.checkpoints import check_checkpoint, save_atomic
from cmedu.training import TrainConfig, Trainer, TrainRecord, ema_update


def build(method, preset="tiny", seed=0, data=None, **cfg):
    torch.manual_seed(seed)
    wrapper = EDMDenoiser if method == "edm" else ConsistencyModel
    model = wrapper(make_mlp(preset))
    gmm = make_dataset("gmm")
    cfg = {"steps": 6, "batch_size": 32, **cfg}
    config = TrainConfig(method=method, **cfg)
    teacher = gmm.denoiser if method == "cd" else None
    return Trainer(model, gmm if data is None else data, config, teacher=teacher)


def all_tensors(tr):
    out = dict(("model." + k, v) for k, v in tr.model.state_dict().items())
    out.update(("ema." + k, v) for k, v in tr.ema.state_dict().items())
    if tr.target is not None:
        out.update(("target." + k, v) for k, v in tr.target.state_dict().items())
    return out


@pytest.mark.parametrize("method", ["edm", "cd", "ct", "ict"])
def test_each_method_runs_and_loss_is_finite(method):
    tr = build(method)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    records = list(tr.run(steps=3, progress=False))
    assert [r.step for r in records] == [1, 2, 3]
    assert all(isinstance(r, TrainRecord) and math.isfinite(r.loss) and r.loss >= 0 for r in records)
    assert tr.step == 3
    after = tr.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "parameters did not move"
    if method == "cd":
        assert all(r.num_points == 18 and r.target_decay == 0.95 for r in records)
    if method == "ct":
        assert records[0].num_points == 2  # N(0) = s0
    if method == "ict":
        assert records[0].num_points == 11 and tr.target is None


def test_curricula_follow_schedules():
    tr = build("ct", steps=1000, ct_target="paper")
    assert tr.discretisation(0) == (2, pytest.approx(0.95))
    assert build("ct", steps=1000).discretisation(0)[1] == pytest.approx(0.95 ** 800)  # 'scaled': paper's 800k steps
    assert tr.discretisation(1000)[0] == 151
    tr = build("ict", steps=8000)
    assert [tr.discretisation(k)[0] for k in (0, 999, 1000, 7999, 20000)] == [11, 11, 21, 1281, 1281]


def test_fit_runs_to_config_steps():
    tr = build("ict", steps=4)
    losses = tr.fit()
    assert len(losses) == 4 and tr.step == 4
    assert tr.fit() == []  # already at config.steps


def test_ema_update():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    ema_update(a, b, 0.9)
    torch.testing.assert_close(a.weight, 0.9 * wa + 0.1 * wb)


@pytest.mark.parametrize("method", ["ct", "cd", "ict", "edm"])
def test_resume_is_bit_identical(tmp_path, method):
    straight = build(method, seed=0)
    list(straight.run(steps=6))

    first = build(method, seed=0)
    list(first.run(steps=3))
    ckpt = tmp_path / "ckpt.pt"
    first.save(str(ckpt))

    fresh = build(method, seed=123)  # different initial weights: everything must come from the file
    assert fresh.resume(str(ckpt)) is True
    assert fresh.step == 3
    list(fresh.run(steps=3))
    assert fresh.step == 6

    a, b = all_tensors(straight), all_tensors(fresh)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(straight.generator.get_state(), fresh.generator.get_state())


def test_run_saves_checkpoints(tmp_path):
    ckpt = tmp_path / "sub" / "run.pt"
    tr = build("ct")
    list(tr.run(steps=5, checkpoint=str(ckpt), every=2))
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 5
    assert not build("ct").resume(str(tmp_path / "missing.pt"))


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    tr = build("ct")
    list(tr.run(steps=1))
    tr.save(str(path))
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary files left behind
    old_bytes = path.read_bytes()

    list(tr.run(steps=1))

    def broken_save(obj, f, *args, **kw):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        tr.save(str(path))
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    fresh = build("ct", seed=5)
    assert fresh.resume(str(path)) and fresh.step == 1


def test_save_atomic_creates_folder(tmp_path):
    path = tmp_path / "a" / "b" / "x.pt"
    save_atomic({"v": torch.arange(3)}, str(path))
    assert torch.equal(torch.load(path)["v"], torch.arange(3))
    assert os.listdir(path.parent) == ["x.pt"]


def test_nan_data_raises_naming_step():
    data = torch.full((16, 2), float("nan"))
    tr = build("ct", data=data)
    with pytest.raises(FloatingPointError, match=r"step 0\b"):
        list(tr.run(steps=2))


def test_diverging_lr_raises_naming_step():
    tr = build("ct", lr=1e30, grad_clip=0.0, steps=20)
    with pytest.raises(FloatingPointError) as info:
        list(tr.run())
    assert tr.step >= 1  # some steps succeeded before the blow-up
    assert f"step {tr.step}" in str(info.value)


def test_checkpoint_from_other_model_raises(tmp_path):
    path = str(tmp_path / "tiny.pt")
    tr = build("ct", preset="tiny")
    tr.save(path)
    other = build("ct", preset="small")
    with pytest.raises(ValueError, match="another model"):
        other.resume(path)
    # the model class matters too
    edm = build("edm", preset="tiny")
    with pytest.raises(ValueError, match="another model"):
        edm.resume(path)
    # and the method
    ict = build("ict", preset="tiny")
    with pytest.raises(ValueError, match="method"):
        ict.resume(path)
    with pytest.raises(ValueError, match="not a cmedu training checkpoint"):
        check_checkpoint({"model": {}}, tr.model)


def test_config_errors():
    with pytest.raises(ValueError, match="edm, cd, ct, ict"):
        TrainConfig(method="ddpm")
    with pytest.raises(ValueError, match="euler, heun"):
        TrainConfig(solver="rk4")
    with pytest.raises(ValueError):
        TrainConfig(steps=0)
    assert TrainConfig(method="ict").distance == "pseudo_huber"
    assert TrainConfig(method="ct").distance == "l2"


def test_cd_without_teacher_raises():
    model = ConsistencyModel(make_mlp("tiny"))
    with pytest.raises(ValueError, match="teacher"):
        Trainer(model, make_dataset("gmm"), TrainConfig(method="cd", steps=2))


def test_lr_schedule():
    tr = build("ct", lr=1e-3, warmup=4, cosine_decay=True, steps=10)
    assert tr.lr_at(0) == pytest.approx(1e-3 * 0.25)
    assert tr.lr_at(3) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.3)))
    assert tr.lr_at(10) == pytest.approx(0.0, abs=1e-12)


def test_without_torchrun_there_is_no_ddp():
    """One process: the loss is called directly (no DDP wrapper), and the checkpoint records world size 1.
    Several processes: tests/test_ddp.py."""
    tr = build("ct")
    assert tr.world_size == 1 and tr.rank == 0 and tr._forward == tr.loss
    assert tr.state_dict()["world_size"] == 1
