"""``python -m cmedu sample``, ``eval`` and ``train-classifier``: use a trained checkpoint, or train the judge."""
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import IMAGE_DATA, data_of, default_nfe, generate, load_model
from .common import command_line, setup, write_json


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
    device = setup(args)
    model, state = load_model(args.ckpt, "ema", device)
    nfe = args.nfe or default_nfe(state)
    x = generate(model, state, args.n, nfe, args.seed, device, args.batch_size)
    save_samples(x, args.out, data_of(state))
    print(f"wrote {len(x)} samples of shape {tuple(x.shape[1:])} ({state['model_class']}, NFE {nfe}, step "
          f"{state['step']}) to {args.out}")
    return 0


# -- eval ---------------------------------------------------------------------------------------
def cmd_eval(args):
    device = setup(args)
    model, state = load_model(args.ckpt, "ema", device)
    data = data_of(state)
    results = {"ckpt": str(args.ckpt), "step": state["step"], "data": data, "method": state["config"]["method"], "nfe": {}}
    starts = sorted((state.get("starts") or {}).items())
    print(f"{args.ckpt}: {state['model_class']} ({results['method']}) on {data}, step {state['step']}, {args.n} samples"
          + "".join(f"; {k}-step sampling starts at noise level {v:g}" for k, v in starts))
    score = make_scorer(data, args, device, results)
    for nfe in args.nfe or [default_nfe(state)]:
        x = generate(model, state, args.n, nfe, args.seed, device, args.batch_size)
        results["nfe"][nfe], line = score(x)
        print(f"NFE {nfe}: {line}")
    if args.json:
        write_json(args.json, results)
    return 0


def make_scorer(data: str, args, device, results: dict):
    """score(samples) -> (numbers, printed line) for this dataset; prints the reference it compares with.

    mnist: FD-MNIST against the 10k test images and the digit classes; cifar10: FID (TF-Inception) against
    the 10k test images, labelled with the data source; 2-D: sliced W2 and energy distance against fresh data.
    """
    if data == "mnist":
        from ..classifier import class_histogram, extract_features, frechet_distance, load_classifier
        from ..data import load_mnist

        clf = load_classifier(args.classifier, device)
        ref_feats = extract_features(clf, load_mnist(args.data_root, train=False)[0])  # the 10k test images
        results["fd_floor"] = floor = clf.metadata.get("fd_floor")
        if floor is not None:
            print(f"FD-MNIST floor (10k train vs 10k test images): {floor:.3f}")

        def score(x):
            fd, hist = frechet_distance(extract_features(clf, x), ref_feats), class_histogram(clf, x).tolist()
            return {"fd_mnist": fd, "class_histogram": hist}, f"FD-MNIST {fd:.3f}; digits 0-9: " + " ".join(
                f"{h:.3f}" for h in hist)
        return score
    if data == "cifar10":
        from ..data import cifar10_source, load_cifar10
        from ..fid import fid_from_stats, fid_stats

        source, test = cifar10_source(args.data_root, train=False), load_cifar10(args.data_root, train=False)[0]
        subset = args.n_ref is not None and args.n_ref < len(test)
        if subset:  # the stand-in is stored in class order: a random subset (fixed seed)
            test = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:args.n_ref]]
        ref = fid_stats(test, device=device, cache=args.fid_stats)
        results["reference"] = f"{len(test):,} {'random ' if subset else ''}test images of {source.label}"
        print(f"FID (TF-Inception) against the {results['reference']}")

        def score(x):
            value = fid_from_stats(*fid_stats(x, device=device), *ref)
            return {"fid": value, "n": len(x)}, f"FID {value:.2f} ({len(x)} samples; {source.label})"
        return score
    from ..metrics import energy_distance, sliced_wasserstein
    from ..toy import make_dataset

    g = torch.Generator().manual_seed(args.seed + 1)
    dataset = make_dataset(data)
    ref, ref2 = dataset.sample(args.n, generator=g), dataset.sample(args.n, generator=g)
    sw0, ed0 = sliced_wasserstein(ref2, ref, generator=torch.Generator().manual_seed(0)), energy_distance(ref2, ref)
    print(f"data-vs-data floor: sliced W2 {sw0:.4f}, energy distance {ed0[0]:.2e} ± {ed0[1]:.1e}")
    results["floor"] = {"sliced_wasserstein": sw0, "energy_distance": ed0[0]}

    def score(x):
        sw = sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))
        ed, se = energy_distance(x, ref)
        return ({"sliced_wasserstein": sw, "energy_distance": ed, "energy_distance_se": se},
                f"sliced W2 {sw:.4f}, energy distance {ed:.2e} ± {se:.1e}")
    return score


# -- train-classifier -----------------------------------------------------------------------------
def cmd_train_classifier(args, argv):
    from ..classifier import accuracy, extract_features, frechet_distance, save_classifier, train_classifier
    from ..data import load_mnist

    device = setup(args)
    t0 = time.perf_counter()
    model, _ = train_classifier(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                root=args.data_root, device=str(device), progress=False if args.quiet else None)
    minutes = (time.perf_counter() - t0) / 60
    model = model.cpu().half().float()  # measure exactly the float16 weights that are saved
    acc = accuracy(model, *load_mnist(args.data_root, False))
    # The floor of FD-MNIST: two independent sets of real digits (10k train vs the 10k test images).
    floor = frechet_distance(extract_features(model, load_mnist(args.data_root, True)[0][:10000]),
                             extract_features(model, load_mnist(args.data_root, False)[0]))
    command = command_line(argv)
    save_classifier(model, args.out, test_accuracy=acc, fd_floor=floor, command=command, epochs=args.epochs,
                    seed=args.seed, minutes=round(minutes, 2), torch=str(torch.__version__),
                    threads=torch.get_num_threads(), device=str(device))
    print(f"test accuracy {acc:.4f} (10,000 test images); FD-MNIST floor (10k train vs 10k test) {floor:.3f}; "
          f"{minutes:.1f} min; saved {args.out}")
    return 0

