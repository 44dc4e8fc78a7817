"""Diagonal-Gaussian posterior: reparameterization, log-density, analytic KL to N(0, I)."""

import math

import torch
from torch import Tensor

# exp(logvar) must not overflow nor vanish; +-30 keeps the variance in [1e-13, 1e13].
LOGVAR_BOUND = 30.0
_LOG_2PI = math.log(2 * math.pi)


def bound_logvar(logvar: Tensor) -> Tensor:
    """Clamp log-variances to a range where exp() and the KL stay finite."""
    return logvar.clamp(-LOGVAR_BOUND, LOGVAR_BOUND)


def reparameterize(mu: Tensor, logvar: Tensor, num_samples: int = 1, generator: torch.Generator | None = None
                   ) -> Tensor:  # fmt: skip
    """Draw z = mu + sigma * eps (Kingma & Welling 2014), eps from `generator` (the global stream without one).
    mu, logvar: [B, D] -> z: [B, K, D]."""
    std = torch.exp(0.5 * logvar).unsqueeze(1)
    eps = torch.randn(mu.shape[0], num_samples, mu.shape[1], dtype=mu.dtype, device=mu.device, generator=generator)
    return mu.unsqueeze(1) + std * eps


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per dimension. mu, logvar: [B, D] -> [B, D]."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_normal(mu: Tensor, logvar: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(mu_p, diag exp(logvar_p))) per dimension; broadcasts. -> [..., D]."""
    return 0.5 * (logvar_p - logvar + (logvar.exp() + (mu - mu_p).pow(2)) * torch.exp(-logvar_p) - 1.0)


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag exp(logvar)) summed over the last dimension; broadcasts. -> z.shape[:-1]."""
    return -0.5 * (_LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension. z: [..., D] -> [...]."""
    return -0.5 * (_LOG_2PI + z.pow(2)).sum(-1)


def gaussian_entropy(logvar: Tensor) -> Tensor:
    """Entropy of N(., diag exp(logvar)). logvar: [B, D] -> [B]."""
    return 0.5 * (_LOG_2PI + 1.0 + logvar).sum(-1)
