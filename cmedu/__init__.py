"""cmedu: consistency models, learned by running them.

Conventions (Song et al. 2023): time t is the noise level sigma,
x_t = x_0 + t * z, eps = 0.002, T = 80, sigma_data = 0.5, rho = 7.
"""
from .profiles import get_profile, profile_value

EPS = 0.002
T_MAX = 80.0
SIGMA_DATA = 0.5

__version__ = "0.1.0"
__all__ = ["EPS", "T_MAX", "SIGMA_DATA", "get_profile", "profile_value"]
