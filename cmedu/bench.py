"""Benchmarks: ``python -m cmedu.bench toy --profile cpu --out DIR`` (the 2-D path),
``python -m cmedu.bench unet`` (U-Net images/s per preset, see ``cmedu.bench_unet``) and
``python -m cmedu.bench ddp`` (MNIST training images/s on 1 or 2 processes, see ``cmedu.bench_ddp``).

Trains CD, CT, iCT and the continuous-time sCD (from a pretrained 2-D diffusion model), sCT and MeanFlow on
the Gaussian mixture, then prints, for each method and number of
function evaluations (NFE): the sliced Wasserstein distance and the energy distance (± s.e.)
to fresh data, the consistency error against the exact flow map, and the wall time of
drawing 10,000 samples; the exact teacher (Euler / Heun on the true denoiser) is listed at
1, 2, 5 and 35 NFE. Samples are written as DIR/<method>_nfe<k>.npy, data as DIR/data.npy.
"""
import argparse
import os
import time

import numpy as np
import torch

from . import metrics, sampling
from .profiles import PROFILES
from .recipes import toy_pretrained_denoiser, toy_trainer
from .toy import make_dataset

N_SAMPLES = 10_000
CONSISTENCY_TIMES = (0.1, 0.5, 2.0, 10.0, 80.0)


def _timed(fn, repeats: int = 3):
    """Best-of-``repeats`` wall time of fn() and its last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def run_toy(profile: str, out: str, seed: int = 0, nfes=(1, 2)):
    os.makedirs(out, exist_ok=True)
    gmm = make_dataset("gmm")
    g = torch.Generator().manual_seed(seed + 1000)
    data = gmm.sample(N_SAMPLES, g)
    x_T = sampling.prior_sample((N_SAMPLES, 2), generator=g)
    np.save(os.path.join(out, "data.npy"), data.numpy())
    rows = []

    def record(name, nfe, xs, seconds, cons):
        ed, ed_se = metrics.energy_distance(xs, data)
        sw = metrics.sliced_wasserstein(xs, data, generator=torch.Generator().manual_seed(0))
        rows.append((name, nfe, sw, ed, ed_se, cons, seconds))
        np.save(os.path.join(out, f"{name}_nfe{nfe}.npy"), xs.numpy())

    for nfe in (1, 2, 5, 35):
        xs, sec = _timed(lambda: sampling.teacher_sample(gmm.denoiser, x_T, nfe))
        record("teacher", nfe, xs, sec, float("nan"))
    pretrained = toy_pretrained_denoiser(profile, seed)  # sCD starts from it, as sCM does
    for method in ("cd", "ct", "ict", "scd", "sct", "meanflow"):
        trainer = toy_trainer(method, profile, seed=seed, init=pretrained if method == "scd" else None)
        t0 = time.perf_counter()
        trainer.fit()
        print(f"trained {method}: {trainer.step} steps in {time.perf_counter() - t0:.1f} s", flush=True)
        f = trainer.ema.eval()
        cons = metrics.consistency_error(f, gmm, CONSISTENCY_TIMES, n=2000,
                                         generator=torch.Generator().manual_seed(seed)).mean().item()
        for nfe in nfes:
            xs, sec = _timed(lambda: sampling.sample_from(f, x_T, nfe, generator=torch.Generator().manual_seed(seed)))
            record(method, nfe, xs, sec, cons)
    return rows


def format_table(rows) -> str:
    lines = [f"{'method':8} {'NFE':>4} {'sliced W2':>10} {'energy dist ± s.e.':>22} {'cons. err':>10} {'10k samples [ms]':>17}"]
    for name, nfe, sw, ed, se, cons, sec in rows:
        lines.append(f"{name:8} {nfe:4d} {sw:10.4f} {ed:12.5f} ± {se:7.5f} {cons:10.4f} {1000 * sec:17.2f}")
    t35 = next(r[6] for r in rows if r[0] == "teacher" and r[1] == 35)
    cd1 = next(r[6] for r in rows if r[0] == "cd" and r[1] == 1)
    lines.append(f"sampling time ratio teacher 35-NFE / CD 1-step (same run): {t35 / cd1:.1f}x")
    lines.append(f"  per evaluation: exact teacher (closed-form mixture denoiser) {1000 * t35 / 35:.2f} ms, "
                 f"CD network {1000 * cd1:.2f} ms; with a teacher network as costly as the CD network the "
                 f"ratio would be the NFE ratio, 35x")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cmedu.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["toy", "unet", "ddp"],
                        help="toy: quality and sampling time on the 2-D Gaussian mixture; unet: U-Net images/s per preset; "
                             "ddp: MNIST training images/s, 1 process x 1 or 2 threads vs 2 processes (torchrun)")
    parser.add_argument("--profile", choices=PROFILES, default="cpu", help="training sizes (smoke: seconds)")
    parser.add_argument("--out", default="bench-out", help="folder for the .npy samples and table.txt")
    parser.add_argument("--seed", type=int, default=0, help="seed of training and sampling")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: per-thread figures)")
    parser.add_argument("--heun-batch", type=int, default=1000,
                        help="unet: batch of the one-step vs 35-NFE Heun timing (0 skips it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.task == "ddp":
        from .bench_ddp import run_ddp

        print(run_ddp())
        return
    if args.task == "unet":
        from .bench_unet import run_unet

        print(run_unet(heun_batch=args.heun_batch))
        return
    torch.manual_seed(args.seed)
    table = format_table(run_toy(args.profile, args.out, args.seed))
    print(table)
    with open(os.path.join(args.out, "table.txt"), "w") as fh:
        fh.write(table + "\n")


if __name__ == "__main__":
    main()
