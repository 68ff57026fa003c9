"""Which model each training method trains, and what its network needs.

The training loop (``cmedu.training``) runs every method; this module says, per method, which wrapper
turns the network into the trained model, which networks it needs (time inputs, time embedding),
and whether it starts from or distils a teacher.
"""
from torch import nn

from ._checks import check_choice
from .continuous import MeanFlowModel, TrigFlowModel
from .parameterization import ConsistencyModel, EDMDenoiser

METHODS = ("edm", "cd", "ct", "ict", "ect", "scd", "sct", "meanflow")
TEACHER_METHODS = ("cd", "ect", "scd")  # methods whose student starts from a teacher's weights
DISTILLATION_METHODS = ("cd", "scd")  # methods that need a teacher denoiser every step
SCM_METHODS = ("scd", "sct")  # sCM in the TrigFlow parameterisation
CONTINUOUS_METHODS = SCM_METHODS + ("meanflow",)  # losses built on the tangent (a JVP of the network)
CONTINUOUS_MAX_FREQ = 2.0


def model_class(method: str):
    """The wrapper that turns a network into the model ``method`` trains."""
    check_choice("method", method, METHODS)
    if method in SCM_METHODS:
        return TrigFlowModel
    return {"edm": EDMDenoiser, "meanflow": MeanFlowModel}.get(method, ConsistencyModel)


def net_options(method: str) -> dict:
    """Network options a method needs, for ``make_mlp`` / ``make_unet``: MeanFlow's u(z, r, t) has two time
    inputs, and the continuous-time methods a time embedding of low frequencies (at most
    ``CONTINUOUS_MAX_FREQ`` instead of 16). Their loss differentiates the network in t, and high
    time frequencies make that tangent large and noisy (Lu & Song 2024, Sec. 4.1, say the same of
    the Fourier scale); on the 2-D mixture, sCD's one-step error after 2,000 steps drops ~10x with it.
    """
    check_choice("method", method, METHODS)
    if method not in CONTINUOUS_METHODS:
        return {}
    return dict(max_freq=CONTINUOUS_MAX_FREQ, **({"time_inputs": 2} if method == "meanflow" else {}))


def copy_teacher_weights(student: nn.Module, teacher: nn.Module):
    """Load the teacher's network F into the student's (CM paper, Sec. 6: students start from the teacher).

    Both must wrap a network of the same configuration in ``.net``.
    """
    s_cfg, t_cfg = getattr(student.net, "config", None), getattr(teacher.net, "config", None)
    if s_cfg != t_cfg:
        raise ValueError(f"cannot start the student from the teacher: the teacher's network is {t_cfg}, "
                         f"the student's {s_cfg}; use the teacher's preset for the student")
    student.net.load_state_dict(teacher.net.state_dict())
