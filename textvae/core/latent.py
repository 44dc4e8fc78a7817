"""The base class of the models with a latent code, and the one rule for the KL terms of their posterior.

A latent model subclasses `LatentModel` and gives two methods (text and image alike):

    latent_dim: int
    encode(batch) -> (mu, logvar)                     # [B, D] each: q(z|x) = N(mu, diag exp(logvar))
    log_likelihood(batch, z) -> log p(x|z)            # z: [B, K, D] -> [B, K]

and inherits defaults that a model overrides where it differs:

    log_prior(batch, z) -> log p(z)                   # z: [B, K, D] -> [B, K]; N(0, I)
    kl_divergence(batch, mu, logvar, z) -> [B, D]     # terms summing to KL(q(z|x) || p(z)); analytic to N(0, I);
                                                      # z: [B, 1, D], a draw (a mixture's q(c|x) = p(c|z) needs it)
    autoencoder_encode(batch), autoencoder_log_likelihood(batch, z)   # the autoencoder pretraining phase's (z = mu)
    decoder_modules() -> [nn.Module]                  # p(x|z)'s layers (decoder reset, aggressive training)

A model whose prior is not N(0, I) (a conditional prior, a mixture) overrides `log_prior` and `kl_divergence`;
`own_prior` then says so. A posterior flow is attached as `posterior_flow` (core/flows.py: attach_flow).
A model without a latent code (a language model) has latent_dim 0 and needs none of this.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from torch import Tensor, nn

from textvae.core.gaussian import kl_standard_normal, log_standard_normal, reparameterize
from textvae.errors import UserError


class LatentModel(nn.Module):
    latent_dim: int
    own_prior = False  # set for each subclass: True when it overrides log_prior or kl_divergence

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.own_prior = cls.log_prior is not LatentModel.log_prior or cls.kl_divergence is not LatentModel.kl_divergence

    @abstractmethod
    def encode(self, batch: Any) -> tuple[Tensor, Tensor]:
        """q(z|x): mu, logvar [B, D] each. Every latent model defines it."""
        raise NotImplementedError

    @abstractmethod
    def log_likelihood(self, batch: Any, z: Tensor) -> Tensor:
        """log p(x|z): z [B, K, D] -> [B, K]. Every latent model defines it."""
        raise NotImplementedError

    def log_prior(self, batch: Any, z: Tensor) -> Tensor:
        """log N(z; 0, I). z: [B, K, D] -> [B, K]."""
        return log_standard_normal(z)

    def kl_divergence(self, batch: Any, mu: Tensor, logvar: Tensor, z: Tensor | None) -> Tensor:
        """KL(N(mu, diag exp(logvar)) || N(0, I)) per dimension, analytic (z unused). -> [B, D]."""
        return kl_standard_normal(mu, logvar)

    def autoencoder_encode(self, batch: Any) -> tuple[Tensor, Tensor]:
        """The encoder of the autoencoder pretraining phase (a denoising one may corrupt its input)."""
        return self.encode(batch)

    def autoencoder_log_likelihood(self, batch: Any, z: Tensor) -> Tensor:
        """The reconstruction term of the autoencoder pretraining phase."""
        return self.log_likelihood(batch, z)

    def decoder_modules(self) -> list[nn.Module]:
        """p(x|z)'s layers: the `decoder` submodule; everything else is the inference side."""
        decoder = getattr(self, "decoder", None)
        if not isinstance(decoder, nn.Module):
            raise UserError(f"{type(self).__name__} has no decoder module: this remedy cannot tell its parts apart")
        return [decoder]


def log_prior(model: LatentModel, batch: Any, z: Tensor) -> Tensor:
    """log p(z) under the model's prior, in fp32. z: [B, K, D] -> [B, K]."""
    return model.log_prior(batch, z.float()).float()


def monte_carlo_kl_per_dim(log_ratio: Tensor, dim: int) -> Tensor:
    """KL estimated as the mean over draws of log q(z|x) - log p(z), spread evenly over the D dimensions (a
    flow posterior has no per-dimension split). log_ratio = log p(z) - log q(z|x): [B, K] -> [B, D]."""
    return (-log_ratio.mean(1) / dim).unsqueeze(-1).expand(-1, dim)


def posterior_kl(
    model: LatentModel, batch: Any, mu: Tensor, logvar: Tensor, z: Tensor | None = None, log_ratio: Tensor | None = None
) -> Tensor:
    """KL(q(z|x) || p(z)) as [B, D] terms (fp32), by the one rule of the ELBO, the evaluation and the gap report:

    - a flow posterior, given `log_ratio` = log p(z) - log q(z|x) at K draws [B, K]: no closed form, the
      Monte-Carlo estimate (`monte_carlo_kl_per_dim`);
    - a model with its own prior: its `kl_divergence` at one draw, the first of `z` [B, K, D], else drawn here;
    - else the analytic KL to N(0, I).
    """
    if log_ratio is not None and getattr(model, "posterior_flow", None) is not None:
        return monte_carlo_kl_per_dim(log_ratio, mu.shape[-1])
    if z is None:
        z = reparameterize(mu, logvar) if model.own_prior else mu.unsqueeze(1)
    return model.kl_divergence(batch, mu.float(), logvar.float(), z[:, :1].float())
