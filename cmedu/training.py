"""One training loop for the EDM teacher, CD, CT, iCT, ECT, the continuous-time sCD, sCT and MeanFlow, and flow-map
distillation.

``Trainer.run()`` is a generator: it yields a ``TrainRecord`` after every step, so a
notebook can plot live or stop early, and the command line drives the same loop.
All randomness goes through one ``torch.Generator`` whose state is checkpointed, so a
resumed run continues bit-identically on CPU.

Runs can be planned to a wall-time budget: ``Trainer.seconds_per_step`` times a few steps and
restores the state, and ``plan_steps`` turns minutes into a total step count, so that every
schedule (learning rate, EMA ramp-up, the CT/iCT curricula, ECT's stages) runs its full course.

Under ``torchrun`` (a process group of P > 1 processes, see ``cmedu.distributed``) the same loop runs on every
process: each draws the global batch and its noise from the shared generator and computes the loss on its own
1/P of the rows, inside ``DistributedDataParallel``, which averages the gradients. The average of the P slice means
is the mean over the global batch because the slices are equal, so P processes take the same optimizer steps as
one (up to float rounding); the EMA and target updates then need no communication.
"""
import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import distributed
from ._checks import check_choice
from .checkpoints import CHECKPOINT_FORMAT, check_checkpoint, save_atomic
from .continuous import meanflow_loss, scm_loss
from .flowmap_distill import dyadic_levels, flowmap_distill_loss
from .losses import cd_loss, ct_loss, ect_loss, edm_loss
from .methods import DISTILLATION_METHODS, METHODS, SCM_METHODS, TEACHER_METHODS, copy_teacher_weights
from .profiles import progress_disabled
from .schedules import (CT_TARGET_SCHEDULES, cm_num_steps, ct_target_decay, ict_num_steps, karras_sigmas,
                        lognormal_step_probs)


