"""Training on two processes with torchrun (DistributedDataParallel on gloo, CPU) computes what one process computes.

One torchrun launch serves every test (it starts three Python processes, the slow part): this file is its worker
script (``python -m torch.distributed.run --nproc_per_node 2 tests/test_ddp.py OUT``). The worker trains 20 steps of
each method, a control run whose loss bypasses DDP, the NaN guard, the batch check, the time budget and two
``cmedu train`` runs (a fresh one, and a resume of a one-process run); last, a long ``cmedu train`` run whose rank 1
the test kills: the other rank must stop within a bounded time, and the checkpoint must survive.

Tolerance: after 20 steps the model, EMA and target network, each as one vector, differ from the one-process run's
by at most 1e-5 of their norm (seen: <= 1e-6), and every single tensor by at most 1e-4 (seen: <= 3e-5, in small
GroupNorm biases, where Adam's step size amplifies rounding). It is not bitwise: DDP averages the two ranks'
gradients, a different order of float additions than one mean over the batch. The two ranks agree with each other
exactly. The networks have no dropout: dropout masks are drawn per rank and cannot match a one-process run's.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
STEPS = 20
IMAGE_METHODS = ("edm", "cd", "ct", "ect")  # a small U-Net on 8 MNIST digits (14x14) per step
TOY_METHODS = ("ict", "scd", "sct", "meanflow")  # the tiny MLP on the 2-D mixture, 64 points per step
RTOL = 1e-5  # ||2 processes - 1 process|| <= RTOL ||1 process||, per tensor
KILL_WITHIN = 30  # seconds from killing rank 1 until torchrun has stopped the run (it polls every 0.1 s)
TOY_CLI = ["--data", "gmm", "--method", "meanflow", "--preset", "tiny", "--batch-size", "64", "--no-cosine-decay",
           "--quiet", "--threads", "1"]
LAUNCH_TIMEOUT = 600  # seconds; a hang fails the test instead of blocking the suite (generous: shared CI machines)


# -- the runs both sides make ---------------------------------------------------------------------------------------

def build(method, images):
    """A Trainer of ``method``, the same in every process (dropout-free networks; see the module docstring)."""
    from cmedu.methods import model_class, net_options
    from cmedu.nets import UNet, make_mlp
    from cmedu.parameterization import EDMDenoiser
    from cmedu.toy import make_dataset
    from cmedu.training import TrainConfig, Trainer

    def unet():
        return UNet(in_ch=1, base=8, mults=(1, 2), num_res=1, attn_res=(), dropout=0.0, img_size=14)

    teacher = None
    if method in IMAGE_METHODS:
        if method in ("cd", "ect"):  # a random EDM network as the teacher: the students start from it
            torch.manual_seed(1)
            teacher = EDMDenoiser(unet()).requires_grad_(False)
        torch.manual_seed(0)
        net, data, batch = unet(), images, 8
    else:
        torch.manual_seed(0)
        net, data, batch = make_mlp("tiny", **net_options(method)), make_dataset("gmm"), 64
        teacher = data.denoiser if method == "scd" else None
    config = TrainConfig(method=method, steps=STEPS, batch_size=batch, lr=2e-3, ema_decay=0.9, seed=0)
    return Trainer(model_class(method)(net), data, config, teacher=teacher)


def tensors(trainer):
    out = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    out.update((f"ema.{k}", v) for k, v in trainer.ema.state_dict().items())
    if trainer.target is not None:
        out.update((f"target.{k}", v) for k, v in trainer.target.state_dict().items())
    return out


# -- the worker (run by torchrun) -----------------------------------------------------------------------------------

def worker(out: Path):
    torch.set_num_threads(1)
    from cmedu import distributed
    from cmedu.cli import main
    from cmedu.training import TrainConfig, Trainer

    with distributed.process_group("cpu"):
        rank, facts = distributed.rank(), {}
        (out / f"pid.rank{rank}").write_text(str(os.getpid()))  # for the test that kills rank 1
        images = torch.load(out / "images.pt")
        for method in IMAGE_METHODS + TOY_METHODS:
            tr = build(method, images)
            tr.fit()
            torch.save(tensors(tr), out / f"{method}.rank{rank}.pt")
        # Control: the loss computed outside DDP's forward, as a JVP on `ddp.module` would be. DDP then syncs nothing,
        # silently, and the ranks (which see different rows) drift apart: the check of identical ranks catches it.
        tr = build("sct", images)
        tr._forward = tr.loss
        tr.fit(3)
        torch.save(tensors(tr), out / f"nosync.rank{rank}.pt")

        # NaN guard: only rank 1's data is NaN; both ranks must stop at the same step
        tr = build("ct", images)
        if rank == 1:
            tr.data = torch.full_like(images, float("nan"))
        try:
            tr.fit(3)
        except FloatingPointError as e:
            facts["nan"] = [tr.step, str(e)]
        # the global batch must split evenly
        try:
            Trainer(build("edm", images).model, images, TrainConfig(method="edm", batch_size=7))
        except ValueError as e:
            facts["batch"] = str(e)
        # the time plan: rank 1 times 10x slower, yet both take rank 0's plan
        tr = build("ict", images)
        tr.seconds_per_step = lambda **kw: 0.01 * (1 + 9 * rank)
        facts["plan"] = tr.plan_steps(1.0)
        # the wall-time budget: rank 0's clock decides, so both stop after the same step
        tr.config.steps = 10**6
        tr.fit(seconds=0.3 if rank == 0 else 1e9)
        facts["budget_step"] = tr.step
        # the command line: a fresh 2-process run (resumed by 1 process in the test), a 1-process run resumed here
        facts["cli"] = [main(["train", *TOY_CLI, "--steps", "10", "--out", str(out / "two-then-one")]),
                        main(["train", *TOY_CLI, "--steps", "20", "--out", str(out / "one-then-two")])]
        (out / f"facts.rank{rank}.json").write_text(json.dumps(facts))
        # a long run: the test kills rank 1 after its first checkpoint
        main(["train", "--data", "gmm", "--method", "ct", "--preset", "tiny", "--batch-size", "64", "--steps",
              "1000000", "--every", "20", "--quiet", "--threads", "1", "--out", str(out / "killed")])


# -- the tests ------------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, **popen):
    """``torchrun --nproc_per_node 2 ARGS`` as a subprocess, one thread per process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CMEDU_NO_PROGRESS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           *map(str, args)]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def cli(*args):
    from cmedu.cli import main

    assert main(["train", *TOY_CLI, *map(str, args)]) == 0


