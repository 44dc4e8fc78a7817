"""The ELBO, once, for every model: per-example terms, a KL weight, free bits on the optimized KL only.

`elbo(model, batch, ElboSettings(...))` is the math, a pure function that tests call directly;
`Objective(model, config)(batch, step)` is a run's objective: it owns config.objective and asks its schedule
(core/schedules.py: KLSchedule, pretraining included) for the KL weight of the step. A model plugs in as a
`LatentModel` (core/latent.py), or with latent_dim 0 and `log_likelihood(batch, None) -> [B, 1]` (a plain LM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from textvae.config import Config
from textvae.core.flows import sample_posterior
from textvae.core.latent import LatentModel, log_prior, posterior_kl
from textvae.core.schedules import KLSchedule


@dataclass
class ElboTerms:
    loss: Tensor  # scalar to minimize: mean over the batch of rec + kl_weight * optimized KL
    rec: Tensor  # [B] -log p(x|z), one z ~ q(z|x) per example
    kl: Tensor  # [B] true KL(q(z|x) || p(z)), never clipped
    kl_per_dim: Tensor  # [B, D]
    mu: Tensor | None  # [B, D]
    bow: Tensor | None = None  # [B] -log p(bag of words | z) when the bag-of-words loss is on


def free_bits_kl(kl_per_dim: Tensor, free_bits: float, mode: str) -> Tensor:
    """The KL term that is optimized, as a batch mean. kl_per_dim: [B, D] -> scalar.

    mode "dim": sum_j max(free_bits, mean_batch KL_j) (Kingma et al. 2016, per dimension);
    mode "example": mean_batch sum_j max(free_bits, KL_ij) (per dimension of each example: the gradient of Li et
    al. 2019's released fb=2, which masks each example's dimensions below the threshold);
    mode "vector": max(free_bits, mean_batch sum_j KL_j) (a target KL for the whole vector).
    Below the threshold the term is constant, so the encoder gets no pressure towards the prior.
    """
    if free_bits <= 0.0:
        return kl_per_dim.sum(-1).mean()
    if mode == "dim":
        return kl_per_dim.mean(0).clamp(min=free_bits).sum()
    if mode == "example":
        return kl_per_dim.clamp(min=free_bits).sum(-1).mean()
    return kl_per_dim.sum(-1).mean().clamp(min=free_bits)


@dataclass(frozen=True)
class ElboSettings:
    """How one batch's ELBO is computed, all but the model and the batch; `Objective` makes them for each step."""

    kl_weight: float = 1.0  # beta, the weight of the KL term (of log p(z) - log q(z|x) in the IW bound)
    free_bits: float = 0.0  # nats; 0 disables (see free_bits_kl)
    free_bits_mode: str = "dim"  # dim | example | vector (see free_bits_kl)
    iw_samples: int = 1  # k > 1: the importance-weighted bound (Burda et al. 2015)
    sample: bool = True  # False: z = mu, no KL pressure (the autoencoder of objective.pretrain_steps)
    bow_weight: float = 0.0  # weight of the bag-of-words loss (Zhao et al. 2017); 0 disables