@dataclass
class TrainConfig:
    """Hyper-parameters. Defaults follow the papers; ``None`` means "the method's default"."""

    method: str = "cd"
    steps: int = 5000
    batch_size: int = 512
    lr: float = 1e-3
    warmup: int = 0
    cosine_decay: bool = False  # anneal the learning rate to 0 over `steps` (helps small 2-D models)
    ema_decay: float = 0.999  # EMA of weights used for sampling
    # EMA ramp-up (EDM's ema_rampup_ratio): the EMA half-life is at most this fraction of the images
    # seen so far, so a short run does not average in its random initialisation. None: fixed decay.
    ema_rampup: float = None
    grad_clip: float = 1.0
    seed: int = 0
    # CD (CM paper, Sec. 6): fixed grid of N points, fixed target EMA mu, Heun teacher.
    num_points: int = 18
    target_decay: float = 0.95
    solver: str = "heun"
    # CT curriculum N(k), mu(k) (s0, s1); iCT doubling curriculum (s0, s1).
    ct_s0: int = 2
    ct_s1: int = 150
    ct_mu0: float = 0.95
    # CT's target network: 'scaled' (the paper's mu(k) with theta-'s half-life the same fraction of the run as
    # in the paper), 'paper' (mu(k) as printed, tuned for ~800k steps), 'zero' (theta- = theta). See
    # schedules.ct_target_decay.
    ct_target: str = "scaled"
    ict_s0: int = 10
    ict_s1: int = 1280
    # ECT (Geng et al. 2024): r(t) mapping constants, number of stages over the run, lognormal t.
    ect_q: float = 2.0
    ect_k: float = 8.0
    ect_b: float = 1.0
    ect_stages: int = 6
    ect_p_mean: float = -1.1
    ect_p_std: float = 2.0
    # sCM (Lu & Song 2024): proposal of log sigma, tangent warm-up over this fraction of the run (0: off),
    # tangent normalisation constant c at D = 3072 values, scaled by sqrt(D / 3072) (None: off), learned
    # adaptive weight w(t). See continuous.scm_loss for why P_std is 2.0 rather than the paper's 1.4.
    scm_p_mean: float = -1.0
    scm_p_std: float = 2.0
    tangent_warmup: float = 0.1
    tangent_norm: float = 0.1
    adaptive_weight: bool = True
    # the tangent's norm, 'l2' (full norm, constant scaled by sqrt(D / 3072)) or 'rms' (FastGen), and sCM's prior
    # weight 1/sigma (continuous.normalize_tangent, continuous.scm_loss)
    scm_norm_kind: str = "l2"
    scm_prior_weight: bool = False
    # MeanFlow (Geng et al. 2025): fraction of r != t, logit-normal (t, r), adaptive loss power p and c.
    mf_ratio: float = 0.25
    mf_p_mean: float = -0.4
    mf_p_std: float = 1.0
    mf_power: float = 1.0
    mf_c: float = 1e-3
    # Flow-map distillation (cmedu.flowmap_distill): the teacher's Heun grid (points − 1 a power of two) and the
    # number of (i, j) pairs drawn from each teacher trajectory.
    flowmap_points: int = 17
    flowmap_pairs: int = 8
    init_from_teacher: bool = True  # CD/ECT/sCD/flowmap: copy the teacher's network into the student at step 0
    distance: str = None  # 'l2' (CD, CT) or 'pseudo_huber' (iCT)
    eps: float = 0.002
    T: float = 80.0
    sigma_data: float = 0.5
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        check_choice("solver", self.solver, ("euler", "heun"))
        check_choice("ct_target", self.ct_target, CT_TARGET_SCHEDULES)
        if self.method == "flowmap":
            dyadic_levels(self.flowmap_points)  # ValueError unless points − 1 is a power of two
            if self.batch_size % self.flowmap_pairs:
                raise ValueError(f"flowmap: batch_size ({self.batch_size}) must be a multiple of flowmap_pairs "
                                 f"({self.flowmap_pairs}), the rows drawn from one teacher trajectory")
        if self.distance is None:
            self.distance = "pseudo_huber" if self.method == "ict" else "l2"
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1; got {self.steps}, {self.batch_size}")


@dataclass
class TrainRecord:
    step: int  # number of optimizer steps done
    loss: float
    num_points: int  # N of the discretisation (0 for EDM)
    target_decay: float
    lr: float
    stage: int = 0  # ECT's stage (0 for the other methods)


def ema_decay_at(decay: float, step: int, rampup: float = None) -> float:
    """The sampling EMA's decay after ``step`` steps: ``decay``, capped by EDM's ramp-up.

    EDM (Karras et al. 2022, training loop): half-life <= rampup * images seen, i.e.
    beta = 0.5 ** (batch / (rampup * step * batch)) = 0.5 ** (1 / (rampup * step)): the batch size cancels.
    """
    if rampup is None:
        return decay
    return min(decay, 0.5 ** (1.0 / max(rampup * step, 1e-8)))


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float):
    """theta_ema <- decay theta_ema + (1 - decay) theta (CM paper, Alg. 2/3 last line).

    Written out rather than via ``torch.optim.swa_utils.AveragedModel`` because the CT target
    decay mu(k) changes every step.
    """
    with torch.no_grad():
        # one fused call for all parameters (hundreds of small kernels otherwise: the bottleneck on a GPU)
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
        for be, b in zip(ema.buffers(), model.buffers()):
            be.copy_(b)


def sample_batch(data, n: int, generator):
    """A batch from a tensor dataset (uniform indices) or from a sampler ``data(n, generator)``."""
    if torch.is_tensor(data):
        return data[torch.randint(0, data.shape[0], (n,), generator=generator)]
    if hasattr(data, "sample"):
        return data.sample(n, generator=generator)
    return data(n, generator)


