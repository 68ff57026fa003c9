"""Which model each training method trains, and what its network needs.

The training loop (``cmedu.training``) runs every method; this module says, per method, which wrapper
turns the network into the trained model, which networks it needs (time inputs, time embedding),
and whether it starts from or distils a teacher.
"""
import torch
from torch import nn

from ._checks import check_choice
from .continuous import MeanFlowModel, TrigFlowModel
from .parameterization import ConsistencyModel, EDMDenoiser

METHODS = ("edm", "cd", "ct", "ict", "ect", "scd", "sct", "meanflow", "flowmap")
TEACHER_METHODS = ("cd", "ect", "scd", "flowmap")  # methods whose student starts from a teacher's weights
DISTILLATION_METHODS = ("cd", "scd", "flowmap")  # methods that need a teacher denoiser every step
TWO_TIME_METHODS = ("meanflow", "flowmap")  # networks with two time inputs
SCM_METHODS = ("scd", "sct")  # sCM in the TrigFlow parameterisation
CONTINUOUS_METHODS = SCM_METHODS + ("meanflow",)  # losses built on the tangent (a JVP of the network)
CONTINUOUS_MAX_FREQ = 2.0


def model_class(method: str):
    """The wrapper that turns a network into the model ``method`` trains."""
    check_choice("method", method, METHODS)
    if method in SCM_METHODS:
        return TrigFlowModel
    if method == "flowmap":
        from .flowmap import FlowMapModel  # here: flowmap imports this module

        return FlowMapModel
    return {"edm": EDMDenoiser, "meanflow": MeanFlowModel}.get(method, ConsistencyModel)


def net_options(method: str) -> dict:
    """Network options a method needs, for ``make_mlp`` / ``make_unet``: MeanFlow's u(z, r, t) has two time
    inputs, and the continuous-time methods a time embedding of low frequencies (at most
    ``CONTINUOUS_MAX_FREQ`` instead of 16). Their loss differentiates the network in t, and high
    time frequencies make that tangent large and noisy (Lu & Song 2024, Sec. 4.1, say the same of
    the Fourier scale); on the 2-D mixture, sCD's one-step error after 2,000 steps drops ~10x with it.
    """
    check_choice("method", method, METHODS)
    opts = {"time_inputs": 2} if method in TWO_TIME_METHODS else {}
    return dict(opts, max_freq=CONTINUOUS_MAX_FREQ) if method in CONTINUOUS_METHODS else opts


def student_net_config(method: str, teacher_config: dict) -> dict:
    """The network config of a student that starts from a teacher with ``teacher_config``: the teacher's, with a
    second time input for a flow map X(x, t, s), and the low-frequency time embedding for sCD.

    sCD's student gets ``CONTINUOUS_MAX_FREQ`` (Lu & Song 2024, Sec. 4.1: a smaller Fourier scale keeps the tangent
    stable) although its teacher was trained with 16. Measured on MNIST from the CPU teacher (100 steps, batch 64,
    one seed, FD-MNIST of 1,000 one-step samples; real digits 0.89 at that n): from T = 80, 106.3 with the teacher's
    embedding and 26.7 with max frequency 2; from s = 10, 17.2 and 15.2. The embedding's frequencies are a buffer,
    not weights, so the teacher's weights still load (``copy_teacher_weights``).
    """
    cfg = dict(teacher_config)
    if method in TWO_TIME_METHODS:
        cfg["time_inputs"] = 2
    if method in CONTINUOUS_METHODS:
        cfg["max_freq"] = CONTINUOUS_MAX_FREQ
    return cfg


def copy_teacher_weights(student: nn.Module, teacher: nn.Module):
    """Load the teacher's network F into the student's (CM paper, Sec. 6: students start from the teacher).

    Both must wrap a network of the same configuration in ``.net``, except as ``student_net_config`` makes them
    differ:

    - a two-time student (a flow map) has a second time input: the layer that reads the time features gets the
      teacher's weights for the first time's features and zeros for the second's, so that the student's network
      computes the teacher's F(c_in x, c_noise(t)) whatever s is;
    - a continuous-time student may have another maximum frequency of its time embedding: the frequencies are a
      buffer of the student's own, and every weight is the teacher's.
    """
    s_cfg, t_cfg = getattr(student.net, "config", None), getattr(teacher.net, "config", None)
    def layout(cfg):  # everything but what student_net_config may change
        return {k: v for k, v in cfg.items() if k not in ("time_inputs", "max_freq")}

    times = (s_cfg or {}).get("time_inputs", 1), (t_cfg or {}).get("time_inputs", 1)
    if s_cfg is None or t_cfg is None or layout(s_cfg) != layout(t_cfg) or not (times[0] == times[1] or times == (2, 1)):
        raise ValueError(f"cannot start the student from the teacher: the teacher's network is {t_cfg}, "
                         f"the student's {s_cfg}; use the teacher's preset for the student")
    own = student.net.state_dict()
    for name, w in teacher.net.state_dict().items():
        if name.endswith("freqs"):  # the time embedding's frequencies: the student's own (its max_freq)
            continue
        if own[name].shape == w.shape:
            own[name] = w.clone()
        else:  # the time features' layer: its inputs are [x (MLP only), features of t, features of s]
            own[name] = torch.zeros_like(own[name])
            own[name][:, : w.shape[1]] = w
    student.net.load_state_dict(own)
