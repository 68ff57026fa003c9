"""Tuned settings for the 2-D path, one per method and profile, shared by notebooks 03-05 and the benchmark."""
import torch

from .nets import make_mlp
from .parameterization import ConsistencyModel
from .profiles import get_profile, profile_value
from .toy import make_dataset
from .training import TrainConfig, Trainer


def toy_config(method: str, profile: str = None, **overrides) -> TrainConfig:
    """TrainConfig for CD / CT / iCT on the 2-D Gaussian mixture in the given profile."""
    profile = profile or get_profile()
    steps = profile_value(1000, 6000, 6000, profile) if method == "cd" else profile_value(2000, 6000, 6000, profile)
    kw = dict(method=method, steps=steps, batch_size=512, lr=1e-3, warmup=100, cosine_decay=True, ema_decay=0.995,
              ct_s1=20, ct_mu0=0.9,  # CT: a coarse final grid and faster target (toy budget: thousands of steps)
              ict_s1=160)            # iCT: doubling 10 -> 160 intervals within the run
    kw.update(overrides)
    return TrainConfig(**kw)


def toy_trainer(method: str, profile: str = None, dataset: str = "gmm", preset: str = "small", seed: int = 0,
                **overrides) -> Trainer:
    """A ready-to-run Trainer for ``method`` on a 2-D dataset (the exact mixture denoiser is the CD teacher)."""
    data = make_dataset(dataset)
    with torch.random.fork_rng():  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        model = ConsistencyModel(make_mlp(preset), sigma_data=0.5)
    teacher = getattr(data, "denoiser", None)
    return Trainer(model, data, toy_config(method, profile, seed=seed, **overrides), teacher=teacher)
