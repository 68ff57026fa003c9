"""Command line: ``python -m cmedu {train,sample,eval,export,fid-check,train-classifier} ...`` (also ``cmedu``).

    python -m cmedu train --data gmm --method ct --out runs/gmm-ct
    python -m cmedu sample --ckpt runs/gmm-ct/checkpoint.pt --nfe 2 --n 1000 --out samples.png
    python -m cmedu eval --ckpt runs/gmm-ct/checkpoint.pt --nfe 1 2

Every command drives the library's own code: ``train`` builds a network from ``cmedu.nets``,
wraps it (``EDMDenoiser`` or ``ConsistencyModel``) and iterates ``Trainer.run``; rerunning it
with the same ``--out`` resumes from ``DIR/checkpoint.pt``.
"""
import argparse
import sys

import numpy as np

from ..checkpoints import build_net, generate, load_checkpoint, load_model
from ..methods import METHODS
from .common import DATA
from .evaluate import cmd_eval, cmd_sample, cmd_train_classifier, save_samples
from .export import add_parser as add_export_parser
from .export import cmd_export
from .fid_check import add_parser as add_fid_check_parser
from .fid_check import cmd_fid_check
from .train import PRESETS, cmd_train


def _common(p, sampling=False):
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available, else cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (torch.set_num_threads); default: torch's choice")
    if sampling:
        p.add_argument("--seed", type=int, default=0, help="seed of the noise that is turned into samples (default 0)")
        p.add_argument("--batch-size", type=int, default=256,
                       help="samples generated per network call; lower it if memory runs out (default 256)")


