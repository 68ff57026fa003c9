"""Noise grids and curricula of consistency training.

References: Karras et al. 2022 (EDM) eq. 5; Song et al. 2023 (CM) Appendix C;
Song & Dhariwal 2023 (iCT) Sections 3.3-3.5.
"""
import math

import torch


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """Ascending Karras grid t_1 = sigma_min < ... < t_n = sigma_max (EDM eq. 5, reversed).

    t_i = (sigma_min^(1/rho) + (i-1)/(n-1) * (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho.
    """
    if n < 2:
        raise ValueError(f"karras_sigmas needs n >= 2 points; got n={n}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    t = (lo + ramp * (hi - lo)) ** rho
    t[0], t[-1] = sigma_min, sigma_max  # exact endpoints despite rounding
    return t.float()


def cm_num_steps(k: int, K: int, s0: int = 2, s1: int = 150) -> int:
    """CT curriculum N(k) = ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1) + 1 (CM paper, App. C)."""
    return math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1


def cm_ema_decay(k: int, K: int, s0: int = 2, s1: int = 150, mu0: float = 0.95) -> float:
    """Target-network EMA decay mu(k) = exp(s0 log(mu0) / N(k)) (CM paper, App. C)."""
    return math.exp(s0 * math.log(mu0) / cm_num_steps(k, K, s0, s1))


# The CM paper's CT runs were about 800k steps long (Song et al. 2023, App. C); mu(k) was tuned for that length.
CM_PAPER_STEPS = 800_000
CT_TARGET_SCHEDULES = ("scaled", "paper", "zero")


def ct_target_decay(k: int, K: int, s0: int = 2, s1: int = 150, mu0: float = 0.95, schedule: str = "scaled",
                    paper_steps: int = CM_PAPER_STEPS) -> float:
    """The CT target network's EMA decay mu at step k of a K-step run, by ``schedule``:

    - 'paper': mu(k) = exp(s0 log(mu0) / N(k)) as in the CM paper (App. C). mu depends on N(k) alone, so a run
      much shorter than the paper's keeps theta-'s memory (half-life up to ~1,000 steps) while its curriculum is
      squeezed: on a 3k-step run theta- lags a third of the run behind theta, and the samples collapse.
    - 'scaled': the paper's mu(k) with theta-'s half-life scaled by K / ``paper_steps``, so that it is the same
      *fraction of the run* as in the paper (at most ~0.13 %): mu = mu_paper(k) ** (paper_steps / K).
      Runs of ``paper_steps`` or more get the paper's mu(k).
    - 'zero': mu = 0, theta- = theta under stop-grad (iCT, Song & Dhariwal 2023, Sec. 3.2).
    """
    if schedule not in CT_TARGET_SCHEDULES:
        raise ValueError(f"ct target schedule must be one of {CT_TARGET_SCHEDULES}; got {schedule!r}")
    if schedule == "zero":
        return 0.0
    mu = cm_ema_decay(k, K, s0, s1, mu0)
    return mu if schedule == "paper" else mu ** max(1.0, paper_steps / K)


def ict_num_steps(k: int, K: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT doubling curriculum N(k) = min(s0 * 2^floor(k/K'), s1) + 1, K' = floor(K / (log2 floor(s1/s0) + 1))."""
    k_prime = math.floor(K / (math.log2(math.floor(s1 / s0)) + 1))
    return min(s0 * 2 ** math.floor(k / max(k_prime, 1)), s1) + 1


def lognormal_step_probs(sigmas: torch.Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """iCT's discrete lognormal: P(n) ∝ erf((log t_{n+1} - P_mean)/(√2 P_std)) - erf((log t_n - P_mean)/(√2 P_std)).

    Returns len(sigmas) - 1 probabilities, one per interval [t_n, t_{n+1}] of the ascending grid.
    """
    z = (torch.log(sigmas.double()) - p_mean) / (math.sqrt(2) * p_std)
    p = torch.erf(z[1:]) - torch.erf(z[:-1])
    return (p / p.sum()).float()


def sample_step_indices(n_intervals: int, batch: int, probs=None, generator=None) -> torch.Tensor:
    """Indices n in {0, ..., n_intervals-1} of intervals [t_n, t_{n+1}]: uniform (CM) or from ``probs`` (iCT)."""
    if probs is None:
        return torch.randint(0, n_intervals, (batch,), generator=generator)
    return torch.multinomial(probs, batch, replacement=True, generator=generator)


def lognormal_sigmas(batch: int, p_mean: float = -1.2, p_std: float = 1.2, generator=None) -> torch.Tensor:
    """EDM training noise levels: log sigma ~ N(P_mean, P_std^2) (EDM Table 1)."""
    return torch.exp(p_mean + p_std * torch.randn(batch, generator=generator))
