"""The posterior-collapse remedies' part of training: which parameters are the decoder, the decoder reset,
aggressive inference-network training and the collapse monitor (called by core/trainer.py).

A model's decoder is its `decoder` submodule, or the modules its `decoder_modules()` returns; everything
else (embeddings of the encoder, the posterior layer, a bag-of-words head, a mixture prior) is the
inference side. Aggressive training (He et al. 2019) updates one side at a time; the decoder reset
(Li et al. 2019) re-initializes the decoder alone.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from textvae.config import ObjectiveConfig
from textvae.core import distributed
from textvae.core.device import autocast
from textvae.errors import UserError

log = logging.getLogger(__name__)


def decoder_modules(model: nn.Module) -> list[nn.Module]:
    own = getattr(model, "decoder_modules", None)
    if own is not None:
        return list(own())
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, nn.Module):
        raise UserError(f"{type(model).__name__} has no decoder module: this remedy cannot tell its parts apart")
    return [decoder]


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(inference-side parameters, decoder parameters); together they are all of model.parameters()."""
    decoder = [p for module in decoder_modules(model) for p in module.parameters()]
    ids = {id(p) for p in decoder}
    return [p for p in model.parameters() if id(p) not in ids], decoder


def reset_decoder(model: nn.Module) -> None:
    """Re-initialize every decoder layer as at construction (Li et al. 2019); the encoder keeps its weights.

    Draws from torch's global generator, whose state the checkpoint keeps, so a resumed run matches.
    """
    count = 0
    for module in decoder_modules(model):
        for layer in module.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
                count += 1
    log.info("decoder re-initialized (%d layers)", count)


def aggressive_now(objective: ObjectiveConfig, position: Any) -> bool:
    """Whether the step at `position` trains aggressively: on in the config, past pretraining, before
    objective.aggressive_until (when set), and validation MI has not fallen."""
    step = position.step
    capped = 0 < objective.aggressive_until <= step
    return objective.aggressive and position.aggressive and step >= objective.pretrain_steps and not capped


def encoder_steps(trainer: Any, weight: float, sample: bool) -> int:
    """He et al. (2019)'s inner loop, run by the trainer before an aggressive step: encoder-only steps on
    random batches of this epoch until the summed loss of a window of `aggressive_window` steps is no lower
    than the previous window's, at most `aggressive_max_inner`. The batches are a pure function of
    (seed, step): a resumed run draws the same. Returns the number of steps taken."""
    obj, train = trainer.config.objective, trainer.config.train
    generator = torch.Generator().manual_seed(train.seed * 1_000_003 + trainer.position.step)
    picks = torch.randint(len(trainer._plan), (obj.aggressive_max_inner,), generator=generator).tolist()
    clip = trainer.config.optim.grad_clip or math.inf
    window, previous = 0.0, math.inf
    trainer.model.train()
    for count, pick in enumerate(picks, 1):
        indices = trainer._plan[pick]
        shard = indices[trainer.rank :: trainer.world]
        batch = trainer.data.collate(shard).to(trainer.device)
        share = len(shard) / len(indices)
        with autocast(trainer.device, train.precision):
            terms = trainer.train_module(batch, weight, obj.free_bits, obj.free_bits_mode, obj.iw_samples, sample,
                                         obj.bow_weight)  # fmt: skip
        trainer.optimizer.zero_grad(set_to_none=True)
        (terms["loss"] * share * trainer.world).backward()
        for p in trainer._decoder_params:
            p.grad = None
        loss = distributed.sum_across(terms["loss"].detach().double() * share).item()
        if not math.isfinite(loss):
            trainer.optimizer.zero_grad(set_to_none=True)
            return count - 1
        torch.nn.utils.clip_grad_norm_(trainer._encoder_params, clip)
        trainer.optimizer.step()
        trainer.position.encoder_steps += 1
        window += loss
        if count % obj.aggressive_window == 0:
            if window >= previous:
                return count
            previous, window = window, 0.0
    return len(picks)


def watch_latent(trainer: Any, metrics: dict[str, Any], writer) -> None:
    """At a scheduled evaluation: end aggressive training once validation MI falls (He et al.); warn when the
    KL has stayed below train.collapse_kl for train.collapse_patience evaluations in a row (collapse)."""
    position, step, objective = trainer.position, trainer.position.step, trainer.config.objective
    if getattr(trainer.model, "latent_dim", 0) == 0 or step < objective.pretrain_steps:
        return
    if aggressive_now(objective, position) and "mi" in metrics:
        if metrics["mi"] < position.last_mi:
            position.aggressive = False
            log.info("step %d: validation MI fell (%.3f < %.3f): aggressive training ends after %d encoder-only "
                     "steps", step, metrics["mi"], position.last_mi, position.encoder_steps)  # fmt: skip
        position.last_mi = metrics["mi"]
    writer.add_scalar("val/aggressive", float(aggressive_now(objective, position)), step)
    train = trainer.config.train
    if not train.collapse_patience or "kl" not in metrics:
        return
    position.low_kl_evals = position.low_kl_evals + 1 if metrics["kl"] < train.collapse_kl else 0
    writer.add_scalar("val/collapsed", float(position.low_kl_evals >= train.collapse_patience), step)
    if position.low_kl_evals == train.collapse_patience:
        message = (
            f"step {step}: posterior collapse: validation KL {metrics['kl']:.3f} < {train.collapse_kl} nats for "
            f"{position.low_kl_evals} evaluations in a row (active units {metrics.get('au', '?')}); the decoder "
            "ignores z. Remedies: KL annealing, word dropout, free bits, objective.aggressive, "
            "objective.bow_weight (README: Keeping the latent code alive)"
        )
        log.warning("%s", message)
        writer.add_text("val/collapse_warning", message, step)