def _data_root(p):
    p.add_argument("--data-root", default=None,
                   help="images: folder holding MNIST/raw/*.gz or cifar-10-batches-py/ (or CIFAR10-jpeg75/*.zip) "
                        "(default: $CMEDU_DATA, then the repository's data/, then ./data; CIFAR-10 also ../shared/data)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="cmedu", formatter_class=fmt,
        description="Consistency models, learned by running them: train, sample and evaluate from the command line.",
        epilog="Run `python -m cmedu COMMAND --help` for the options of one command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train", formatter_class=fmt, help="train an EDM teacher or a consistency model (CD, CT, iCT, ECT)",
        description="Train a network with cmedu.training.Trainer and save DIR/checkpoint.pt.\n\n"
                    "Rerunning with the same --out resumes from its checkpoint; options you do not repeat are\n"
                    "taken from the checkpoint (e.g. raise --steps to train longer). A checkpoint of another\n"
                    "network, method or dataset is refused with an error.",
        epilog="examples:\n"
               "  python -m cmedu train --data gmm --method cd --out runs/gmm-cd\n"
               "  python -m cmedu train --data mnist --method edm --minutes 90 --out runs/mnist-edm\n"
               "  python -m cmedu train --data mnist --method cd --teacher runs/mnist-edm --minutes 45 "
               "--out runs/mnist-cd\n"
               "  torchrun --nproc_per_node 2 -m cmedu train --data mnist --method edm --batch-size 256 "
               "--out runs/mnist-edm-ddp\n"
               "    (2 processes, DDP: gloo on CPU, NCCL on GPUs; --batch-size is the global batch)",
    )
    t.add_argument("--data", required=True, choices=DATA,
                   help="training data: mnist (U-Net on 28x28, or 32x32 with --pad32), cifar10 (3x32x32) or a 2-D toy set "
                        "(MLP): gmm (8-mode ring Gaussian mixture, exact denoiser), moons, spiral, checkerboard")
    t.add_argument("--method", required=True, choices=METHODS,
                   help="edm: denoiser D(x,t) (the teacher for CD, sampled by the PF-ODE); cd: consistency "
                        "distillation from a teacher; ct: consistency training (no teacher, CM curriculum); "
                        "ict: improved consistency training (pseudo-Huber loss, lognormal noise, doubling curriculum); "
                        "ect: easy consistency tuning from a teacher's weights (r(t) mapping, stages over the run); "
                        "scd / sct: continuous-time sCM (TrigFlow) distilled from a teacher / trained without one; "
                        "meanflow: MeanFlow's average velocity u(z, r, t) (no teacher); flowmap: a two-time flow map "
                        "X(x, t, s) regressed on a teacher's own ODE trajectories (sample it with --nfe 1, 2, 4, 8, 16)")
    t.add_argument("--out", required=True, help="run folder; holds checkpoint.pt, which is resumed when present")
    t.add_argument("--steps", type=int, default=None,
                   help="total optimizer steps, counted from the start of the run (not additional ones). Default: "
                        "2-D: the notebooks' recipe per method; images 20000 (or planned from --minutes). The CT/iCT curricula and --cosine-decay are "
                        "stretched over this number, so choose it up front; raising it on resume stretches the rest")
    t.add_argument("--batch-size", type=int, default=None, help="examples per step (default: 2-D 512, images 128)")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 2-D 1e-3; images 5e-4, students that start "
                        "from a teacher 1e-4)")
    t.add_argument("--warmup", type=int, default=None,
                   help="steps of linear learning-rate warm-up (default: 2-D 100; images 200, students 0)")
    t.add_argument("--cosine-decay", action=argparse.BooleanOptionalAction, default=None,
                   help="anneal the learning rate to 0 over --steps (default: on)")
    t.add_argument("--ema-decay", type=float, default=None,
                   help="decay of the weight EMA used for sampling (default: 2-D 0.995; images 0.999 "
                        "with --ema-rampup 0.05)")
    t.add_argument("--preset", choices=PRESETS, default=None,
                   help="network size. image U-Net: fast (0.7M parameters, the CPU preset; default for images), tiny "
                        "1.2M, small 4.7M (the GPU preset), base 19M; 2-D MLP: tiny, small, base = hidden 64/128/256, "
                        "2/3/4 blocks (default small)")
    t.add_argument("--teacher", default=None,
                   help="for --method cd, scd, ect and flowmap: an EDM checkpoint (from `train --method edm`) on the same data "
                        "whose EMA weights are the teacher; the student starts from its weights (unless --from-scratch). "
                        "Without it, cd and scd work only on gmm (exact denoiser)")
    t.add_argument("--seed", type=int, default=None, help="seed of initialisation, batches and noise (default 0)")
    t.add_argument("--pad32", action="store_true", default=None,
                   help="mnist only: pad images to 32x32 (the U-Net then works at 32, 16, 8 instead of 28, 14, 7)")
    t.add_argument("--every", type=int, default=200, help="save the checkpoint every this many steps (default 200)")
    t.add_argument("--minutes", type=float, default=None,
                   help="wall-time budget. A new run without --steps times a few steps on this machine and plans "
                        "--steps so that the whole run (every schedule included) fits in it; each invocation stops "
                        "after at most this many minutes, and rerunning the same command resumes towards the planned "
                        "total")
    t.add_argument("--ema-rampup", type=float, default=None,
                   help="EMA ramp-up ratio: the sampling EMA's half-life is at most this fraction of the images seen "
                        "(EDM's ema_rampup_ratio; default: mnist 0.05, 2-D off)")
    t.add_argument("--from-scratch", action="store_true", default=None,
                   help="cd/ect: start the student from random weights instead of the teacher's")
    _data_root(t)
    t.add_argument("--amp", action="store_true",
                   help="GPU only: bfloat16 autocast for the forward passes (faster; ignored on CPU)")
    t.add_argument("--channels-last", action="store_true",
                   help="store conv weights channels-last (faster convolutions on recent GPUs)")
    t.add_argument("--quiet", action="store_true", help="no progress bar (also off when CMEDU_NO_PROGRESS=1)")
    t.add_argument("--dist-timeout", type=float, default=600, metavar="SECONDS",
                   help="under torchrun: seconds a process waits for the others in a collective before it stops with "
                        "an error (default 600). On one machine torchrun stops the others within a second when a "
                        "process dies; this bounds the wait when a whole machine of a multi-node run is lost")
    _common(t)

    s = sub.add_parser(
        "sample", formatter_class=fmt, help="draw samples from a trained checkpoint",
        description="Draw samples with the EMA weights of a checkpoint: a consistency model uses one- or\n"
                    "multistep consistency sampling (Alg. 1 of the CM paper), an EDM checkpoint the Heun/Euler\n"
                    "PF-ODE sampler. MNIST samples are clipped to [-1, 1].",
    )
    s.add_argument("--ckpt", required=True, help="checkpoint.pt written by `cmedu train` (or its run folder)")
    s.add_argument("--nfe", type=int, default=None,
                   help="network evaluations per sample (default: 1 for a consistency model, 35 for EDM)")
    s.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--out", required=True,
                   help="FILE.npy (float32 array: (n, 1, H, W) for mnist, (n, 2) for 2-D) or FILE.png "
                        "(image grid or scatter plot)")
    _common(s, sampling=True)

    e = sub.add_parser(
        "eval", formatter_class=fmt, help="measure sample quality of a checkpoint",
        description="Generate samples and compare them with real data.\n"
                    "mnist: FD-MNIST (Fréchet distance of classifier features) against the 10k test images,\n"
                    "and the fraction of samples classified as each digit.\n"
                    "2-D: sliced Wasserstein distance and energy distance against fresh data, with the\n"
                    "data-vs-data floor.",
    )
    e.add_argument("--ckpt", required=True, help="checkpoint.pt written by `cmedu train` (or its run folder)")
    e.add_argument("--nfe", type=int, nargs="+", default=None,
                   help="one or more NFE values to evaluate (default: 1 for a consistency model, 35 for EDM)")
    e.add_argument("--n", type=int, default=10000, help="number of samples per NFE (default 10000)")
    e.add_argument("--classifier", default=None,
                   help="mnist: classifier weights (default: the repository's checkpoints/mnist_classifier.pt)")
    e.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    e.add_argument("--fid-stats", default=None,
                   help="cifar10: an .npz file caching the test set's Inception statistics (computed once)")
    e.add_argument("--n-ref", type=int, default=None,
                   help="cifar10: compare with this many random test images instead of all 10,000 (the Inception "
                        "network runs at a few images/s per CPU thread); printed beside every FID")
    _data_root(e)
    _common(e, sampling=True)

    c = sub.add_parser(
        "train-classifier", formatter_class=fmt, help="train the MNIST classifier used by FD-MNIST",
        description="Train cmedu.classifier.MnistClassifier on the 60k MNIST training images, report its\n"
                    "accuracy on the 10k test images and the FD-MNIST floor (10k train vs 10k test images),\n"
                    "and save the weights (float16) with these numbers.",
    )
    c.add_argument("--out", default="checkpoints/mnist_classifier.pt",
                   help="where to save the weights (default checkpoints/mnist_classifier.pt)")
    c.add_argument("--epochs", type=int, default=3, help="passes over the training set (default 3)")
    c.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    c.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule (default 3e-3)")
    c.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation (default 0)")
    _data_root(c)
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(c)
    add_export_parser(sub, fmt, _common, _data_root)
    add_fid_check_parser(sub, fmt, _common, _data_root)
    return parser


def main(argv=None) -> int:
    """Entry point of ``python -m cmedu`` and the ``cmedu`` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    for name in ("steps", "batch_size", "n", "threads", "every", "epochs", "warmup", "tau_n", "n_train"):
        value = getattr(args, name, None)
        low = 0 if name in ("warmup", "tau_n") else 1
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}; got {value}")
    if getattr(args, "minutes", None) is not None and not args.minutes > 0:
        parser.error(f"--minutes must be > 0; got {args.minutes}")
    if getattr(args, "nfe", None) is not None and min(np.atleast_1d(args.nfe)) < 1:
        parser.error(f"--nfe must be >= 1; got {args.nfe}")
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "sample":
            return cmd_sample(args)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "export":
            return cmd_export(args, argv)
        if args.command == "fid-check":
            return cmd_fid_check(args)
        return cmd_train_classifier(args, argv)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"cmedu {args.command}: error: {e}", file=sys.stderr)
        return 2


__all__ = ["main", "build_parser", "load_model", "load_checkpoint", "generate", "save_samples", "build_net"]
