"""Checkpoint files: their formats, atomic writes, and loading trained models from them.

Two file formats, both read by ``load_model``:

- ``cmedu-trainer-v1``: everything a run needs to resume (online, EMA and target weights,
  optimizer, generator), written to ``DIR/checkpoint.pt`` by ``python -m cmedu train``;
- ``cmedu-weights-v1``: the EMA weights alone in float16, plus the config, the chosen
  two-step tau and a record of how the file was made (``python -m cmedu export``). The
  files in ``checkpoints/`` are of this kind.

A file that is truncated, not a checkpoint at all, or from another model gives a
``ValueError`` that names the file, never a traceback from the unpickler.
"""
import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from .continuous import MeanFlowModel, TrigFlowModel
from .flowmap import FlowMapModel
from .flowmap_distill import check_sampling_steps
from .nets import MLP, UNet
from .parameterization import ConsistencyModel, EDMDenoiser

CHECKPOINT_FORMAT = "cmedu-trainer-v1"
WEIGHTS_FORMAT = "cmedu-weights-v1"
FORMATS = (CHECKPOINT_FORMAT, WEIGHTS_FORMAT)
MODEL_CLASSES = {cls.__name__: cls for cls in (EDMDenoiser, ConsistencyModel, TrigFlowModel, MeanFlowModel,
                                              FlowMapModel)}
IMAGE_DATA = ("mnist", "cifar10")
REPO_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"


def build_net(net_config: dict):
    """Rebuild the network of a checkpoint from its stored constructor arguments."""
    if "in_ch" in net_config:
        return UNet(**net_config)
    if "dim" in net_config:
        return MLP(**net_config)
    raise ValueError(f"cannot tell which network the net config {net_config} belongs to")


