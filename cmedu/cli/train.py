"""``python -m cmedu train``: build the network, wrap it, plan the steps for a time budget, run ``Trainer.run``.

Under ``torchrun --nproc_per_node P -m cmedu train ...`` every process runs this command (``cmedu.distributed``):
``--batch-size`` is the global batch, rank 0 prints and writes the checkpoint, and every rank resumes from it.
"""
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import distributed
from ..checkpoints import IMAGE_DATA, build_net, data_of, load_checkpoint, load_model
from ..nets import MLP_PRESETS, UNET_PRESETS, make_mlp, make_unet
from ..parameterization import EDMDenoiser
from ..profiles import progress_disabled
from ..recipes import toy_config
from ..methods import DISTILLATION_METHODS, TEACHER_METHODS, model_class, net_options, student_net_config
from ..training import TrainConfig, Trainer
from .common import TOY_DATA, command_line, describe_machine, seed_global, setup

PRESETS = tuple(UNET_PRESETS)  # the MLP has tiny/small/base; 'fast' is a U-Net preset only
assert set(MLP_PRESETS) <= set(PRESETS)

# Defaults per kind of data. 2-D: the tuned settings of the 2-D notebooks (cmedu.recipes); MNIST: a U-Net recipe.
_TOY = toy_config("cd", "cpu")
DEFAULTS = {
    "toy": dict(batch_size=_TOY.batch_size, lr=_TOY.lr, warmup=_TOY.warmup, cosine_decay=_TOY.cosine_decay,
                ema_decay=_TOY.ema_decay, preset="small"),
    "image": dict(steps=20000, batch_size=128, lr=5e-4, warmup=200, cosine_decay=True, ema_decay=0.999,
                  ema_rampup=0.05, preset="fast"),
}
# Students that start from the teacher's weights fine-tune: a lower learning rate and no warm-up.
STUDENT_DEFAULTS = {"image": dict(lr=1e-4, warmup=0)}
TRAIN_KEYS = ("steps", "batch_size", "lr", "warmup", "cosine_decay", "ema_decay", "ema_rampup", "seed")

def _resolve_train_options(args, saved):
    """Command-line value, else the resumed checkpoint's, else the default for this data."""
    kind = "image" if args.data in IMAGE_DATA else "toy"
    defaults = dict(dict(seed=0, pad32=False, teacher=None, ema_rampup=None, from_scratch=False), **DEFAULTS[kind])
    defaults.setdefault("steps", toy_config(args.method, "cpu").steps if args.method != "ect" else 3000)
    if args.method in TEACHER_METHODS:
        defaults.update(STUDENT_DEFAULTS.get(kind, {}))
    old = {}
    if saved is not None:
        old = {k: saved["config"].get(k) for k in TRAIN_KEYS}
        old["from_scratch"] = not saved["config"].get("init_from_teacher", True)
        old.update(saved["config"].get("extra", {}))
    opts = {}
    for key, default in defaults.items():
        given = getattr(args, key)
        opts[key] = given if given is not None else old.get(key, default)
    return opts


def _load_teacher(path, data, img_size, device, preset=None):
    """The teacher's EDM denoiser and its network preset; ``preset``, when given, must be the teacher's
    (a student that starts from the teacher is built with the teacher's network)."""
    teacher, state = load_model(path, "ema", device)
    if not isinstance(teacher, EDMDenoiser):
        raise ValueError(f"--teacher {path} is a {state['model_class']} checkpoint; {', '.join(TEACHER_METHODS)} "
                         "need an EDM denoiser (train one with `--method edm`)")
    if data_of(state) != data or state["net_config"].get("img_size") != img_size:
        raise ValueError(f"--teacher {path} was trained on {data_of(state)} "
                         f"(net config {state['net_config']}), not on this run's {data} data")
    teacher_preset = state["config"].get("extra", {}).get("preset")
    if preset is not None and teacher_preset is not None and preset != teacher_preset:
        raise ValueError(f"--preset {preset} differs from the teacher's '{teacher_preset}': a student that starts from "
                         f"the teacher has its network; leave out --preset, or pass --from-scratch")
    return teacher, teacher_preset


def _seed_dropout(seed: int, rank: int, step: int):
    """``seed_global`` (dropout's RNG, re-seeded every step), with a stream of its own on each rank > 0, so that the
    ranks' dropout masks are independent; rank 0 keeps the one-process stream."""
    seed_global(seed, step)
    if rank:
        torch.manual_seed(((seed * 1_000_003 + step) * 65_537 + rank) % 2**63)


def _launch_command(argv) -> str:
    """The command for the record: under torchrun, with the launcher's process counts."""
    command = command_line(argv)
    if not distributed.launched():
        return command
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size()))
    nodes = distributed.world_size() // max(per_node, 1)
    return command.replace("python -m cmedu ", f"torchrun --nnodes {nodes} --nproc_per_node {per_node} -m cmedu ", 1)


