"""Helpers shared by the command-line commands: device and threads, the command and the machine for records, the
global RNG, the data sets by name, JSON."""
import json
import os
import platform
import shlex

import torch

from ..checkpoints import IMAGE_DATA, write_atomic
from ..toy import DATASETS

TOY_DATA = DATASETS
DATA = IMAGE_DATA + TOY_DATA


def command_line(argv) -> str:
    """The command as typed, for the record in what a command writes: ``python -m cmedu`` and its quoted arguments."""
    return "python -m cmedu " + " ".join(shlex.quote(str(a)) for a in argv)


def describe_machine(device) -> str:
    """Where a command ran, for the record in what it writes: the GPU's name or the CPU threads."""
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads of {os.cpu_count()}, torch {torch.__version__}"


def setup(args):
    """Threads and device from the common options."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but CUDA is not available here; use --device cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def seed_global(seed: int, step: int):
    """Seed torch's global RNG (used by dropout) from (seed, step).

    The Trainer's own generator is checkpointed, the global RNG is not; re-seeding it before
    every step makes a resumed run identical to an uninterrupted one.
    """
    torch.manual_seed((seed * 1_000_003 + step) % 2**63)


def write_json(path, obj):
    """``obj`` as indented JSON in ``path`` (its folder made), atomically: the ``--json`` of eval and fid-check."""
    write_atomic(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))