def resolve(path) -> Path:
    """``path`` itself, ``path/checkpoint.pt`` for a run folder, or a path inside the repository's checkpoints/
    (e.g. "mnist_edm.pt" or "gpu/mnist_cd.pt"), so notebooks find the committed files from any folder. The folder
    ``CMEDU_CHECKPOINTS`` names, when set, is searched first."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists() and not path.is_absolute():
        bases = [REPO_CHECKPOINTS, REPO_CHECKPOINTS.parent]  # "mnist_cd.pt", "checkpoints/gpu/mnist_cd.pt"
        if os.environ.get("CMEDU_CHECKPOINTS"):  # set by cmedu.colab.ensure_repository outside a clone
            extra = Path(os.environ["CMEDU_CHECKPOINTS"])
            bases = [extra, extra.parent] + bases
        for base in bases:
            if (base / path).is_file():
                return base / path
    return path


def load_checkpoint(path) -> dict:
    """A training checkpoint or exported weights, checked to be one (ValueError naming the file otherwise)."""
    path = resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one with `python -m cmedu train ... --out DIR`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, AttributeError,
            ImportError, IndexError, KeyError, TypeError, UnicodeDecodeError, io.UnsupportedOperation) as e:
        raise ValueError(f"{path} is not a readable cmedu checkpoint: it is truncated, corrupt or another kind of "
                         f"file ({type(e).__name__}). Re-create it with `python -m cmedu train` or `export`") from None
    if not isinstance(state, dict) or state.get("format") not in FORMATS:
        raise ValueError(f"{path} is not a cmedu checkpoint (expected a file written by `python -m cmedu train` "
                         "or `python -m cmedu export`)")
    return state


def load_model(path, weights: str = "ema", device="cpu"):
    """The trained wrapper (EDMDenoiser, ConsistencyModel, TrigFlowModel, MeanFlowModel or FlowMapModel) of a checkpoint, in
    eval mode; and the checkpoint.

    ``weights`` is 'ema' (the exponential moving average, used for sampling) or 'model'
    (the online weights; training checkpoints only). Exported float16 weights come back as float32.
    """
    state = load_checkpoint(path)
    if weights not in ("ema", "model") or state.get(weights) is None:
        raise ValueError(f"{path} holds no {weights!r} weights (exported files keep only 'ema')")
    cfg = state["config"]
    cls = MODEL_CLASSES.get(state["model_class"])
    if cls is None:
        raise ValueError(f"unknown model class {state['model_class']!r} in {path}")
    model = cls(build_net(state["net_config"]), sigma_data=cfg["sigma_data"], eps=cfg["eps"], T=cfg["T"])
    try:
        model.load_state_dict({k: v.float() for k, v in state[weights].items()})
    except RuntimeError as e:
        raise ValueError(f"{path}: the weights do not fit the network its config describes ({e})") from None
    return model.to(device).eval().requires_grad_(False), state


def data_of(state) -> str:
    data = state["config"].get("extra", {}).get("data")
    if data is None:
        raise ValueError("this checkpoint does not say which data it was trained on (it was not made by `cmedu train`)")
    return data


def sample_shape(state, n: int):
    net = state["net_config"]
    return (n, net["in_ch"], net["img_size"], net["img_size"]) if "in_ch" in net else (n, net["dim"])


def default_nfe(state) -> int:
    """1 step for a consistency model; 35 evaluations (EDM's 18-step Heun sampler) for a denoiser."""
    return 35 if state["model_class"] == "EDMDenoiser" else 1


def stored_taus(state, nfe: int):
    """The intermediate times chosen for ``nfe``-step sampling and stored in the checkpoint, or None."""
    return (state.get("taus") or {}).get(str(nfe))


def sampling_start(state, nfe: int) -> float:
    """The noise level where a consistency model's ``nfe``-step sampling starts: the one chosen by export, else T."""
    return float((state.get("starts") or {}).get(str(nfe)) or state["config"]["T"])


@torch.no_grad()
def generate(model, state, n: int, nfe: int, seed: int = 0, device="cpu", batch_size: int = 1000, taus=None,
             start=None):
    """n samples on the CPU: Alg. 1 with ``nfe`` steps for a consistency model (from the checkpoint's chosen start
    noise level and taus when it has them), ``nfe`` jumps for a flow map (a number that divides its grid's steps),
    the Heun/Euler PF-ODE sampler with ``nfe`` evaluations for an EDM denoiser. Images are clipped to [-1, 1].

    ``taus`` and ``start`` override the stored choices: ``start=state["config"]["T"]`` is Alg. 1's own start.
    """
    from .sampling import prior_sample, sample, teacher_sample

    cfg = state["config"]
    if taus is None:
        taus = stored_taus(state, nfe)
    if start is None:
        start = sampling_start(state, nfe)
    elif isinstance(model, (EDMDenoiser, FlowMapModel)):
        raise ValueError("start= is for consistency models; the teacher's ODE solve and a flow map's jumps start at T")
    if isinstance(model, FlowMapModel) and "flowmap_points" in cfg:
        check_sampling_steps(nfe, cfg["flowmap_points"])
    gen = torch.Generator().manual_seed(seed)
    out = []
    for first in range(0, n, batch_size):
        shape = sample_shape(state, min(batch_size, n - first))
        if not isinstance(model, EDMDenoiser):  # every other wrapper is a consistency function f(x, sigma)
            x = sample(model, shape, nfe, taus=taus, generator=gen, eps=cfg["eps"], T=float(start),
                       device=device)
        else:
            x = teacher_sample(model, prior_sample(shape, cfg["T"], gen, device), nfe, eps=cfg["eps"], T=cfg["T"])
        out.append(x.float().cpu())
    x = torch.cat(out)
    return x.clamp(-1, 1) if data_of(state) in IMAGE_DATA else x


def export_weights(state: dict, path, taus: dict = None, starts: dict = None, **record):
    """Write the EMA weights of a training checkpoint (or an exported file) in float16 (``cmedu-weights-v1``),
    atomically.

    ``taus`` maps an NFE (as a string) to its chosen intermediate times; ``starts`` maps an NFE to the noise
    level where its sampling starts (absent: T); ``record`` holds how the file was made (command, wall time, machine,
    measured numbers).
    """
    if state.get("format") not in FORMATS:
        raise ValueError("export_weights takes a training checkpoint (written by `python -m cmedu train`) or an "
                         "exported file")
    out = {
        "format": WEIGHTS_FORMAT,
        "config": state["config"],
        "model_class": state["model_class"],
        "net_config": state["net_config"],
        "step": state["step"],
        "ema": {k: v.half() if v.is_floating_point() else v for k, v in state["ema"].items()},
        "taus": {str(k): list(v) for k, v in (taus or {}).items()},
        "record": record,
        "starts": {str(k): float(v) for k, v in (starts or {}).items()},
    }
    save_atomic(out, os.fspath(path))
    return out


def check_checkpoint_format(state, source: str = "checkpoint"):
    """Raise a ValueError unless ``state`` is a dict written by ``Trainer.save``."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{source} is not a cmedu training checkpoint (expected a file written by Trainer.save)")


def check_checkpoint(state, model, method=None):
    """Raise a ValueError when ``state`` was not saved by a Trainer of this model (and method)."""
    check_checkpoint_format(state)
    if state["model_class"] != type(model).__name__ or state["net_config"] != getattr(model.net, "config", None):
        raise ValueError(
            f"checkpoint is from another model: {state['model_class']} with net config {state['net_config']}, "
            f"but this model is {type(model).__name__} with {getattr(model.net, 'config', None)}"
        )
    if method is not None and state["config"]["method"] != method:
        raise ValueError(f"checkpoint was trained with method {state['config']['method']!r}, not {method!r}")


def write_atomic(path, write):
    """Call write(binary file) on a temporary file in the folder of ``path``, then rename it: never half-written."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(os.fspath(path))[1])
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_atomic(obj, path: str):
    """torch.save to a temporary file in the same folder, then rename: never a half-written file."""
    write_atomic(path, lambda f: torch.save(obj, f))


__all__ = ["build_net", "load_checkpoint", "load_model", "data_of", "sample_shape", "default_nfe", "stored_taus",
           "sampling_start", "generate", "export_weights", "WEIGHTS_FORMAT", "CHECKPOINT_FORMAT",
           "check_checkpoint_format", "check_checkpoint", "save_atomic", "write_atomic"]
