"""Training speed on several processes, side by side in one run: ``python -m cmedu.bench ddp``.

Prints MNIST training images/s (EDM loss on the U-Net, forward + backward + Adam, the ``Trainer``'s own step) for
1 process x 1 thread, 1 process x 2 threads and 2 processes x 1 thread (``torchrun``, DDP on gloo). Each row runs in
fresh processes: the MNIST training set is loaded, a few steps warm up, then the steps of ``--seconds`` are timed.

What it means: on a CPU the 2 processes share the cores that 1 process x 2 threads also uses, so the comparison is
DDP's split of the batch (plus a gradient all-reduce through gloo per step) against PyTorch's intra-op threads on
the same cores. On a GPU node each process drives its own GPU, the all-reduce goes over NVLink or PCIe (NCCL), and
P GPUs give close to P times one GPU's images/s when each GPU's share of the batch keeps it busy. Ratios are
meaningful only within one run: a shared machine's speed drifts.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time

import torch

from . import distributed

ROWS = ((1, 1), (1, 2), (2, 1))  # (processes, threads per process)


def _worker(args):
    """One row: train and print rank 0's images/s as JSON (run under torchrun for several processes)."""
    from .data import load_images
    from .nets import make_unet
    from .parameterization import EDMDenoiser
    from .training import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    with distributed.process_group("cpu"):
        data = load_images("mnist", args.data_root)
        torch.manual_seed(0)
        model = EDMDenoiser(make_unet(args.preset, in_ch=1, img_size=data.shape[-1]))
        trainer = Trainer(model, data, TrainConfig(method="edm", steps=10**9, batch_size=args.batch_size, lr=1e-4))
        for _ in trainer.run(steps=args.warmup, progress=False):
            pass
        start, t0 = trainer.step, time.perf_counter()
        for _ in trainer.run(seconds=args.seconds, progress=False):  # every rank stops when rank 0's time is up
            pass
        seconds = time.perf_counter() - t0
        if distributed.rank() == 0:
            steps = trainer.step - start
            print(json.dumps(dict(steps=steps, seconds=seconds, images_per_s=steps * args.batch_size / seconds)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(processes: int, threads: int, preset="fast", batch_size=64, seconds=6.0, warmup=2, data_root=None):
    """images/s of one row, from fresh processes."""
    worker = ["-m", "cmedu.bench_ddp", "--worker", "--threads", str(threads), "--preset", preset, "--batch-size",
              str(batch_size), "--seconds", str(seconds), "--warmup", str(warmup)]
    if data_root:
        worker += ["--data-root", str(data_root)]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
               str(_free_port()), *worker]
    else:
        cmd = [sys.executable, *worker]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), CMEDU_NO_PROGRESS="1")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode or not lines:
        raise RuntimeError(f"{processes} process(es) x {threads} thread(s) failed:\n"
                           f"{res.stdout[-2000:]}{res.stderr[-3000:]}")
    return json.loads(lines[-1])


def run_ddp(preset="fast", batch_size=64, seconds=6.0, data_root=None, rows=ROWS) -> str:
    lines = [f"MNIST training speed, U-Net '{preset}', global batch {batch_size}, EDM loss, {seconds:g} s per row "
             f"(machine: {os.cpu_count()} CPU cores)",
             f"{'processes':>9s} {'threads each':>12s} {'images/s':>9s} {'x 1x1':>6s} {'steps':>6s}"]
    base = None
    for p, t in rows:
        r = measure(p, t, preset, batch_size, seconds, data_root=data_root)
        base = r["images_per_s"] if (p, t) == (1, 1) else base
        ratio = f"{r['images_per_s'] / base:.2f}" if base else "-"
        lines.append(f"{p:>9d} {t:>12d} {r['images_per_s']:>9.1f} {ratio:>6s} {r['steps']:>6d}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cmedu.bench_ddp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="fast", help="U-Net preset (default fast, the MNIST CPU preset)")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (default 64)")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per row (default 6)")
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/raw/*.gz (default: as `cmedu train`)")
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    print(run_ddp(args.preset, args.batch_size, args.seconds, args.data_root))


if __name__ == "__main__":
    main()
