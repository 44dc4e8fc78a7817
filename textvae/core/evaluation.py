"""Evaluate a latent-variable model on a split: nelbo, rec, kl, IW nll, ppl, MI and active units."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from tqdm import tqdm

from textvae.core import distributed
from textvae.core.device import autocast
from textvae.core.estimators import (
    AU_SAMPLES,
    active_units,
    iw_chunk,
    iw_log_likelihood,
    iw_log_weights,
    mi_ceiling,
    mutual_information,
    posterior_mean,
)
from textvae.core.gaussian import reparameterize
from textvae.core.objective import LatentModel, kl_divergence, monte_carlo_kl_per_dim


def spread(count: int, limit: int | None) -> list[int]:
    """`limit` indices spread evenly over range(count), the same every time; all of them without a limit."""
    if limit is None or limit >= count:
        return list(range(count))
    return [i * count // limit for i in range(limit)]


@torch.no_grad()
def evaluate(
    model: LatentModel,
    batches: Iterable[Any],
    iw_samples: int,
    device: torch.device,
    precision: str = "fp32",
    token_budget: int = 32768,
    seed: int = 0,
    ppl_unit: str = "token",
    population: str = "split",
) -> dict[str, Any]:
    """Metrics of DESIGN.md over all `batches` (per example, summed over tokens); deterministic under `seed`.

    The encoder runs once per batch; its posterior serves all K importance samples, drawn in chunks
    so that at most about `token_budget` tokens go through the decoder at once. `ppl_unit` "word"
    divides by words (+1 per sentence end) instead of tokens: comparable across subword vocabularies.
    `population` names what the batches are (the whole split, or a part of it) in `mi_over`.
    """
    was_training = model.training
    model.eval()
    totals = {"rec": 0.0, "kl": 0.0, "nll": 0.0}
    examples = tokens = words = 0
    mus, logvars, means = [], [], []  # means: E_q[z|x] of the z the decoder reads, for active units
    kl_sums = None  # per-dimension KL summed over examples
    flow = getattr(model, "posterior_flow", None) is not None
    # one set of base-noise draws for every example: see estimators.posterior_mean
    noise = torch.randn(AU_SAMPLES, model.latent_dim, generator=torch.Generator().manual_seed(seed)) if flow else None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch in tqdm(batches, desc="evaluate", unit="batch", leave=False, disable=None):
            batch = batch.to(device)
            with autocast(device, precision):
                if model.latent_dim == 0:
                    log_px = model.log_likelihood(batch, None)[:, 0].float()
                    rec, kl, nll = -log_px, torch.zeros_like(log_px), -log_px
                else:
                    mu, logvar = model.encode(batch)
                    chunk = iw_chunk(iw_samples, batch.footprint, token_budget)
                    log_w, log_px_z, log_ratio = iw_log_weights(model, batch, mu, logvar, iw_samples, chunk)
                    rec = -log_px_z.mean(1)  # E_q[-log p(x|z)], averaged over the K samples
                    if flow:  # no closed form: the K draws' log q(z|x) - log p(z)
                        kl_terms = monte_carlo_kl_per_dim(log_ratio, mu.shape[-1])
                    else:
                        # a prior other than N(0, I) may need a draw for its KL (a mixture's q(c|x) = p(c|z))
                        z = reparameterize(mu, logvar) if hasattr(model, "kl_divergence") else mu.unsqueeze(1)
                        kl_terms = kl_divergence(model, batch, mu, logvar, z)
                    kl = kl_terms.sum(-1)
                    kl_sums = kl_terms.sum(0) if kl_sums is None else kl_sums + kl_terms.sum(0)
                    nll = -iw_log_likelihood(log_w)
                    mus.append(mu.float().cpu())
                    logvars.append(logvar.float().cpu())
            if flow:  # in fp32, outside autocast: a property of the model, not of bf16
                means.append(posterior_mean(model, mu, logvar, noise).cpu())
            totals["rec"] += float(rec.sum())
            totals["kl"] += float(kl.sum())
            totals["nll"] += float(nll.sum())
            examples += batch.size
            tokens += batch.num_tokens
            words += getattr(batch, "num_words", 0)
        if distributed.active():  # each rank saw a shard of the batches: add up, and pool the posteriors
            summed = distributed.sum_across(
                torch.tensor([totals["rec"], totals["kl"], totals["nll"], examples, tokens, words], dtype=torch.float64)
            )
            totals["rec"], totals["kl"], totals["nll"] = summed[:3].tolist()
            examples, tokens, words = int(summed[3]), int(summed[4]), int(summed[5])
            if model.latent_dim:
                kl_sums = distributed.sum_across(kl_sums if kl_sums is not None else torch.zeros(model.latent_dim))
            mus = [t for part in distributed.gather(mus) for t in part]
            logvars = [t for part in distributed.gather(logvars) for t in part]
            means = [t for part in distributed.gather(means) for t in part]
        mu_all = torch.cat(mus) if mus else torch.zeros(examples, 0)
        logvar_all = torch.cat(logvars) if logvars else torch.zeros(examples, 0)
        # MI of the base Gaussian: the flow is one bijection for all x, which leaves I(x; z) unchanged
        mi = mutual_information(mu_all, logvar_all)
        mean_all = torch.cat(means) if means else mu_all
    model.train(was_training)
    scope = f"{population}, N = {mu_all.shape[0]}" + (", base Gaussian (same MI after the flow)" if flow else "")
    kl_per_dim = kl_sums.cpu() / max(1, examples) if kl_sums is not None else torch.zeros(0)
    rec, kl, nll = (totals[k] / max(1, examples) for k in ("rec", "kl", "nll"))
    metrics = {
        "nelbo": rec + kl,
        "rec": rec,
        "kl": kl,
        "nll": nll,
        "ppl": math.exp(min(700.0, totals["nll"] / max(1, words if ppl_unit == "word" else tokens))),
        "ppl_per": ppl_unit,
        "mi": mi,
        "mi_ceiling": mi_ceiling(mu_all.shape[0]),
        "mi_over": scope,
        "au": active_units(mean_all),
        "sentences": examples,
        "tokens": tokens,
        "words": words,
        "iw_samples": iw_samples if model.latent_dim else 0,
        "kl_per_dim": [round(float(v), 5) for v in kl_per_dim],
    }
    if flow:
        metrics["kl_estimate"] = f"monte-carlo, {iw_samples} draws per example"
        metrics["au_estimate"] = f"E_q[z|x] after the flow from {AU_SAMPLES} draws per example (the same draws for all)"
    return metrics
