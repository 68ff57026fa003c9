"""Run profiles: ``smoke`` (CI, seconds), ``cpu`` (real results on a laptop), ``gpu`` (full size).

The profile comes from the ``CMEDU_PROFILE`` environment variable; without it,
``gpu`` when CUDA is available and ``cpu`` otherwise.
"""
import os

PROFILES = ("smoke", "cpu", "gpu")


def get_profile() -> str:
    name = os.environ.get("CMEDU_PROFILE", "").strip().lower()
    if not name:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    if name not in PROFILES:
        raise ValueError(f"CMEDU_PROFILE={name!r} is not a profile; use one of {PROFILES}")
    return name


def profile_value(smoke, cpu, gpu=None, profile=None):
    """Pick the value for the current profile: ``profile_value(200, 5000, 20000)``."""
    profile = profile or get_profile()
    return {"smoke": smoke, "cpu": cpu, "gpu": cpu if gpu is None else gpu}[profile]


def progress_disabled() -> bool:
    """Progress bars are off under test (``CMEDU_NO_PROGRESS=1`` or the smoke profile) so outputs stay stable."""
    if os.environ.get("CMEDU_NO_PROGRESS", "") not in ("", "0"):
        return True
    return os.environ.get("CMEDU_PROFILE", "").strip().lower() == "smoke"
