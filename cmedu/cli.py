"""Command line: ``python -m cmedu {train,sample,eval,train-classifier} ...`` (also installed as ``cmedu``).

    python -m cmedu train --data gmm --method ct --out runs/gmm-ct
    python -m cmedu sample --ckpt runs/gmm-ct/checkpoint.pt --nfe 2 --n 1000 --out samples.png
    python -m cmedu eval --ckpt runs/gmm-ct/checkpoint.pt --nfe 1 2

Every command drives the library's own code: ``train`` builds a network from ``cmedu.nets``,
wraps it (``EDMDenoiser`` or ``ConsistencyModel``) and iterates ``Trainer.run``; rerunning it
with the same ``--out`` resumes from ``DIR/checkpoint.pt``.
"""
import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .nets import MLP, MLP_PRESETS, UNET_PRESETS, UNet, make_mlp, make_unet
from .parameterization import ConsistencyModel, EDMDenoiser
from .profiles import progress_disabled
from .recipes import toy_config
from .toy import DATASETS
from .training import METHODS, TrainConfig, Trainer, check_checkpoint_format

IMAGE_DATA = ("mnist",)
TOY_DATA = DATASETS
DATA = IMAGE_DATA + TOY_DATA
PRESETS = tuple(UNET_PRESETS)  # the MLP has the same three names
assert set(PRESETS) == set(MLP_PRESETS)

# Defaults per kind of data. 2-D: the tuned settings of the 2-D notebooks (cmedu.recipes); MNIST: a U-Net recipe.
_TOY = toy_config("cd", "cpu")
DEFAULTS = {
    "toy": dict(batch_size=_TOY.batch_size, lr=_TOY.lr, warmup=_TOY.warmup, cosine_decay=_TOY.cosine_decay,
                ema_decay=_TOY.ema_decay, preset="small"),
    "mnist": dict(steps=20000, batch_size=128, lr=2e-4, warmup=1000, cosine_decay=False, ema_decay=0.999,
                  preset="small"),
}
MODEL_CLASSES = {"EDMDenoiser": EDMDenoiser, "ConsistencyModel": ConsistencyModel}


# -- shared helpers -----------------------------------------------------------------------------
def _setup(args):
    """Threads and device from the common options."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but CUDA is not available here; use --device cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def _seed_global(seed: int, step: int):
    """Seed torch's global RNG (used by dropout) from (seed, step).

    The Trainer's own generator is checkpointed, the global RNG is not; re-seeding it before
    every step makes a resumed run identical to an uninterrupted one.
    """
    torch.manual_seed((seed * 1_000_003 + step) % 2**63)


def build_net(net_config: dict):
    """Rebuild the network of a checkpoint from its stored constructor arguments."""
    if "in_ch" in net_config:
        return UNet(**net_config)
    if "dim" in net_config:
        return MLP(**net_config)
    raise ValueError(f"cannot tell which network the net config {net_config} belongs to")


def load_checkpoint(path) -> dict:
    """A Trainer checkpoint (``DIR/checkpoint.pt``), checked to be one."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one with `python -m cmedu train ... --out DIR`")
    state = torch.load(path, map_location="cpu", weights_only=False)
    check_checkpoint_format(state, str(path))
    return state


def load_model(path, weights: str = "ema", device="cpu"):
    """The trained wrapper (EDMDenoiser or ConsistencyModel) of a checkpoint, in eval mode; and the checkpoint.

    ``weights`` is 'ema' (the exponential moving average, used for sampling) or 'model'
    (the online weights).
    """
    state = load_checkpoint(path)
    cfg = state["config"]
    cls = MODEL_CLASSES.get(state["model_class"])
    if cls is None:
        raise ValueError(f"unknown model class {state['model_class']!r} in {path}")
    model = cls(build_net(state["net_config"]), sigma_data=cfg["sigma_data"], eps=cfg["eps"], T=cfg["T"])
    model.load_state_dict(state[weights])
    return model.to(device).eval().requires_grad_(False), state


def data_of(state) -> str:
    data = state["config"].get("extra", {}).get("data")
    if data not in DATA:
        raise ValueError("this checkpoint does not say which data it was trained on (it was not made by `cmedu train`)")
    return data


def sample_shape(state, n: int):
    net = state["net_config"]
    return (n, net["in_ch"], net["img_size"], net["img_size"]) if "in_ch" in net else (n, net["dim"])


