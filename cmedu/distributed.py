"""Training on several processes with ``torchrun`` and ``torch.distributed``: the process group, and the batch split.

    torchrun --nproc_per_node 2 -m cmedu train --data mnist --method edm --batch-size 128 --out runs/mnist-edm

``torchrun`` (PyTorch's launcher; it also does multi-machine rendezvous) starts one process per GPU (or per CPU
share) and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``. ``init`` joins them into a process group: NCCL on CUDA,
gloo on the CPU. The ``Trainer`` then wraps its loss in ``DistributedDataParallel`` (see ``cmedu.training``).

A P-process run is the same computation as a one-process run with the same global batch and seed, split:
every rank draws the *global* batch and all per-example noise from the shared, identically seeded generator and
keeps its own rows (``shard``; the draws in ``cmedu.losses`` and ``cmedu.continuous`` use ``global_batch`` and
``local_rows``). So all generators stay in step, and only the network passes are divided. Draws cost little
next to the network, so nothing is lost by drawing for everyone.

Without ``torchrun`` nothing here is active: ``global_batch(x) == x.shape[0]`` and ``local_rows(x)`` keeps all rows.
"""
import datetime
import os
import signal
import threading
from contextlib import contextmanager

import torch
import torch.distributed as dist

# Seconds a collective waits for the other processes before it fails (the process group's timeout; NCCL's watchdog
# then aborts). On one machine torchrun itself stops the others within ~1 s when a process dies (it polls its workers
# every 0.1 s); this bound is for the cases torchrun cannot see, e.g. a machine that vanishes from a 2-node run.
DEFAULT_TIMEOUT = 600

_SHARD = None  # (rank, world size) while a rank computes its share of the global batch


def launched() -> bool:
    """Whether torchrun (or another launcher that sets WORLD_SIZE) started this process among several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors, gloo for CPU tensors (the backends PyTorch recommends for each)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init(device: torch.device, timeout: float = DEFAULT_TIMEOUT) -> torch.device:
    """Join torchrun's process group (a no-op without torchrun) and return this process's device.

    On CUDA each process takes the GPU ``cuda:LOCAL_RANK`` (one process per GPU, as DDP expects); choose the GPUs
    with ``CUDA_VISIBLE_DEVICES``.
    """
    device = torch.device(device)
    if not launched():
        return device
    if device.type == "cuda":
        if device.index is not None and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
            raise ValueError(f"--device {device} under torchrun: each process uses the GPU cuda:LOCAL_RANK; pass "
                             "--device cuda and choose the GPUs with CUDA_VISIBLE_DEVICES")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device), timeout=datetime.timedelta(seconds=timeout))
    return device


class PeerFailure(RuntimeError):
    """This process was stopped because another process of the run failed (or the run was cancelled)."""


def _stopped_by_launcher(signum, frame):
    raise PeerFailure(f"rank {rank()}: stopped (SIGTERM): another process of this run failed or the run was "
                      "cancelled; torchrun's report names the failed rank")


def close():
    """Leave the process group (ends NCCL's watchdog cleanly)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(device, timeout: float = DEFAULT_TIMEOUT):
    """``init`` on entry (yields this process's device); on exit, ``close`` the group if this call created it.

    Inside, a SIGTERM (torchrun sends one to the other processes when one fails) ends this process with a message
    rather than silently.
    """
    created = launched() and not (dist.is_available() and dist.is_initialized())
    handler = launched() and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stopped_by_launcher) if handler else None
    try:
        yield init(device, timeout)
    finally:
        if handler:
            signal.signal(signal.SIGTERM, previous)
        if created:
            close()


def check_batch(batch_size: int, world: int = None):
    """A ValueError unless the global batch splits evenly over the processes.

    Equal slices matter: DDP averages the ranks' gradients, and the average of the ranks' batch means is the
    global batch mean only when every rank holds the same number of examples.
    """
    world = world_size() if world is None else world
    if batch_size % world:
        lo, hi = batch_size // world * world, -(-batch_size // world) * world
        raise ValueError(f"--batch-size {batch_size} is the global batch and must split evenly over {world} processes; "
                         f"use a multiple of {world}, e.g. {lo or world} or {hi}")


def rows(n: int, rank_: int = None, world: int = None) -> slice:
    """This rank's rows of a global batch of ``n``: the r-th of ``world`` equal, contiguous slices."""
    rank_, world = rank() if rank_ is None else rank_, world_size() if world is None else world
    check_batch(n, world)
    k = n // world
    return slice(rank_ * k, (rank_ + 1) * k)


@contextmanager
def shard(rank_: int, world: int):
    """While active, ``global_batch`` and ``local_rows`` describe rank ``rank_``'s share of a ``world``-times larger
    batch: the loss functions draw noise for the global batch and keep this rank's rows."""
    global _SHARD
    previous, _SHARD = _SHARD, (rank_, world) if world > 1 else None
    try:
        yield
    finally:
        _SHARD = previous


def global_batch(x) -> int:
    """The global batch size of the local batch ``x`` (a tensor or a size): ``len(x)`` times the number of shards."""
    n = x.shape[0] if torch.is_tensor(x) else int(x)
    return n * _SHARD[1] if _SHARD else n


def local_rows(x) -> slice:
    """This rank's rows of a tensor drawn for the global batch of the local batch ``x`` (all rows outside ``shard``)."""
    if not _SHARD:
        return slice(None)
    n = x.shape[0] if torch.is_tensor(x) else int(x)
    return slice(_SHARD[0] * n, (_SHARD[0] + 1) * n)


def is_peer_failure(e: BaseException) -> bool:
    """Whether ``e`` says a collective failed because another process died or timed out. gloo reports a dead peer
    as a plain RuntimeError ("Connection reset by peer"), hence the look at the message."""
    if isinstance(e, (dist.DistError, PeerFailure)):
        return True
    signs = ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out", "Timed out")
    return isinstance(e, RuntimeError) and any(s in str(e) for s in signs)


def broadcast(value, src: int = 0):
    """Rank ``src``'s Python value on every rank (``value`` itself in one process)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_rank0(fn):
    """``fn()`` run on rank 0 only, and its result on every rank; an exception it raises is raised on every rank
    (so that no rank is left waiting for the others). E.g. reading the checkpoint: only rank 0 needs its disk."""
    if not active():
        return fn()
    out = (None, None)
    if rank() == 0:
        try:
            out = (fn(), None)
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            out = (None, e)
    result, error = broadcast(out)
    if error is not None:
        raise error
    return result


def broadcast_flag(flag: bool, device="cpu") -> bool:
    """Rank 0's ``flag`` on every rank (e.g. "the time budget is spent"), so that all ranks take the same branch.
    ``device``: where the process group's tensors live (CUDA for NCCL)."""
    if not active():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the ranks (a NaN anywhere makes it NaN everywhere: the NaN guard stops all ranks)."""
    if not active():
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def barrier():
    if active():
        dist.barrier()


__all__ = ["DEFAULT_TIMEOUT", "PeerFailure", "launched", "active", "rank", "world_size", "local_rank", "backend_for",
           "init", "close", "process_group", "check_batch", "rows", "shard", "global_batch", "local_rows",
           "is_peer_failure", "broadcast", "on_rank0", "broadcast_flag", "mean_over_ranks", "barrier"]