def mnist_digits(n: int = 256) -> torch.Tensor:
    """The first n MNIST test digits, 2x2-averaged to 14x14, in [-1, 1] (read from the .gz: no full decode)."""
    import gzip

    import numpy as np

    with gzip.open(REPO / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(16 + n * 784)[16:], dtype=np.uint8).reshape(n, 1, 28, 28)
    return torch.nn.functional.avg_pool2d(torch.from_numpy(raw.copy()).float() / 127.5 - 1, 2)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """The one launch: the worker's results per rank in a folder, what happened when rank 1 was killed, and the
    one-process references (computed here while the workers run)."""
    out = tmp_path_factory.mktemp("ddp")
    images = mnist_digits()
    torch.save(images, out / "images.pt")
    cli("--steps", "10", "--out", out / "one-then-two")  # the worker resumes it on two processes
    proc = torchrun("tests/test_ddp.py", out)
    ckpt = out / "killed" / "checkpoint.pt"
    try:
        refs = {}
        for method in IMAGE_METHODS + TOY_METHODS:
            ref = build(method, images)
            ref.fit()
            refs[method] = tensors(ref)
        cli("--steps", "20", "--out", out / "one")
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not ckpt.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the 2-process run ended or hung before its last part:\n{proc.communicate()[0][-5000:]}")
            time.sleep(0.1)
        killed = time.monotonic()
        os.kill(int((out / "pid.rank1").read_text()), signal.SIGKILL)
        log, _ = proc.communicate(timeout=LAUNCH_TIMEOUT)
        fault = dict(elapsed=time.monotonic() - killed, returncode=proc.returncode, log=log, ckpt=ckpt)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out, fault, refs


