"""``python -m cmedu export``: a run's EMA weights in float16, with its sampling choices made on held-out data.

The tau search follows notebook 05: a grid of taus, the same noise for each, a score on data the
final evaluation does not use (MNIST: FD-MNIST against the last 10,000 *training* images; CIFAR-10:
FID against ``--tau-ref`` random training images, 10,000 by default; 2-D: sliced W2 against fresh samples of the dataset).
The chosen tau is stored in the file, and ``sample``/``eval --nfe 2`` use it, so two steps are not
worse than one by accident. Before it, the noise level s at which sampling starts (x = f(s z, s); Alg. 1
has s = T) is chosen the same way (``sampling.search_one_step_start``): a briefly trained model is
often far better from s = 10-20 than from T = 80. Two steps try their tau from T and from that s and
keep the better pair. The starts are stored per NFE too; other NFEs start at T.
"""
import os

import torch

from ..checkpoints import (CHECKPOINT_FORMAT, IMAGE_DATA, MODEL_CLASSES, data_of, export_weights, load_checkpoint,
                           load_model, sample_shape)
from ..continuous import TrigFlowModel
from ..parameterization import ConsistencyModel
from ..sampling import START_GRID, prior_sample, search_one_step_start, search_two_step_tau
from .common import command_line, setup

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
    data = data_of(state)
    taus, starts, scores, start_scores = {}, {}, {}, {}
    # every consistency model but MeanFlow, which samples on its own time grid (a denoiser has no two-step tau)
    wrapper = MODEL_CLASSES.get(state["model_class"])
    if wrapper in (ConsistencyModel, TrigFlowModel) and args.tau_n > 0:
        model, _ = load_model(args.ckpt, "ema", device)
        T, eps = state["config"]["T"], state["config"]["eps"]
        z = prior_sample(sample_shape(state, args.tau_n), 1.0, torch.Generator().manual_seed(args.seed), device)
        score = held_out_score(data, args.data_root, args.classifier, device, args.tau_ref)
        against = {"mnist": "FD-MNIST vs the last 10k training images",
                   "cifar10": f"FID vs {args.tau_ref} random training images"}.get(data, "sliced W2 vs fresh data")
        print(f"search on held-out data ({against}, {args.tau_n} samples)")
        start, start_scores = search_one_step_start(model, z, score, args.start_grid or START_GRID, T)
        print("  one step, start noise level: " + "  ".join(f"{s:g}: {v:.4g}" for s, v in start_scores.items())
              + f"  -> {start:g}")
        # two steps: the tau at T (Alg. 1) and at the one-step start; the better pair wins
        best = []
        for s in sorted({float(T), start}, reverse=True):
            grid = [t for t in (args.tau_grid or TAU_GRID) if t < s]
            tau, by_tau = search_two_step_tau(model, z * s, score, grid, eps, s, args.seed + 1)
            scores[s] = by_tau
            print(f"  two steps from {s:g}, tau: " + "  ".join(f"{t:g}: {v:.4g}" for t, v in by_tau.items())
                  + f"  -> tau = {tau:g}")
            best.append((by_tau[tau], s, tau))
        _, starts["2"], tau = min(best, key=lambda b: b[0])  # the first on a tie: T
        taus["2"], starts["1"] = [tau], start
        print(f"chosen: one step from {start:g}; two steps from {starts['2']:g} with tau = {taus['2'][0]:g}")
    if state["format"] == CHECKPOINT_FORMAT:
        extra = state["config"].get("extra", {})
        record = dict(train_command=extra.get("command"), resume_commands=extra.get("resume_commands", []),
                      wall_minutes=round(extra.get("wall_seconds", 0.0) / 60, 1), machine=extra.get("machine"))
    else:  # an exported file: the same float16 weights, the searches made again
        record = {k: state["record"].get(k) for k in ("train_command", "wall_minutes", "machine")}
        record["resume_commands"] = state["record"].get("resume_commands", [])
        record["first_export_command"] = state["record"].get("first_export_command",
                                                             state["record"].get("export_command"))
    record.update(export_command=command_line(argv),
                  tau_scores=scores.get(starts.get("2"), {}), two_step_scores={str(k): v for k, v in scores.items()},
                  start_scores=start_scores)
    export_weights(state, args.out, taus, starts, **record)
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
    x.add_argument("--ckpt", required=True,
                   help="run folder or its checkpoint.pt (written by `cmedu train`); or an exported file, whose "
                        "weights are kept while the searches are made again")
    x.add_argument("--out", required=True, help="the .pt file to write")
    x.add_argument("--tau-n", type=int, default=2000,
                   help="samples per tau in the two-step tau search (default 2000; 0 skips the search)")
    x.add_argument("--tau-grid", type=float, nargs="+", default=None,
                   help=f"the taus to try (default: {' '.join(map(str, TAU_GRID))})")
    x.add_argument("--start-grid", type=float, nargs="+", default=None,
                   help="noise levels at which one-step sampling may start, searched before tau (default: "
                        f"{' '.join(f'{s:g}' for s in START_GRID)}; `--start-grid 80` keeps Alg. 1's start at T)")
    x.add_argument("--tau-ref", type=int, default=10000,
                   help="cifar10: random training images the search's FID compares with (default 10000)")
    x.add_argument("--seed", type=int, default=0, help="seed of the search's noise (default 0)")
    x.add_argument("--classifier", default=None, help="mnist: classifier weights (default: the repository's)")
    data_root(x)
    common(x)
    return x