@torch.no_grad()
def generate(model, state, n: int, nfe: int, seed: int = 0, device="cpu", batch_size: int = 1000) -> torch.Tensor:
    """n samples on the CPU: Alg. 1 with ``nfe`` steps for a consistency model, the Heun/Euler
    PF-ODE sampler with ``nfe`` evaluations for an EDM denoiser. Images are clipped to [-1, 1]."""
    from .sampling import prior_sample, sample, teacher_sample

    cfg = state["config"]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        shape = sample_shape(state, min(batch_size, n - start))
        if isinstance(model, ConsistencyModel):
            x = sample(model, shape, nfe, generator=gen, eps=cfg["eps"], T=cfg["T"], device=device)
        else:
            x = teacher_sample(model, prior_sample(shape, cfg["T"], gen, device), nfe, eps=cfg["eps"], T=cfg["T"])
        out.append(x.float().cpu())
    x = torch.cat(out)
    return x.clamp(-1, 1) if data_of(state) in IMAGE_DATA else x


def default_nfe(state) -> int:
    """1 step for a consistency model; 35 evaluations (EDM's 18-step Heun sampler) for a denoiser."""
    return 35 if state["model_class"] == "EDMDenoiser" else 1


# -- train --------------------------------------------------------------------------------------
def _resolve_train_options(args, saved):
    """Command-line value, else the resumed checkpoint's, else the default for this data."""
    kind = "mnist" if args.data in IMAGE_DATA else "toy"
    defaults = dict(DEFAULTS[kind], seed=0, pad32=False, teacher=None)
    defaults.setdefault("steps", toy_config(args.method, "cpu").steps)
    old = {}
    if saved is not None:
        old = {k: saved["config"][k] for k in ("steps", "batch_size", "lr", "warmup", "cosine_decay", "ema_decay", "seed")}
        old.update(saved["config"].get("extra", {}))
    opts = {}
    for key, default in defaults.items():
        given = getattr(args, key)
        opts[key] = given if given is not None else old.get(key, default)
    return opts


def _load_teacher(path, data, img_size, device):
    teacher, state = load_model(path, "ema", device)
    if state["model_class"] != "EDMDenoiser":
        raise ValueError(f"--teacher {path} is a {state['model_class']} checkpoint; CD needs an EDM denoiser "
                         "(train one with `--method edm`)")
    if data_of(state) != data or state["net_config"].get("img_size") != img_size:
        raise ValueError(f"--teacher {path} was trained on {data_of(state)} "
                         f"(net config {state['net_config']}), not on this run's {data} data")
    return teacher