def elbo(model: LatentModel, batch: Any, settings: ElboSettings = ElboSettings()) -> ElboTerms:
    """Negative ELBO terms for one batch (per example) and the loss to minimize.

    With `iw_samples` k > 1 the loss is the importance-weighted bound of Burda et al. (IWAE),
    -log (1/k) sum_i p(x|z_i) p(z_i)^w / q(z_i|x)^w with w the KL weight, differentiated through the
    log-sum-exp (the normalized weights are not detached). Free bits do not apply to it.
    `rec` is then averaged over the k samples; `kl` stays the analytic KL of the posterior.
    With a `posterior_flow` on the model (core/flows.py) z is the flow's output and the KL is the
    Monte-Carlo estimate log q(z|x) - log p(z), averaged over the k draws.
    `sample=False` decodes z = mu, or its image under the flow (a deterministic autoencoder, for pretraining).
    `bow_weight` > 0 adds that weight times the bag-of-words loss of the model's `bag_of_words` head
    (Zhao et al. 2017) at the first sample of z; it is not part of the bound and does not reach the decoder.
    """
    if model.latent_dim == 0:
        rec = -model.log_likelihood(batch, None)[:, 0]
        zeros = rec.new_zeros(rec.shape[0], 0)
        return ElboTerms(loss=rec.mean(), rec=rec, kl=rec.new_zeros(rec.shape), kl_per_dim=zeros, mu=None)
    sample, iw_samples, kl_weight = settings.sample, settings.iw_samples, settings.kl_weight
    # pretraining: a model may corrupt its input (a denoising autoencoder) and reconstruct with another loss
    mu, logvar = model.encode(batch) if sample else model.autoencoder_encode(batch)
    if sample:
        z, log_q = sample_posterior(model, mu, logvar, iw_samples)  # [B, k, D], [B, k]
    else:  # the deterministic code: mu, through the flow where there is one (the decoder reads the flow's output)
        z = mu.unsqueeze(1)
        if getattr(model, "posterior_flow", None) is not None:
            z = model.posterior_flow(z)[0]
    likelihood = model.log_likelihood if sample else model.autoencoder_log_likelihood
    log_px_z = likelihood(batch, z).float()  # [B, k]
    log_ratio = None
    if sample and (getattr(model, "posterior_flow", None) is not None or iw_samples > 1):
        log_ratio = log_prior(model, batch, z) - log_q  # [B, k]
    kl_per_dim = posterior_kl(model, batch, mu, logvar, z, log_ratio)  # a flow's: Monte Carlo, from log_ratio
    rec = -log_px_z.mean(1)
    if log_ratio is not None and iw_samples > 1:
        bound = torch.logsumexp(log_px_z + kl_weight * log_ratio, dim=1) - math.log(iw_samples)
        loss = -bound.mean()
    else:
        loss = rec.mean() + kl_weight * free_bits_kl(kl_per_dim, settings.free_bits, settings.free_bits_mode)
    bow = None
    if settings.bow_weight > 0:
        bow = -model.bag_of_words(batch.tokens, z[:, 0])
        loss = loss + settings.bow_weight * bow.mean()
    return ElboTerms(loss=loss, rec=rec, kl=kl_per_dim.sum(-1), kl_per_dim=kl_per_dim, mu=mu, bow=bow)


class Objective(nn.Module):
    """A run's training objective: the ELBO of `model` with config.objective's settings and the KL weight of its
    schedule at the global step. Callers pass a batch and a step; a module, so that DistributedDataParallel can
    wrap it (the model's parameters are its own, under `model.`)."""

    def __init__(self, model: nn.Module, config: Config):
        super().__init__()
        self.model = model
        self.objective_config = config.objective
        self.schedule = KLSchedule(config.objective, config.train.max_steps)

    def settings(self, step: int) -> ElboSettings:
        """The ELBO's settings at the 0-based global `step`: an autoencoder while pretraining (weight 0; z = mu,
        or drawn from q with objective.pretrain_sample)."""
        objective = self.objective_config
        return ElboSettings(
            kl_weight=self.schedule(step),
            free_bits=objective.free_bits,
            free_bits_mode=objective.free_bits_mode,
            iw_samples=objective.iw_samples,
            sample=objective.pretrain_sample or not self.schedule.pretraining(step),
            bow_weight=objective.bow_weight,
        )

    def forward(self, batch: Any, step: int) -> dict[str, Tensor]:
        """{"loss": scalar, "rec": [B], "kl": [B]} and "bow" [B] when the bag-of-words loss is on."""
        terms = elbo(self.model, batch, self.settings(step))
        out = {"loss": terms.loss, "rec": terms.rec, "kl": terms.kl}
        if terms.bow is not None:
            out["bow"] = terms.bow
        return out
