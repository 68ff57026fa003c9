"""Shared pytest setup for the cmedu unit tests: one CPU thread, quiet progress bars (the profile: ../conftest.py)."""
import os

import pytest
import torch

os.environ.setdefault("CMEDU_NO_PROGRESS", "1")
torch.set_num_threads(1)


@pytest.fixture
def mixture():
    """An exact 8-mode ring Gaussian mixture with tight modes (std 0.06): steep flow maps make solver errors show."""
    from cmedu.toy import ring_mixture

    return ring_mixture(std=0.06)