@pytest.fixture
def run_dir(ddp_run):
    return ddp_run[0]


def load_rank(out, name, rank):
    return torch.load(out / f"{name}.rank{rank}.pt")


def rel_err(a, b) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def assert_matches(ours, ref, what):
    """Each network (model, EMA, target) as one vector within RTOL of its norm, each tensor within 10 RTOL (small
    tensors, e.g. a GroupNorm bias, carry Adam's amplified rounding: up to 3e-5 seen, whole networks <= 1e-6)."""
    assert ours.keys() == ref.keys()
    for part in ("model", "ema", "target"):
        keys = [k for k in ref if k.split(".")[0] == part]
        if keys:
            err = rel_err(torch.cat([ours[k].flatten() for k in keys]), torch.cat([ref[k].flatten() for k in keys]))
            assert err <= RTOL, f"{what} {part} differs by {err:.2e} of its norm"
    errs = {k: rel_err(ours[k], ref[k]) for k in ref}
    worst = max(errs, key=errs.get)
    assert errs[worst] <= 10 * RTOL, f"{what} {worst} differs by {errs[worst]:.2e} of its norm"


@pytest.mark.parametrize("method", IMAGE_METHODS + TOY_METHODS)
def test_two_processes_match_one(ddp_run, run_dir, method):
    """Parameters, sampling EMA and target network after 20 steps: 2 processes x 4 (or 32) = 1 process x 8 (or 64)."""
    two = load_rank(run_dir, method, 0)
    assert_matches(two, ddp_run[2][method], f"{method}, 2 processes vs 1:")
    parts = {k.split(".")[0] for k in two}
    assert parts == ({"model", "ema", "target"} if method in ("cd", "ct") else {"model", "ema"})


def test_gradients_are_synchronised(run_dir):
    """The ranks see different rows, yet their weights are identical: only a gradient all-reduce can do that.
    The control (loss outside DDP's forward, like a JVP on ``ddp.module``) shows that the check catches a missing
    sync."""
    for method in IMAGE_METHODS + TOY_METHODS:
        a, b = load_rank(run_dir, method, 0), load_rank(run_dir, method, 1)
        assert all(torch.equal(a[k], b[k]) for k in a), f"{method}: ranks differ"
    a, b = load_rank(run_dir, "nosync", 0), load_rank(run_dir, "nosync", 1)
    assert not all(torch.equal(a[k], b[k]) for k in a), "without the sync the ranks should differ"


def facts(out):
    return [json.loads((out / f"facts.rank{r}.json").read_text()) for r in (0, 1)]


def test_nan_guard_batch_check_and_budget_agree_across_ranks(run_dir):
    f0, f1 = facts(run_dir)
    assert f0["nan"][0] == f1["nan"][0] == 0 and "loss is nan at step 0" in f0["nan"][1]  # rank 0's own loss was finite
    assert "--batch-size 7" in f0["batch"] and "multiple of 2" in f0["batch"]
    assert f0["plan"] == f1["plan"] == int(0.95 * 60 / 0.01)  # rank 0's plan
    assert f0["budget_step"] == f1["budget_step"] > 0


def test_resume_two_processes_to_one_and_back(run_dir):
    """10 steps on 2 processes + 10 on 1, and 10 on 1 + 10 on 2, end where 20 steps on 1 process end."""
    from cmedu.cli import load_checkpoint

    assert facts(run_dir)[0]["cli"] == [0, 0]
    cli("--steps", "20", "--out", run_dir / "two-then-one")
    ref = load_checkpoint(run_dir / "one")  # 20 steps on one process
    for name, worlds in (("two-then-one", (2, 1)), ("one-then-two", (1, 2))):
        state = load_checkpoint(run_dir / name)
        assert state["step"] == 20 and state["world_size"] == worlds[1]
        for part in ("model", "ema"):
            assert_matches({f"{part}.{k}": v for k, v in state[part].items()},
                           {f"{part}.{k}": v for k, v in ref[part].items()}, f"{name}:")
        extra = state["config"]["extra"]
        commands = [extra["command"], *extra.get("resume_commands", [])]
        assert ["torchrun --nnodes 1 --nproc_per_node 2" in c for c in commands] == [w == 2 for w in worlds]
        assert extra["world_size"] == worlds[1]


