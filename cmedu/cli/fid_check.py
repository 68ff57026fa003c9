"""``python -m cmedu fid-check``: FID between CIFAR-10's training and test images, the check of ``cmedu.fid``.

With the TF-FID Inception, FID(50,000 training images, 10,000 test images) of the original CIFAR-10
files is about 3.15. Another Inception, another resize or another input range moves it by far more
than its sampling noise, so the number says whether ``cmedu.fid`` computes the FID of the papers.

On a CPU the Inception network reads about 5 images per second per thread: 60,000 images take
hours. The features are saved in chunks next to the statistics files (``cmedu.fid.fid_stats``),
so rerunning the same command continues where the last run stopped, and statistics already
computed (e.g. the test set's by ``eval --fid-stats``) are read back.
"""
from pathlib import Path

import torch

from .common import command_line, describe_machine, setup, write_json

PAPER_VALUE = 3.15  # FID(train 50k, test 10k) of the original files with the TF-FID Inception


def add_parser(sub, fmt, common, data_root):
    p = sub.add_parser(
        "fid-check", formatter_class=fmt, help="FID of CIFAR-10's training vs test images (checks cmedu.fid)",
        description="FID between CIFAR-10's training images and its 10,000 test images with cmedu.fid.\n"
                    f"On the original files and all 50,000 training images it should be about {PAPER_VALUE};\n"
                    "on the JPEG-75 stand-in the number is labelled so. Resumable: rerun the same command.",
        epilog="example:\n  python -m cmedu fid-check --data-root ../shared/data --threads 2",
    )
    p.add_argument("--n-train", type=int, default=50000,
                   help="training images, drawn at random (seed 0) when fewer than 50,000 (default 50000)")
    p.add_argument("--stats-dir", default="runs/fid-stats",
                   help="folder of the cached statistics and of the feature chunks (default runs/fid-stats)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    data_root(p)
    common(p)


def cmd_fid_check(args):
    from ..data import cifar10_source, load_cifar10
    from ..fid import fid_from_stats, fid_stats

    device = setup(args)
    sets = {}
    for train in (True, False):
        source = cifar10_source(args.data_root, train)
        images = load_cifar10(args.data_root, train)[0]
        n = len(images)
        if train and args.n_train < n:  # the stand-in is stored in class order: a random subset
            images = images[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:args.n_train]]
        split = "train" if train else "test"
        stem = f"cifar10-{split}-n{len(images)}" + ("" if len(images) == n else "-random")
        print(f"{split}: {len(images):,} images of {source.label}; statistics in {args.stats_dir}/{stem}.npz")
        stats = fid_stats(images, device=device, cache=Path(args.stats_dir) / f"{stem}.npz")
        sets[split] = (len(images), source.label, stats)
    value = fid_from_stats(*sets["train"][2], *sets["test"][2])
    (n_train, label, _), (n_test, _, _) = sets["train"], sets["test"]
    print(f"FID(train {n_train:,}, test {n_test:,}) = {value:.3f} on {label} (the original files, 50k vs 10k: "
          f"about {PAPER_VALUE})")
    if args.json:
        write_json(args.json, {"fid": value, "n_train": n_train, "n_test": n_test, "data": label,
                               "reference_value_original_files": PAPER_VALUE, "machine": describe_machine(device),
                               "command": command_line(args.argv)})
    return 0