class LossStep(nn.Module):
    """The whole loss of a step as a module's ``forward``, so that ``DistributedDataParallel`` wraps all of it.

    DDP synchronises gradients only for a backward pass of an output of its own ``forward``. ``torch.func.jvp``
    cannot run through a DDP module (pytorch issues #102197, #182661), and a JVP loss computed on ``ddp.module``
    instead trains every rank on its own gradients, silently (py-meanflow's README warns of this). Running the
    loss, JVP included, inside the wrapped module's forward (as NVIDIA's FastGen does) keeps the JVP on the plain
    module and the gradient sync intact; ``tests/test_ddp.py`` checks both.
    """

    def __init__(self, trainer, model):
        super().__init__()
        self.model = model  # registered, so DDP sees (and synchronises) exactly the model's parameters
        self._loss = trainer.loss

    def forward(self, x0, n_points: int, stage: int):
        return self._loss(x0, n_points, stage)


class Trainer:
    """Trains ``model`` (the wrapper ``model_class(method)``: an ``EDMDenoiser`` for 'edm', a ``TrigFlowModel``
    for sCD/sCT, a ``MeanFlowModel`` for MeanFlow, a ``FlowMapModel`` for flowmap, a ``ConsistencyModel`` otherwise).

    Parameters
    ----------
    model: the network wrapper being trained.
    data: a tensor (N, ...) of training examples, or anything with ``.sample(n, generator)``.
    config: a ``TrainConfig``.
    teacher: the denoiser D(x, t) for CD (e.g. ``GaussianMixture.denoiser`` or a trained ``EDMDenoiser``).
    amp_dtype: e.g. ``torch.bfloat16`` to run the forward passes and the loss under ``torch.autocast``
        (mixed precision on a GPU); ``None`` (default) keeps everything in float32.

    Under a process group of P > 1 processes (``torchrun``; ``cmedu.distributed.init``), ``config.batch_size`` is
    the global batch (P must divide it) and the loss runs inside ``DistributedDataParallel``; rank 0 writes the
    checkpoints.
    """

    def __init__(self, model, data, config: TrainConfig, teacher=None, device=None, amp_dtype=None):
        if config.method in DISTILLATION_METHODS and teacher is None:
            raise ValueError(f"method {config.method!r} needs a teacher denoiser: pass teacher=...")
        self.model, self.data, self.config, self.teacher = model, data, config, teacher
        self.device = torch.device(device) if device else next(model.parameters()).device
        if config.method in TEACHER_METHODS and config.init_from_teacher and hasattr(teacher, "net"):
            copy_teacher_weights(model, teacher)  # before the EMA and target copies: all three start equal
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self._forward = self.loss
        if self.world_size > 1:
            distributed.check_batch(config.batch_size, self.world_size)
            # DDP broadcasts rank 0's weights (before the EMA and target copies, so these agree on every rank too).
            # Only sCM without the adaptive weight leaves parameters (w(t)) out of the loss; DDP must be told.
            unused = config.method in SCM_METHODS and not config.adaptive_weight
            ids = [torch.device(self.device.type, self.device.index or 0).index] if self.device.type == "cuda" else None
            # (the networks' only buffers are constant frequencies, so DDP's per-step buffer sync is a tiny no-op)
            self._forward = DistributedDataParallel(LossStep(self, model), device_ids=ids,
                                                    find_unused_parameters=unused)
        self.ema = copy.deepcopy(model).requires_grad_(False)
        # CD and CT keep an EMA target network; iCT uses the online network under stop-grad.
        self.target = copy.deepcopy(model).requires_grad_(False) if config.method in ("cd", "ct") else None
        self.opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.amp_dtype = amp_dtype

    # -- schedules ---------------------------------------------------------------------------
    def discretisation(self, k: int):
        """(N(k), mu(k)) for step k: fixed for CD, CM curriculum for CT, doubling for iCT."""
        c = self.config
        if c.method == "cd":
            return c.num_points, c.target_decay
        if c.method == "ct":
            return (cm_num_steps(k, c.steps, c.ct_s0, c.ct_s1),
                    ct_target_decay(k, c.steps, c.ct_s0, c.ct_s1, c.ct_mu0, c.ct_target))
        if c.method == "ict":
            return ict_num_steps(k, c.steps, c.ict_s0, c.ict_s1), 0.0
        return 0, 0.0

    def stage_at(self, k: int) -> int:
        """ECT's stage at step k: rises evenly from 0 to ect_stages - 1 over the run."""
        c = self.config
        return min(k * c.ect_stages // c.steps, c.ect_stages - 1) if c.method == "ect" else 0

    def tangent_warmup_at(self, k: int) -> float:
        """sCM's tangent warm-up r = min(1, k / H), H = ``tangent_warmup`` x the run's steps (1 when off)."""
        h = self.config.tangent_warmup * self.config.steps
        return min(1.0, k / h) if h > 0 else 1.0

    def lr_at(self, k: int) -> float:
        c = self.config
        lr = c.lr * min(1.0, (k + 1) / c.warmup) if c.warmup else c.lr
        return lr * 0.5 * (1 + math.cos(math.pi * min(k / c.steps, 1.0))) if c.cosine_decay else lr

    # -- one step ----------------------------------------------------------------------------
    def loss(self, x0, n_points: int, stage: int = 0):
        """The method's loss on a batch, on a Karras grid of ``n_points`` times (CD, CT, iCT) or at ECT's ``stage``."""
        c = self.config
        if c.method == "edm":
            return edm_loss(self.model, x0, self.generator, c.sigma_data, eps=c.eps, T=c.T)
        if c.method == "ect":
            return ect_loss(self.model, x0, stage, self.generator, c.ect_q, c.ect_k, c.ect_b, c.ect_p_mean, c.ect_p_std)
        if c.method in SCM_METHODS:
            return scm_loss(self.model, x0, self.generator, self.teacher if c.method in DISTILLATION_METHODS else None,
                            self.tangent_warmup_at(self.step), c.scm_p_mean, c.scm_p_std, c.tangent_norm,
                            c.adaptive_weight, c.scm_norm_kind, c.scm_prior_weight)
        if c.method == "flowmap":
            return flowmap_distill_loss(self.model, self.teacher, x0, self.generator, c.flowmap_points, c.flowmap_pairs)
        if c.method == "meanflow":
            return meanflow_loss(self.model, x0, self.generator, c.mf_ratio, c.mf_p_mean, c.mf_p_std, c.mf_power,
                                 c.mf_c)
        sigmas = karras_sigmas(n_points, c.eps, c.T).to(self.device)
        if c.method == "cd":
            return cd_loss(self.model, self.target, self.teacher, x0, sigmas, self.generator, c.solver, c.distance)
        if c.method == "ct":
            return ct_loss(self.model, self.target, x0, sigmas, self.generator, c.distance)
        probs = lognormal_step_probs(sigmas.cpu())
        return ct_loss(self.model, self.model, x0, sigmas, self.generator, c.distance, "ict", probs)

    def train_step(self) -> TrainRecord:
        k = self.step
        x0 = sample_batch(self.data, self.config.batch_size, self.generator)  # the global batch (on every rank)
        if self.world_size > 1:
            x0 = x0[distributed.rows(len(x0), self.rank, self.world_size)]  # this rank's share
        x0 = x0.to(self.device)
        lr = self.lr_at(k)
        n_points, mu = self.discretisation(k)
        stage = self.stage_at(k)
        for group in self.opt.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None), \
                distributed.shard(self.rank, self.world_size):
            loss = self._forward(x0, n_points, stage)
        # The global batch's loss on every rank: a NaN on any rank stops all of them at the same step (a rank that
        # raised alone would leave the others waiting in the gradient all-reduce).
        loss_all = distributed.mean_over_ranks(loss)
        if not torch.isfinite(loss_all):
            raise FloatingPointError(
                f"loss is {loss_all.item()} at step {k} ({self.config.method}); lower the learning rate "
                "or set grad_clip, then resume from the last checkpoint"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.opt.step()
        if self.target is not None:
            ema_update(self.target, self.model, mu)
        c = self.config
        ema_update(self.ema, self.model, ema_decay_at(c.ema_decay, k + 1, c.ema_rampup))
        self.step += 1
        return TrainRecord(self.step, loss_all.item(), n_points, mu, lr, stage)

    def run(self, steps: int = None, progress: bool = None, checkpoint: str = None, every: int = 1000,
            seconds: float = None):
        """Yield a TrainRecord per step until ``steps`` more steps (default: up to config.steps) are done,
        or until ``seconds`` of wall time have passed (then the run can be resumed where it stopped).

        With ``checkpoint`` a path, the state is saved there every ``every`` steps and at the end.
        """
        end = self.config.steps if steps is None else self.step + steps
        disable = progress_disabled() if progress is None else not progress
        t0 = time.perf_counter()
        with tqdm(total=end - self.step, disable=disable, desc=self.config.method) as bar:
            while self.step < end:
                # the time is up when rank 0 says so, so that every rank stops at the same step
                if seconds is not None and distributed.broadcast_flag(time.perf_counter() - t0 > seconds,
                                                                      self.device):
                    if checkpoint:
                        self.save(checkpoint)
                    return
                rec = self.train_step()
                bar.update(1)
                if rec.step % 10 == 0 or rec.step == end:
                    bar.set_postfix(loss=f"{rec.loss:.4g}", N=rec.num_points)
                if checkpoint and (rec.step % every == 0 or rec.step == end):
                    self.save(checkpoint)
                yield rec

    def seconds_per_step(self, n: int = 8, warmup: int = 2) -> float:
        """Wall time of one training step, timed over ``n`` steps after ``warmup``; the state is restored after."""
        saved = copy.deepcopy(self.state_dict())
        rng = torch.get_rng_state()
        try:
            for _ in range(warmup):
                self.train_step()
            t0 = time.perf_counter()
            for _ in range(n):
                self.train_step()
            return (time.perf_counter() - t0) / n
        finally:
            self.load_state_dict(saved)
            torch.set_rng_state(rng)

    def plan_steps(self, minutes: float, fraction: float = 0.95, **timing) -> int:
        """Set ``config.steps`` so that the whole run takes about ``fraction`` of ``minutes`` (the rest is slack
        for checkpoints and a slower machine) and return it. Every schedule is stretched over this total.

        Under torchrun every rank times the (collective) steps, and all take rank 0's plan."""
        if minutes <= 0:
            raise ValueError(f"minutes must be > 0; got {minutes}")
        steps = max(1, int(fraction * minutes * 60 / self.seconds_per_step(**timing)))
        self.config.steps = distributed.broadcast(steps)
        return self.config.steps

    def fit(self, steps: int = None, **kw):
        """Run to the end and return the list of losses."""
        return [r.loss for r in self.run(steps, **kw)]

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self):
        return {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(self.config),
            "model_class": type(self.model).__name__,
            "net_config": getattr(self.model.net, "config", None),
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "target": None if self.target is None else self.target.state_dict(),
            "opt": self.opt.state_dict(),
            "generator": self.generator.get_state(),
            "world_size": self.world_size,  # a record only: any number of processes can resume (same global batch)
        }

    def load_state_dict(self, state):
        check_checkpoint(state, self.model, self.config.method)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        if self.target is not None:
            self.target.load_state_dict(state["target"])
        self.opt.load_state_dict(state["opt"])
        self.generator.set_state(state["generator"])
        self.step = state["step"]

    def save(self, path: str):
        """Write the checkpoint atomically (rank 0 only under torchrun: every rank holds the same state)."""
        if self.rank == 0:
            save_atomic(self.state_dict(), path)

    def resume(self, path: str) -> bool:
        """Load ``path`` if it exists; returns whether it did."""
        if not os.path.exists(path):
            return False
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))
        return True