def test_a_killed_rank_stops_the_run_and_keeps_the_checkpoint(ddp_run):
    """Rank 1 of a `cmedu train` run, killed after its first checkpoint: the run ends within KILL_WITHIN seconds
    (torchrun polls its workers every 0.1 s and stops the others), with a message, and the checkpoint loads."""
    from cmedu.cli import load_checkpoint

    f = ddp_run[1]
    assert f["returncode"] != 0 and f["elapsed"] < KILL_WITHIN, (f["elapsed"], f["log"][-3000:])
    assert "Signal 9 (SIGKILL)" in f["log"], f["log"][-3000:]
    assert "rank 0 of 2 stopped at step" in f["log"] and "is intact" in f["log"], f["log"][-3000:]
    state = load_checkpoint(f["ckpt"])  # intact: written atomically by rank 0
    assert state["step"] % 20 == 0 and state["step"] > 0 and state["world_size"] == 2


def test_a_shard_draws_the_global_noise_and_keeps_its_rows():
    """In one process: under ``shard(r, 2)`` a loss on rows r of the batch sees exactly the noisy inputs and times
    that the one-process loss gives those rows (the same generator state), and the two halves' mean losses average
    to the whole batch's. (Inputs inside a JVP are functorch wrappers and are not recorded.)"""
    from cmedu import distributed
    from cmedu.continuous import MeanFlowModel, meanflow_loss, scm_loss, TrigFlowModel
    from cmedu.losses import ct_loss, edm_loss
    from cmedu.nets import make_mlp
    from cmedu.parameterization import ConsistencyModel, EDMDenoiser
    from cmedu.schedules import karras_sigmas

    class Recorder(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.seen, self.time_inputs = net, [], net.time_inputs

        def forward(self, x, c):
            if not torch._C._functorch.is_functorch_wrapped_tensor(x):
                self.seen.append(torch.cat([x, c.reshape(len(x), -1)], 1).detach())
            return self.net(x, c)

    torch.manual_seed(0)
    x0 = torch.randn(8, 2)
    for wrapper, loss, kw in ((EDMDenoiser, edm_loss, {}), (ConsistencyModel, ct_loss, dict(model=True)),
                              (TrigFlowModel, scm_loss, {}), (MeanFlowModel, meanflow_loss, {})):
        net = make_mlp("tiny", time_inputs=2 if wrapper is MeanFlowModel else 1)
        seen, losses = [], []
        for r, w in ((0, 1), (0, 2), (1, 2)):
            model = wrapper(Recorder(net))
            rows = distributed.rows(8, r, w)
            args = (model, model, x0[rows], karras_sigmas(10)) if kw.get("model") else (model, x0[rows])
            with distributed.shard(r, w):
                losses.append(loss(*args, generator=torch.Generator().manual_seed(1)).item())
            seen.append(model.net.seen)
        whole, half0, half1 = seen
        assert len(whole) == len(half0) == len(half1) and (whole or wrapper is MeanFlowModel)
        for a, b, c in zip(whole, half0, half1):
            torch.testing.assert_close(torch.cat([b, c]), a, rtol=0, atol=0)
        assert (losses[1] + losses[2]) / 2 == pytest.approx(losses[0], rel=1e-6)


def test_the_global_batch_must_split_evenly():
    from cmedu import distributed

    with pytest.raises(ValueError, match="--batch-size 30 is the global batch.*multiple of 4, e.g. 28 or 32"):
        distributed.check_batch(30, 4)
    assert distributed.rows(12, 2, 3) == slice(8, 12)
    assert distributed.global_batch(torch.zeros(5, 2)) == 5 and distributed.local_rows(5) == slice(None)


if __name__ == "__main__":  # torchrun's worker
    worker(Path(sys.argv[1]))
