"""``python -m cmedu export``: a run's EMA weights in float16, with the two-step tau chosen on held-out data.

The tau search follows notebook 05: a grid of taus, the same noise for each, a score on data the
final evaluation does not use (MNIST: FD-MNIST against the last 10,000 *training* images; CIFAR-10:
FID against ``--tau-ref`` random training images, 10,000 by default; 2-D: sliced W2 against fresh samples of the dataset).
The chosen tau is stored in the file, and ``sample``/``eval --nfe 2`` use it, so two steps are not
worse than one by accident.
"""
import os
import shlex

import torch

from ..checkpoints import (CHECKPOINT_FORMAT, IMAGE_DATA, MODEL_CLASSES, data_of, export_weights, load_checkpoint,
                           load_model, sample_shape)
from ..continuous import TrigFlowModel
from ..parameterization import ConsistencyModel
from ..sampling import prior_sample, search_two_step_tau
from .common import setup

TAU_GRID = (0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 3.0, 5.0)


def held_out_score(data: str, data_root=None, classifier=None, device="cpu", n_ref: int = 10000):
    """score(samples) -> float, lower is better, on data that the final metric does not use.

    CIFAR-10 uses ``n_ref`` random training images (Inception runs at a few images/s per CPU thread, so a
    CPU run may want fewer than the default 10,000)."""
    if data == "cifar10":
        from ..data import load_cifar10
        from ..fid import fid_from_stats, fid_stats

        train = load_cifar10(data_root, train=True)[0]  # the stand-in is stored in class order: draw at random
        held_out = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n_ref]]
        ref = fid_stats(held_out, device=device)
        return lambda x: fid_from_stats(*fid_stats(x.clamp(-1, 1), device=device), *ref)
    if data in IMAGE_DATA:
        from ..classifier import extract_features, frechet_distance, load_classifier
        from ..data import load_mnist

        clf = load_classifier(classifier, device)
        ref = extract_features(clf, load_mnist(data_root, train=True)[0][-10000:])
        return lambda x: frechet_distance(extract_features(clf, x.clamp(-1, 1)), ref)
    from ..metrics import sliced_wasserstein
    from ..toy import make_dataset

    ref = make_dataset(data).sample(10000, generator=torch.Generator().manual_seed(12345))
    return lambda x: sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))


def cmd_export(args, argv):
    device = setup(args)
    state = load_checkpoint(args.ckpt)
    if state["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"{args.ckpt} is already an exported file; export takes a run folder or its checkpoint.pt")
    data = data_of(state)
    taus, scores = {}, {}
    # every consistency model but MeanFlow, which samples on its own time grid (a denoiser has no two-step tau)
    wrapper = MODEL_CLASSES.get(state["model_class"])
    if wrapper in (ConsistencyModel, TrigFlowModel) and args.tau_n > 0:
        model, _ = load_model(args.ckpt, "ema", device)
        cfg = state["config"]
        x_T = prior_sample(sample_shape(state, args.tau_n), cfg["T"], torch.Generator().manual_seed(args.seed), device)
        score = held_out_score(data, args.data_root, args.classifier, device, args.tau_ref)
        grid = args.tau_grid or TAU_GRID
        best, scores = search_two_step_tau(model, x_T, score, grid, cfg["eps"], cfg["T"], args.seed + 1)
        taus["2"] = [best]
        against = {"mnist": "FD-MNIST vs the last 10k training images",
                   "cifar10": f"FID vs {args.tau_ref} random training images"}.get(data, "sliced W2 vs fresh data")
        print(f"two-step tau search on held-out data ({against}, {args.tau_n} samples):")
        print("  " + "  ".join(f"{t:g}: {s:.4g}" for t, s in scores.items()) + f"  -> tau = {best:g}")
    extra = state["config"].get("extra", {})
    record = dict(train_command=extra.get("command"), wall_minutes=round(extra.get("wall_seconds", 0.0) / 60, 1),
                  machine=extra.get("machine"), export_command="python -m cmedu " + " ".join(map(shlex.quote, argv)),
                  tau_scores=scores)
    export_weights(state, args.out, taus, **record)
    size = os.path.getsize(args.out) / 2**20
    print(f"wrote {args.out} ({size:.2f} MiB, float16 EMA weights, step {state['step']}, "
          f"{record['wall_minutes']} min of training on {record['machine']})")
    return 0


def add_parser(sub, fmt, common, data_root):
    x = sub.add_parser(
        "export", formatter_class=fmt, help="write a run's EMA weights in float16, with its chosen two-step tau",
        description="Write the EMA weights of a training run in float16 (the files in checkpoints/), with the\n"
                    "training command, wall time and machine. For a consistency model, first choose the tau of\n"
                    "two-step sampling on held-out data (MNIST: FD-MNIST against the last 10k training images;\n"
                    "2-D: sliced W2 against fresh data); `sample` and `eval --nfe 2` then use it.",
        epilog="example:\n  python -m cmedu export --ckpt runs/mnist-cd --out checkpoints/mnist_cd.pt",
    )
    x.add_argument("--ckpt", required=True, help="run folder or its checkpoint.pt (written by `cmedu train`)")
    x.add_argument("--out", required=True, help="the .pt file to write")
    x.add_argument("--tau-n", type=int, default=2000,
                   help="samples per tau in the two-step tau search (default 2000; 0 skips the search)")
    x.add_argument("--tau-grid", type=float, nargs="+", default=None,
                   help=f"the taus to try (default: {' '.join(map(str, TAU_GRID))})")
    x.add_argument("--tau-ref", type=int, default=10000,
                   help="cifar10: random training images the search's FID compares with (default 10000)")
    x.add_argument("--seed", type=int, default=0, help="seed of the search's noise (default 0)")
    x.add_argument("--classifier", default=None, help="mnist: classifier weights (default: the repository's)")
    data_root(x)
    common(x)
    return x
