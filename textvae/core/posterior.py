"""The posterior head shared by the latent models: features -> (mu, logvar) of a diagonal Gaussian q(z|x)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textvae.core.gaussian import bound_logvar


class PosteriorHead(nn.Linear):
    """features [B, F] -> mu, logvar [B, D], in fp32; one linear map (its weights keep nn.Linear's names).

    With `bn_gamma` > 0 the mean is batch-normalized with a fixed scale gamma and a learned shift beta (BN-VAE,
    Zhu et al. 2020): over a training batch each mu_d then has mean beta_d and variance gamma^2, so the batch's
    mean KL to N(0, I) is at least D gamma^2 / 2 + |beta|^2 / 2 and the posterior cannot collapse to the prior.
    Evaluation normalizes with the running statistics, as batch normalization does.
    """

    def __init__(self, features: int, latent_dim: int, bn_gamma: float = 0.0):
        super().__init__(features, 2 * latent_dim)
        self.bn_gamma = bn_gamma
        if bn_gamma > 0:
            self.mean_norm = nn.BatchNorm1d(latent_dim, affine=False)
            self.mean_shift = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = super().forward(features).float().chunk(2, dim=-1)
        if self.bn_gamma > 0:
            mu = self.bn_gamma * self._normalize(mu) + self.mean_shift
        return mu, bound_logvar(logvar)

    def floor_lost(self) -> str | None:
        """Why gamma no longer floors the KL, when it does not: the means' running batch variance has fallen to
        within 100 x batch norm's eps (the normalized means then shrink with it); None while the floor holds."""
        if self.bn_gamma <= 0:
            return None
        variance, eps = float(self.mean_norm.running_var.min()), self.mean_norm.eps
        if variance >= 100 * eps:
            return None
        return (f"with model.bn_gamma the posterior means' batch variance ({variance:.1e}) is down at batch norm's "
                f"eps ({eps:g}), where gamma no longer floors the KL: start the encoder from torch's initialization "
                "(model.init default or uniform_decoder), not from U(-0.01, 0.01)")  # fmt: skip

    def _normalize(self, mu: Tensor) -> Tensor:
        """Batch statistics in training (a batch of one falls back to the running ones), running ones otherwise."""
        norm = self.mean_norm
        batch_stats = self.training and mu.shape[0] > 1
        with torch.autocast(mu.device.type, enabled=False):
            return F.batch_norm(mu, norm.running_mean, norm.running_var, training=batch_stats,
                                momentum=norm.momentum, eps=norm.eps)  # fmt: skip
