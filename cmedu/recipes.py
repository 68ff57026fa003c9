"""Tuned settings for the 2-D path, one per method and profile, shared by notebooks 03-05 and the benchmark."""
import copy

import torch

from .nets import make_mlp
from .profiles import get_profile, profile_value
from .toy import make_dataset
from .methods import CONTINUOUS_MAX_FREQ, CONTINUOUS_METHODS, model_class, net_options
from .training import TrainConfig, Trainer


def toy_config(method: str, profile: str = None, **overrides) -> TrainConfig:
    """TrainConfig for a method on the 2-D Gaussian mixture in the given profile."""
    profile = profile or get_profile()
    steps = profile_value(1000, 6000, 6000, profile) if method == "cd" else profile_value(2000, 6000, 6000, profile)
    kw = dict(method=method, steps=steps, batch_size=512, lr=1e-3, warmup=100, cosine_decay=True, ema_decay=0.995,
              ct_s1=20, ct_mu0=0.9,  # CT: a coarse final grid and faster target (toy budget: thousands of steps)
              ict_s1=160)            # iCT: doubling 10 -> 160 intervals within the run
    if method in CONTINUOUS_METHODS:
        # The tangent makes the gradient noisier than a discrete loss's: a 3x lower learning rate trains
        # much faster here (sCT's one-step error after 3,000 steps: ~44x the teacher's at 1e-3, ~6x at 3e-4).
        kw.update(lr=3e-4, steps=profile_value(400, 4000, 4000, profile))
    if method == "sct":  # from scratch, the paper's P_std = 1.4 trains better (one step 2.7x vs 6.8x at 2.0)
        kw.update(scm_p_std=1.4)
    if method == "meanflow":  # MeanFlow's CIFAR-10 settings (its ImageNet ones: 0.25, -0.4, 1.0, 1.0) train better here
        kw.update(mf_ratio=0.75, mf_p_mean=-2.0, mf_p_std=2.0, mf_power=0.75)
    kw.update(overrides)
    return TrainConfig(**kw)


def toy_trainer(method: str, profile: str = None, dataset: str = "gmm", preset: str = "small", seed: int = 0,
                init=None, net_kw: dict = None, **overrides) -> Trainer:
    """A ready-to-run Trainer for ``method`` on a 2-D dataset (the exact mixture denoiser is the CD teacher).

    ``init``: a trained model whose network the new one starts from (a copy; e.g. a diffusion model
    pretrained on the same data, as sCM and ECT start); ``net_kw``: options for ``make_mlp`` on top of the
    method's own (``methods.net_options``).
    """
    data = make_dataset(dataset)
    with torch.random.fork_rng():  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        if init is not None:  # a copy that trains (an EMA copy comes frozen and in eval mode)
            net = copy.deepcopy(init.net).requires_grad_(True).train()
        else:
            net = make_mlp(preset, **{**net_options(method), **(net_kw or {})})
        model = model_class(method)(net, sigma_data=0.5)
    teacher = getattr(data, "denoiser", None)
    return Trainer(model, data, toy_config(method, profile, seed=seed, **overrides), teacher=teacher)


def toy_pretrained_denoiser(profile: str = None, seed: int = 0):
    """A 2-D EDM denoiser trained on the mixture's samples, with the continuous-time methods' time embedding,
    for sCD and sCT to start from (``toy_trainer(..., init=...)``), as sCM starts from a pretrained model."""
    trainer = toy_trainer("edm", profile, seed=seed, net_kw=dict(max_freq=CONTINUOUS_MAX_FREQ),
                          steps=profile_value(300, 4000, 4000, profile))
    trainer.fit()
    return trainer.ema.eval()