def cmd_train(args):
    device = setup(args)
    with distributed.process_group(device, getattr(args, "dist_timeout", distributed.DEFAULT_TIMEOUT)) as device:
        return _train(args, device)


def _train(args, device):
    rank, world = distributed.rank(), distributed.world_size()
    say = print if rank == 0 else (lambda *a, **k: None)  # one process speaks for the run
    out = Path(args.out)
    ckpt = out / "checkpoint.pt"
    # Rank 0 reads the checkpoint and sends it to the others: every rank resumes from the same state, and on several
    # machines only rank 0's --out needs to hold it.
    saved = distributed.on_rank0(lambda: load_checkpoint(ckpt) if ckpt.exists() else None)
    if saved is not None and data_of(saved) != args.data:
        raise ValueError(f"{ckpt} holds a run on {data_of(saved)!r}, not {args.data!r}; use another --out folder")
    o = _resolve_train_options(args, saved)
    distributed.check_batch(o["batch_size"], world)  # before any data is loaded
    if o["teacher"]:
        o["teacher"] = os.path.abspath(o["teacher"])  # resumable from any working directory

    torch.manual_seed(o["seed"])  # network initialisation
    if args.data in IMAGE_DATA:
        from ..data import load_images

        data = load_images(args.data, args.data_root, train=True, pad_to_32=o["pad32"])
        img_size = data.shape[-1]
        if device.type == "cuda":
            data = data.to(device)  # 50-60k small images fit easily; saves a copy per step
    else:
        from ..toy import make_dataset

        data, img_size = make_dataset(args.data), None

    teacher = None
    if o["teacher"] and args.method in TEACHER_METHODS:  # ECT uses only its weights, CD and sCD its denoiser too
        teacher, teacher_preset = _load_teacher(o["teacher"], args.data, img_size, device,
                                                None if o["from_scratch"] else args.preset)
        if teacher_preset is not None and not o["from_scratch"]:
            o["preset"] = teacher_preset  # recorded with the run: the student is built with the teacher's network
    elif args.method == "ect" and args.data in IMAGE_DATA and not o["from_scratch"]:
        raise ValueError("--method ect on images starts from a teacher: pass --teacher CKPT (an EDM checkpoint "
                         "trained with `--method edm`), or --from-scratch to train without one")
    if args.method in DISTILLATION_METHODS and teacher is None:
        if hasattr(data, "denoiser"):
            teacher = data.denoiser  # the exact E[x0 | xt] of the Gaussian mixture (its tensors live on the CPU)
            if device.type != "cpu":
                exact = teacher
                teacher = lambda x, t: exact(x.cpu(), t.cpu() if torch.is_tensor(t) else t).to(x)  # noqa: E731
        else:
            raise ValueError(f"--method {args.method} on {args.data!r} needs --teacher CKPT, an EDM checkpoint trained "
                             f"with `python -m cmedu train --data {args.data} --method edm --out DIR`; only 'gmm' has an "
                             "exact denoiser")

    if hasattr(teacher, "net") and not o["from_scratch"]:
        # a student that starts from the teacher has the teacher's network (a flow map: with a second time input)
        net = build_net(student_net_config(args.method, teacher.net.config))
    elif args.data in IMAGE_DATA:
        net = make_unet(o["preset"], in_ch=data.shape[1], img_size=img_size, **net_options(args.method))
    else:
        net = make_mlp(o["preset"], dim=2, **net_options(args.method))
    model = model_class(args.method)(net).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)

    # 2-D runs start from the notebooks' recipe (curriculum settings included), images from the paper defaults.
    base = toy_config(args.method, "cpu") if args.data in TOY_DATA else TrainConfig(method=args.method)
    config = dataclasses.replace(
        base, steps=o["steps"], batch_size=o["batch_size"], lr=o["lr"], warmup=o["warmup"],
        cosine_decay=o["cosine_decay"], ema_decay=o["ema_decay"], ema_rampup=o["ema_rampup"], seed=o["seed"],
        init_from_teacher=not o["from_scratch"],
        extra=dict(data=args.data, preset=o["preset"], pad32=o["pad32"], teacher=o["teacher"],
                   minutes=args.minutes if saved is None else saved["config"].get("extra", {}).get("minutes")),
    )
    amp = None
    if args.amp:
        if device.type == "cuda":
            amp = torch.bfloat16
        else:
            print("note: --amp is ignored on CPU (float32 keeps CPU runs exact and deterministic)", file=sys.stderr)
    trainer = Trainer(model, data, config, teacher=teacher, device=device, amp_dtype=amp)
    if saved is not None:
        trainer.load_state_dict(saved)  # ValueError if the checkpoint is from another model or method
        say(f"resuming from {ckpt} at step {trainer.step} of {config.steps}"
            + (f" on {world} processes" if world > 1 else ""))
    elif args.minutes is not None and args.steps is None:  # an explicit --steps wins; --minutes then only caps the wall time
        _seed_dropout(config.seed, rank, 0)
        steps = trainer.plan_steps(args.minutes)  # timed on every rank, rank 0's plan broadcast
        say(f"planned {steps} steps to fit --minutes {args.minutes:g} (timed on this machine); the schedules "
            "run their full course over them, and rerunning this command resumes towards the same total")
    if trainer.step >= config.steps:
        say(f"nothing to do: {ckpt} is at step {trainer.step} >= --steps {config.steps}")
        return 0

    n_params = sum(p.numel() for p in model.parameters())
    say(f"training {args.method} on {args.data}: {type(net).__name__} '{o['preset']}' ({n_params / 1e6:.2f}M "
        f"parameters), batch {config.batch_size}, steps {trainer.step} -> {config.steps}, device {device}"
        + (f", {world} processes ({config.batch_size // world} examples each, {_dist_backend()})" if world > 1 else ""))
    disable = args.quiet or progress_disabled() or rank != 0
    start_step, t0, rec = trainer.step, time.perf_counter(), None
    wall0 = config.extra.get("wall_seconds", 0.0) if saved is None else saved["config"]["extra"].get("wall_seconds", 0.0)
    config.extra["machine"] = describe_machine(device) + (f"; {world} processes" if world > 1 else "")
    config.extra["world_size"] = world  # of the latest invocation; resume_commands lists each launch
    command = _launch_command(getattr(args, "argv", []))
    if saved is None:
        config.extra["command"] = command
    else:  # the command that started the run stays its record; a resume with other options is listed after it
        config.extra["command"] = saved["config"]["extra"].get("command")
        later = list(saved["config"]["extra"].get("resume_commands", []))
        config.extra["resume_commands"] = later + [command] if command not in [config.extra["command"], *later] else later
    limit = None if args.minutes is None else 60 * args.minutes
    bar = tqdm(total=config.steps, initial=trainer.step, desc=f"{args.method} {args.data}", disable=disable)
    try:
        _seed_dropout(config.seed, rank, trainer.step)
        for rec in trainer.run(progress=False, checkpoint=str(ckpt), every=args.every, seconds=limit):
            _seed_dropout(config.seed, rank, rec.step)
            config.extra["wall_seconds"] = wall0 + time.perf_counter() - t0  # stored with the next save
            bar.update(1)
            if rec.step % 10 == 0 or rec.step == config.steps:
                elapsed = time.perf_counter() - t0
                ips = (rec.step - start_step) * config.batch_size / elapsed
                post = dict(loss=f"{rec.loss:.4g}", img_s=f"{ips:.0f}")
                if rec.num_points:
                    post["N"] = rec.num_points
                if args.method == "ect":
                    post["stage"] = rec.stage
                if limit is not None:
                    post["left"] = f"{max(limit - elapsed, 0) / 60:.1f}min"
                bar.set_postfix(post)
    except KeyboardInterrupt:
        bar.close()
        say(f"\ninterrupted; checkpoints are saved every {args.every} steps in {ckpt}: rerun the same command to resume")
        return 130
    except RuntimeError as e:
        if world == 1 or not distributed.is_peer_failure(e):
            raise
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already: torchrun's SIGTERM must not cut the report
        bar.close()  # a collective failed: another process died or timed out
        print(f"cmedu train: error: rank {rank} of {world} stopped at step {trainer.step}: another process failed or "
              f"was killed (torchrun's report and its log name it). {_last_checkpoint(ckpt)}\n  cause: "
              f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}", file=sys.stderr)
        return 1
    bar.close()
    elapsed = time.perf_counter() - t0
    ips = (trainer.step - start_step) * config.batch_size / max(elapsed, 1e-9)
    if rec is None or trainer.step < config.steps:
        say(f"time budget of {args.minutes:g} min reached at step {trainer.step} of {config.steps}; saved {ckpt}. "
            "Rerun the same command to continue")
        return 0
    say(f"done: step {trainer.step}/{config.steps}, last loss {rec.loss:.4g}, {ips:.0f} images/s "
        f"({elapsed:.1f} s); checkpoint {ckpt}")
    return 0



def _dist_backend() -> str:
    return distributed.dist.get_backend() if distributed.active() else "one process"


def _last_checkpoint(ckpt: Path) -> str:
    """What a failed run leaves: the last checkpoint (written atomically, so never half-written) and how to go on."""
    if not ckpt.exists():
        return f"No checkpoint was written yet ({ckpt})."
    try:
        step = load_checkpoint(ckpt)["step"]
    except ValueError as e:
        return str(e)
    return f"The last checkpoint {ckpt} (step {step}) is intact: rerun the same command to resume."