def cmd_train(args):
    device = _setup(args)
    out = Path(args.out)
    ckpt = out / "checkpoint.pt"
    saved = load_checkpoint(ckpt) if ckpt.exists() else None
    if saved is not None and data_of(saved) != args.data:
        raise ValueError(f"{ckpt} holds a run on {data_of(saved)!r}, not {args.data!r}; use another --out folder")
    o = _resolve_train_options(args, saved)
    if o["teacher"]:
        o["teacher"] = os.path.abspath(o["teacher"])  # resumable from any working directory

    torch.manual_seed(o["seed"])  # network initialisation
    if args.data in IMAGE_DATA:
        from .data import load_mnist

        data, _ = load_mnist(args.data_root, train=True, pad_to_32=o["pad32"])
        img_size = data.shape[-1]
        net = make_unet(o["preset"], in_ch=1, img_size=img_size)
        if device.type == "cuda":
            data = data.to(device)  # 60k small images fit easily; saves a copy per step
    else:
        from .toy import make_dataset

        data, img_size = make_dataset(args.data), None
        net = make_mlp(o["preset"], dim=2)
    wrapper = EDMDenoiser if args.method == "edm" else ConsistencyModel
    model = wrapper(net).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)

    teacher = None
    if args.method == "cd":
        if o["teacher"]:
            teacher = _load_teacher(o["teacher"], args.data, img_size, device)
        elif hasattr(data, "denoiser"):
            teacher = data.denoiser  # the exact E[x0 | xt] of the Gaussian mixture (its tensors live on the CPU)
            if device.type != "cpu":
                exact = teacher
                teacher = lambda x, t: exact(x.cpu(), t.cpu() if torch.is_tensor(t) else t).to(x)  # noqa: E731
        else:
            raise ValueError(f"--method cd on {args.data!r} needs --teacher CKPT, an EDM checkpoint trained with "
                             f"`python -m cmedu train --data {args.data} --method edm --out DIR`; only 'gmm' has an "
                             "exact denoiser")

    # 2-D runs start from the notebooks' recipe (curriculum settings included), images from the paper defaults.
    base = toy_config(args.method, "cpu") if args.data in TOY_DATA else TrainConfig(method=args.method)
    config = dataclasses.replace(
        base, steps=o["steps"], batch_size=o["batch_size"], lr=o["lr"], warmup=o["warmup"],
        cosine_decay=o["cosine_decay"], ema_decay=o["ema_decay"], seed=o["seed"],
        extra=dict(data=args.data, preset=o["preset"], pad32=o["pad32"], teacher=o["teacher"]),
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
        print(f"resuming from {ckpt} at step {trainer.step}")
    if trainer.step >= config.steps:
        print(f"nothing to do: {ckpt} is at step {trainer.step} >= --steps {config.steps}")
        return 0

    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {args.method} on {args.data}: {type(net).__name__} '{o['preset']}' ({n_params / 1e6:.2f}M "
          f"parameters), batch {config.batch_size}, steps {trainer.step} -> {config.steps}, device {device}")
    disable = args.quiet or progress_disabled()
    start_step, t0, rec = trainer.step, time.perf_counter(), None
    bar = tqdm(total=config.steps, initial=trainer.step, desc=f"{args.method} {args.data}", disable=disable)
    try:
        _seed_global(config.seed, trainer.step)
        for rec in trainer.run(progress=False, checkpoint=str(ckpt), every=args.every):
            _seed_global(config.seed, rec.step)
            bar.update(1)
            if rec.step % 10 == 0 or rec.step == config.steps:
                ips = (rec.step - start_step) * config.batch_size / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{rec.loss:.4g}", N=rec.num_points, img_s=f"{ips:.0f}")
    except KeyboardInterrupt:
        bar.close()
        print(f"\ninterrupted; checkpoints are saved every {args.every} steps in {ckpt}: rerun the same command to resume")
        return 130
    bar.close()
    elapsed = time.perf_counter() - t0
    ips = (trainer.step - start_step) * config.batch_size / elapsed
    print(f"done: step {trainer.step}/{config.steps}, last loss {rec.loss:.4g}, {ips:.0f} images/s "
          f"({elapsed:.1f} s); checkpoint {ckpt}")
    return 0


# -- sample -------------------------------------------------------------------------------------
def save_samples(x: torch.Tensor, path, data: str):
    """.npy: the raw float32 array; .png: an image grid (MNIST) or a scatter plot (2-D)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, x.numpy().astype(np.float32))
    elif path.suffix == ".png":
        if data in IMAGE_DATA:
            from torchvision.utils import save_image

            save_image((x + 1) / 2, path, nrow=math.ceil(math.sqrt(len(x))), padding=1)
        else:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(5, 5))
            ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.6)
            ax.set(aspect="equal", xlabel="$x_1$", ylabel="$x_2$", title=f"{len(x)} samples ({data})")
            fig.savefig(path, dpi=120, bbox_inches="tight")
            plt.close(fig)
    else:
        raise ValueError(f"--out must end in .npy or .png; got {path}")


def cmd_sample(args):
    device = _setup(args)
    model, state = load_model(args.ckpt, "ema", device)
    nfe = args.nfe or default_nfe(state)
    x = generate(model, state, args.n, nfe, args.seed, device, args.batch_size)
    save_samples(x, args.out, data_of(state))
    print(f"wrote {len(x)} samples of shape {tuple(x.shape[1:])} ({state['model_class']}, NFE {nfe}, step "
          f"{state['step']}) to {args.out}")
    return 0


# -- eval ---------------------------------------------------------------------------------------
def cmd_eval(args):
    device = _setup(args)
    model, state = load_model(args.ckpt, "ema", device)
    data = data_of(state)
    results = {"ckpt": str(args.ckpt), "step": state["step"], "data": data, "method": state["config"]["method"], "nfe": {}}
    print(f"{args.ckpt}: {state['model_class']} ({results['method']}) on {data}, step {state['step']}, {args.n} samples")
    if data in IMAGE_DATA:
        from .classifier import class_histogram, extract_features, frechet_distance, load_classifier

        from .data import load_mnist

        clf = load_classifier(args.classifier, device)
        ref_feats = extract_features(clf, load_mnist(args.data_root, train=False)[0])  # the 10k test images
        floor = clf.metadata.get("fd_floor")
        if floor is not None:
            print(f"FD-MNIST floor (10k train vs 10k test images): {floor:.3f}")
        results["fd_floor"] = floor
    else:
        from .metrics import energy_distance, sliced_wasserstein
        from .toy import make_dataset

        dataset = make_dataset(data)
        g = torch.Generator().manual_seed(args.seed + 1)
        ref, ref2 = dataset.sample(args.n, generator=g), dataset.sample(args.n, generator=g)
        sw0 = sliced_wasserstein(ref2, ref, generator=torch.Generator().manual_seed(0))
        ed0 = energy_distance(ref2, ref)
        print(f"data-vs-data floor: sliced W2 {sw0:.4f}, energy distance {ed0[0]:.2e} ± {ed0[1]:.1e}")
        results["floor"] = {"sliced_wasserstein": sw0, "energy_distance": ed0[0]}
    for nfe in args.nfe or [default_nfe(state)]:
        x = generate(model, state, args.n, nfe, args.seed, device, args.batch_size)
        if data in IMAGE_DATA:
            fd = frechet_distance(extract_features(clf, x), ref_feats)
            hist = class_histogram(clf, x)
            results["nfe"][nfe] = {"fd_mnist": fd, "class_histogram": hist.tolist()}
            print(f"NFE {nfe}: FD-MNIST {fd:.3f}; digits 0-9: " + " ".join(f"{h:.3f}" for h in hist.tolist()))
        else:
            sw = sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))
            ed, se = energy_distance(x, ref)
            results["nfe"][nfe] = {"sliced_wasserstein": sw, "energy_distance": ed, "energy_distance_se": se}
            print(f"NFE {nfe}: sliced W2 {sw:.4f}, energy distance {ed:.2e} ± {se:.1e}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


# -- train-classifier -----------------------------------------------------------------------------
def cmd_train_classifier(args, argv):
    from .classifier import accuracy, extract_features, frechet_distance, save_classifier, train_classifier
    from .data import load_mnist

    device = _setup(args)
    t0 = time.perf_counter()
    model, _ = train_classifier(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                root=args.data_root, device=str(device), progress=False if args.quiet else None)
    minutes = (time.perf_counter() - t0) / 60
    model = model.cpu().half().float()  # measure exactly the float16 weights that are saved
    acc = accuracy(model, *load_mnist(args.data_root, False))
    # The floor of FD-MNIST: two independent sets of real digits (10k train vs the 10k test images).
    floor = frechet_distance(extract_features(model, load_mnist(args.data_root, True)[0][:10000]),
                             extract_features(model, load_mnist(args.data_root, False)[0]))
    command = "python -m cmedu " + " ".join(shlex.quote(a) for a in argv)
    save_classifier(model, args.out, test_accuracy=acc, fd_floor=floor, command=command, epochs=args.epochs,
                    seed=args.seed, minutes=round(minutes, 2), torch=str(torch.__version__),
                    threads=torch.get_num_threads(), device=str(device))
    print(f"test accuracy {acc:.4f} (10,000 test images); FD-MNIST floor (10k train vs 10k test) {floor:.3f}; "
          f"{minutes:.1f} min; saved {args.out}")
    return 0


# -- parser -------------------------------------------------------------------------------------
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
                   help="mnist: folder holding MNIST/raw/*.gz (default: $CMEDU_DATA, then the repository's data/, "
                        "then ./data)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="cmedu", formatter_class=fmt,
        description="Consistency models, learned by running them: train, sample and evaluate from the command line.",
        epilog="Run `python -m cmedu COMMAND --help` for the options of one command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train", formatter_class=fmt, help="train an EDM teacher or a consistency model (CD, CT, iCT)",
        description="Train a network with cmedu.training.Trainer and save DIR/checkpoint.pt.\n\n"
                    "Rerunning with the same --out resumes from its checkpoint; options you do not repeat are\n"
                    "taken from the checkpoint (e.g. raise --steps to train longer). A checkpoint of another\n"
                    "network, method or dataset is refused with an error.",
        epilog="examples:\n"
               "  python -m cmedu train --data gmm --method cd --out runs/gmm-cd\n"
               "  python -m cmedu train --data mnist --method edm --preset tiny --out runs/mnist-edm\n"
               "  python -m cmedu train --data mnist --method cd --teacher runs/mnist-edm/checkpoint.pt "
               "--out runs/mnist-cd",
    )
    t.add_argument("--data", required=True, choices=DATA,
                   help="training data: mnist (U-Net on 28x28, or 32x32 with --pad32) or a 2-D toy set "
                        "(MLP): gmm (8-mode ring Gaussian mixture, exact denoiser), moons, spiral, checkerboard")
    t.add_argument("--method", required=True, choices=METHODS,
                   help="edm: denoiser D(x,t) (the teacher for CD, sampled by the PF-ODE); cd: consistency "
                        "distillation from a teacher; ct: consistency training (no teacher, CM curriculum); "
                        "ict: improved consistency training (pseudo-Huber loss, lognormal noise, doubling curriculum)")
    t.add_argument("--out", required=True, help="run folder; holds checkpoint.pt, which is resumed when present")
    t.add_argument("--steps", type=int, default=None,
                   help="total optimizer steps, counted from the start of the run (not additional ones). Default: "
                        "2-D edm/cd 3000, ct/ict 6000; mnist 20000. The CT/iCT curricula and --cosine-decay are "
                        "stretched over this number, so choose it up front; raising it on resume stretches the rest")
    t.add_argument("--batch-size", type=int, default=None, help="examples per step (default: 2-D 512, mnist 128)")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 2-D 1e-3, mnist 2e-4)")
    t.add_argument("--warmup", type=int, default=None,
                   help="steps of linear learning-rate warm-up (default: 2-D 100, mnist 1000)")
    t.add_argument("--cosine-decay", action=argparse.BooleanOptionalAction, default=None,
                   help="anneal the learning rate to 0 over --steps (default: on for 2-D, off for mnist)")
    t.add_argument("--ema-decay", type=float, default=None,
                   help="decay of the weight EMA used for sampling (default: 2-D 0.995, mnist 0.999)")
    t.add_argument("--preset", choices=PRESETS, default=None,
                   help="network size: tiny, small or base. mnist U-Net: 1.2M, 4.7M, 19M parameters; 2-D MLP: "
                        "hidden 64/128/256, 2/3/4 blocks (default small)")
    t.add_argument("--teacher", default=None,
                   help="for --method cd: an EDM checkpoint (from `train --method edm`) on the same data whose EMA "
                        "weights are the teacher. Without it, cd works only on gmm (exact denoiser)")
    t.add_argument("--seed", type=int, default=None, help="seed of initialisation, batches and noise (default 0)")
    t.add_argument("--pad32", action="store_true", default=None,
                   help="mnist only: pad images to 32x32 (the U-Net then works at 32, 16, 8 instead of 28, 14, 7)")
    t.add_argument("--every", type=int, default=1000, help="save the checkpoint every this many steps (default 1000)")
    _data_root(t)
    t.add_argument("--amp", action="store_true",
                   help="GPU only: bfloat16 autocast for the forward passes (faster; ignored on CPU)")
    t.add_argument("--channels-last", action="store_true",
                   help="store conv weights channels-last (faster convolutions on recent GPUs)")
    t.add_argument("--quiet", action="store_true", help="no progress bar (also off when CMEDU_NO_PROGRESS=1)")
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
    return parser


def main(argv=None) -> int:
    """Entry point of ``python -m cmedu`` and the ``cmedu`` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "n", "threads", "every", "epochs", "warmup"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}; got {value}")
    if getattr(args, "nfe", None) is not None and min(np.atleast_1d(args.nfe)) < 1:
        parser.error(f"--nfe must be >= 1; got {args.nfe}")
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "sample":
            return cmd_sample(args)
        if args.command == "eval":
            return cmd_eval(args)
        return cmd_train_classifier(args, argv)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"cmedu {args.command}: error: {e}", file=sys.stderr)
        return 2


__all__ = ["main", "build_parser", "load_model", "load_checkpoint", "generate", "save_samples", "build_net"]
