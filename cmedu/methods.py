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
    second time input for a flow map X(x, t, s)."""
    return dict(teacher_config, time_inputs=2) if method in TWO_TIME_METHODS else dict(teacher_config)


def copy_teacher_weights(student: nn.Module, teacher: nn.Module):
    """Load the teacher's network F into the student's (CM paper, Sec. 6: students start from the teacher).

    Both must wrap a network of the same configuration in ``.net``, except that a two-time student (a flow map,
    ``student_net_config``) may have a second time input: the layer that reads the time features then gets the
    teacher's weights for the first time's features and zeros for the second's, so that the student's network
    computes the teacher's F(c_in x, c_noise(t)) whatever s is.
    """
    s_cfg, t_cfg = getattr(student.net, "config", None), getattr(teacher.net, "config", None)
    two_time = s_cfg is not None and t_cfg is not None and s_cfg == dict(t_cfg, time_inputs=2) \
        and t_cfg.get("time_inputs", 1) == 1
    if s_cfg != t_cfg and not two_time:
        raise ValueError(f"cannot start the student from the teacher: the teacher's network is {t_cfg}, "
                         f"the student's {s_cfg}; use the teacher's preset for the student")
    if not two_time:
        student.net.load_state_dict(teacher.net.state_dict())
        return
    own = student.net.state_dict()
    for name, w in teacher.net.state_dict().items():
        if own[name].shape == w.shape:
            own[name] = w.clone()
        else:  # the time features' layer: its inputs are [x (MLP only), features of t, features of s]
            own[name] = torch.zeros_like(own[name])
            own[name][:, : w.shape[1]] = w
    student.net.load_state_dict(own)
