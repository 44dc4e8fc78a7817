"""Evaluation estimators: importance-weighted log-likelihood (Burda et al. 2015), MI and active units."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from textvae.core.flows import sample_posterior
from textvae.core.gaussian import log_normal, reparameterize
from textvae.core.latent import LatentModel, log_prior


def iw_chunk(num_samples: int, footprint: int, token_budget: int) -> int:
    """Importance samples per decoder pass, so that about `token_budget` tokens (pixels) go through at once."""
    return max(1, min(num_samples, token_budget // max(1, footprint)))


def iw_log_weights(model: LatentModel, batch, mu: Tensor, logvar: Tensor, num_samples: int, chunk: int) -> Tensor:
    """log p(x|z_k) + log p(z_k) - log q(z_k|x) for z_k ~ q(z|x), and log p(x|z_k).

    mu, logvar: [B, D] (one encoder pass, reused by every sample); samples are drawn `chunk` at a
    time to bound memory. q is the model's flow posterior when it has one (core/flows.py).
    Returns three tensors [B, K]: the log importance weights, log p(x|z_k) and log p(z_k) - log q(z_k|x).
    """
    weights, likelihoods, ratios = [], [], []
    for start in range(0, num_samples, chunk):
        z, log_q = sample_posterior(model, mu, logvar, min(chunk, num_samples - start))  # [B, k, D], [B, k]
        log_ratio = log_prior(model, batch, z) - log_q
        log_px_z = model.log_likelihood(batch, z).float()  # [B, k]
        weights.append(log_px_z + log_ratio)
        likelihoods.append(log_px_z)
        ratios.append(log_ratio)
    return torch.cat(weights, 1), torch.cat(likelihoods, 1), torch.cat(ratios, 1)


def iw_log_likelihood(log_weights: Tensor) -> Tensor:
    """log (1/K) sum_k w_k, the importance-weighted bound on log p(x). [B, K] -> [B]."""
    return torch.logsumexp(log_weights, dim=1) - math.log(log_weights.shape[1])


def mutual_information(mu: Tensor, logvar: Tensor, chunk: int = 512, generator: torch.Generator | None = None) -> float:
    """I_q(x; z) = E_x E_q(z|x)[log q(z|x) - log q(z)], q(z) the aggregate posterior of all N rows.

    mu, logvar: [N, D], the posteriors of a whole split. One z per x, drawn with `generator` (on mu's device; the
    global random stream without one); log q(z) by logsumexp over N.
    """
    n = mu.shape[0]
    if n == 0 or mu.shape[1] == 0:
        return 0.0
    chunk = max(1, min(chunk, MI_BLOCK // n))  # rows at a time: [chunk, N] float64 blocks of at most 128 MB
    mu, logvar = mu.float(), logvar.float()
    z = reparameterize(mu, logvar, generator=generator)[:, 0]  # [N, D]
    # log q(z|x) at the same draw as log q(z) (not the analytic entropy): the noise of the two cancels.
    log_qz_x = log_normal(z, mu, logvar).mean()
    # log N(z_i; mu_j, s_j^2) for all pairs as matmuls: the quadratic form expanded, in float64
    z64, mu64, precision = z.double(), mu.double(), torch.exp(-logvar.double())  # [N, D] each
    const = -0.5 * (mu.shape[1] * math.log(2 * math.pi) + logvar.double().sum(1) + (mu64.pow(2) * precision).sum(1))
    log_qz = []
    for start in range(0, n, chunk):
        z_part = z64[start : start + chunk]  # [c, D]
        quad = z_part.pow(2) @ precision.T - 2.0 * z_part @ (mu64 * precision).T  # [c, N]
        log_dens = const.unsqueeze(0) - 0.5 * quad
        log_qz.append(torch.logsumexp(log_dens, dim=1) - math.log(n))
    return float(log_qz_x - torch.cat(log_qz).mean())


MI_BLOCK = 1 << 24  # elements of one [rows, N] block of mutual_information


def mi_ceiling(count: int) -> float:
    """log N: the most `mutual_information` can report over N examples (the MI of their empirical distribution).

    Near it the estimate is biased low (a true MI of 9 nats over 32 dimensions reads 7.7 at N = 10,000), so an
    `mi` close to log N says "at least this much", not "this much"."""
    return math.log(count) if count > 0 else 0.0


AU_SAMPLES = 128  # draws per example of the base noise for E_q[z|x] under a flow (posterior_mean)


def posterior_mean(model: LatentModel, mu: Tensor, logvar: Tensor, noise: Tensor) -> Tensor:
    """E_q[z|x] of the z the decoder reads, for active units. mu, logvar: [B, D]; noise: [S, D] -> [B, D] (fp32).

    Without a flow it is mu. Through a flow it is the mean of z_L = f(mu + sigma * noise_s) over the S draws.
    The draws are the same for every x (common random numbers): a dimension where q(z|x) does not depend on x
    then varies by exactly 0 across x, instead of by the Monte-Carlo noise Var_q[z|x] / S (0.008 for S = 128
    and sigma = 1, close to the 0.01 threshold of an active unit).
    """
    flow = getattr(model, "posterior_flow", None)
    if flow is None:
        return mu.float()
    z_0 = mu.float().unsqueeze(1) + torch.exp(0.5 * logvar.float()).unsqueeze(1) * noise.to(mu.device)  # [B, S, D]
    return flow(z_0)[0].float().mean(1)


def base_noise(latent_dim: int, seed: int = 0) -> Tensor:
    """AU_SAMPLES seeded draws of the base noise [S, D], the same for every x (see posterior_mean)."""
    return torch.randn(AU_SAMPLES, latent_dim, generator=torch.Generator().manual_seed(seed))


def decoder_code(model: LatentModel, mu: Tensor, logvar: Tensor) -> Tensor:
    """E_q[z|x] of the z the decoder reads, the code decoded from a sentence's posterior: mu ([B, D], fp32), or
    under a flow the mean of its images of the seeded base draws (posterior_mean; mu itself is never decoded)."""
    return posterior_mean(model, mu, logvar, base_noise(mu.shape[1]))


def active_units(mu: Tensor, threshold: float = 0.01) -> int:
    """Number of dimensions with Cov_x(E_q[z|x]) above `threshold`. mu: [N, D], E_q[z|x] per example (the
    posterior means, or `posterior_mean`'s estimate under a flow)."""
    if mu.shape[0] < 2 or mu.shape[1] == 0:
        return 0
    return int((mu.float().var(dim=0, unbiased=False) > threshold).sum())
