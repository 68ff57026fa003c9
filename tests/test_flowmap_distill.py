"""Flow-map distillation from a teacher's trajectories (cmedu.flowmap_distill) and the `flowmap` training method."""
import numpy as np
import pytest
import torch

from cmedu import distributed
from cmedu.cli import main
from cmedu.flowmap import FlowMapModel
from cmedu.flowmap_distill import (check_sampling_steps, dyadic_levels, dyadic_pairs, flowmap_distill_loss,
                                   teacher_trajectory)
from cmedu.methods import copy_teacher_weights, student_net_config
from cmedu.nets import make_mlp, make_unet
from cmedu.ode import euler_step, heun_solve
from cmedu.parameterization import EDMDenoiser
from cmedu.schedules import karras_sigmas
from cmedu.toy import ring_mixture
from cmedu.training import TrainConfig


def test_dyadic_pairs_are_the_jumps_of_1_2_4_8_16_step_sampling():
    i, j = dyadic_pairs(4000, 17, torch.Generator().manual_seed(0))
    length = j - i
    assert set(length.tolist()) == {1, 2, 4, 8, 16}  # every level is drawn
    assert (i % length == 0).all() and (j <= 16).all()  # each jump starts on a multiple of its length
    share = torch.bincount(length.log2().long(), minlength=5).float() / 4000
    assert (share - 0.2).abs().max() < 0.03  # the levels are equally likely
    assert dyadic_levels(9) == 4
    with pytest.raises(ValueError, match="power of two"):
        dyadic_levels(18)
    with pytest.raises(ValueError, match="divides 16"):
        check_sampling_steps(3, 17)
    check_sampling_steps(8, 17)


@pytest.mark.parametrize("make", [lambda: make_mlp("tiny"), lambda: make_unet("fast", img_size=28)])
def test_a_flow_map_started_from_the_teacher_is_its_euler_step(make):
    """The teacher's weights with zeros for the s-features: X(x, t, s) = x + (s − t) v_teacher(x, t)."""
    torch.manual_seed(0)
    teacher = EDMDenoiser(make())
    for p in teacher.parameters():  # every weight non-zero (the output layer starts at zero)
        p.data.normal_(0, 0.05)
    student = FlowMapModel(type(teacher.net)(**student_net_config("flowmap", teacher.net.config)))
    copy_teacher_weights(student, teacher)
    shape = (3, 2) if isinstance(teacher.net, type(make_mlp("tiny"))) else (3, 1, 28, 28)
    x, t, s = torch.randn(shape) * 5, torch.tensor([5.0, 1.0, 40.0]), torch.tensor([0.5, 0.002, 39.0])
    torch.testing.assert_close(student(x, t, s), euler_step(teacher, x, t, s), atol=2e-5, rtol=1e-5)
    # sCD's student: the teacher's weights in a network with the low-frequency embedding
    scd = EDMDenoiser(type(teacher.net)(**student_net_config("scd", teacher.net.config)))
    copy_teacher_weights(scd, teacher)
    assert scd.net.config["max_freq"] == 2.0 and scd.net.embed.freqs.max() == 2.0
    assert all(torch.equal(w, scd.net.state_dict()[k]) for k, w in teacher.net.state_dict().items() if "freqs" not in k)
    with pytest.raises(ValueError, match="cannot start the student"):
        copy_teacher_weights(FlowMapModel(make_mlp("small", time_inputs=2)), teacher)


class TeacherSolver(FlowMapModel):
    """The teacher's own discrete flow map: Heun steps through the grid points between t and s."""

    def __init__(self, teacher, ts):
        torch.nn.Module.__init__(self)
        self.teacher, self.ts, self.sigma_data, self.eps, self.T = teacher, ts, 0.5, 0.002, 80.0

    def flow(self, x, t, s):
        out = []
        for k in range(len(x)):
            i, j = int((self.ts - t[k]).abs().argmin()), int((self.ts - s[k]).abs().argmin())
            out.append(heun_solve(self.teacher, x[k:k + 1], self.ts[i:j + 1]))
        return torch.cat(out)


def test_the_loss_is_zero_for_the_teachers_own_flow_map_and_not_for_its_euler_step():
    mixture = ring_mixture(std=0.06)
    ts = karras_sigmas(9).flip(0)
    exact = TeacherSolver(mixture.denoiser, ts)
    x0 = torch.zeros(32, 2)
    assert flowmap_distill_loss(exact, mixture.denoiser, x0, torch.Generator().manual_seed(0), points=9,
                                pairs_per_trajectory=4).item() < 1e-10
    euler = FlowMapModel(make_mlp("tiny", time_inputs=2))  # output layer zero: X = x − (t − s) t x/(t² + σ_d²)
    assert flowmap_distill_loss(euler, mixture.denoiser, x0, torch.Generator().manual_seed(0), points=9,
                                pairs_per_trajectory=4).item() > 1e-3
    traj = teacher_trajectory(mixture.denoiser, torch.randn(5, 2) * 80, ts)
    assert traj.shape == (9, 5, 2)


def test_two_shards_average_to_the_whole_batch():
    mixture = ring_mixture(std=0.06)
    torch.manual_seed(0)
    model = FlowMapModel(make_mlp("tiny", time_inputs=2))
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    x0 = torch.zeros(16, 2)
    whole = flowmap_distill_loss(model, mixture.denoiser, x0, torch.Generator().manual_seed(3), 9, 4).item()
    halves = []
    for r in range(2):
        with distributed.shard(r, 2):
            halves.append(flowmap_distill_loss(model, mixture.denoiser, x0[distributed.rows(16, r, 2)],
                                               torch.Generator().manual_seed(3), 9, 4).item())
    assert sum(halves) / 2 == pytest.approx(whole, rel=1e-6)


def test_config_refuses_a_grid_or_batch_that_does_not_fit():
    with pytest.raises(ValueError, match="power of two"):
        TrainConfig(method="flowmap", flowmap_points=18)
    with pytest.raises(ValueError, match="multiple of flowmap_pairs"):
        TrainConfig(method="flowmap", batch_size=12, flowmap_pairs=8)


def test_cli_trains_samples_and_refuses_an_off_grid_step_count(capsys, tmp_path):
    out = tmp_path / "fm"
    assert main(["train", "--data", "gmm", "--method", "flowmap", "--out", str(out), "--steps", "3", "--preset", "tiny",
                 "--batch-size", "16", "--quiet", "--threads", "1"]) == 0
    for k in (1, 4):
        assert main(["sample", "--ckpt", str(out), "--nfe", str(k), "--n", "20", "--out", str(tmp_path / "s.npy")]) == 0
        assert np.load(tmp_path / "s.npy").shape == (20, 2)
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(out), "--nfe", "3", "--n", "20", "--out", str(tmp_path / "s.npy")]) == 2
    assert "divides 16" in capsys.readouterr().err
