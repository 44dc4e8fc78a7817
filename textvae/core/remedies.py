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

from textvae.config import ObjectiveConfig, TrainConfig
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


def collapse_signals(metrics: dict[str, Any], train: TrainConfig) -> dict[str, str]:
    """The collapse signals that validation `metrics` show, by name (kl, mi, au), each saying what it saw.

    A low KL means z stays at the prior. An x-independent posterior can keep a KL of several nats (free bits
    hold it away from the prior) while z says nothing about x: MI about 0 and no active unit, a decoder as good
    as a language model and no warning from the KL (issue 23). MI and active units measure that information.
    """
    signals = {}
    if "kl" in metrics and metrics["kl"] < train.collapse_kl:
        signals["kl"] = f"KL {metrics['kl']:.3f} < {train.collapse_kl} nats"
    if "mi" in metrics and train.collapse_mi > 0 and metrics["mi"] < train.collapse_mi:
        signals["mi"] = f"MI {metrics['mi']:.3f} < {train.collapse_mi} nats"
    if "au" in metrics and metrics["au"] < train.collapse_au:
        signals["au"] = f"active units {metrics['au']} < {train.collapse_au}"
    return signals


def watch_latent(trainer: Any, metrics: dict[str, Any], writer) -> None:
    """At a scheduled evaluation: end aggressive training once validation MI falls (He et al.); warn once a
    collapse signal (`collapse_signals`) has shown at train.collapse_patience evaluations in a row, naming the
    signals in the log and in TensorBoard (val/collapse_kl, val/collapse_mi, val/collapse_au: 1 when seen)."""
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
    if not train.collapse_patience:
        return
    signals = collapse_signals(metrics, train)
    for name in ("kl", "mi", "au"):
        writer.add_scalar(f"val/collapse_{name}", float(name in signals), step)
    position.collapse_evals = position.collapse_evals + 1 if signals else 0
    writer.add_scalar("val/collapsed", float(position.collapse_evals >= train.collapse_patience), step)
    if position.collapse_evals == train.collapse_patience:
        what = "z stays at the prior" if "kl" in signals else "z carries no information about x, whatever its KL"
        message = (
            f"step {step}: posterior collapse (signal: {', '.join(name.upper() for name in signals)}): "
            f"{'; '.join(signals.values())}, a collapse signal at {position.collapse_evals} evaluations in a row: "
            f"{what}; the decoder ignores z. Remedies: KL annealing, word dropout, free bits, objective.aggressive, "
            "objective.bow_weight (README: Keeping the latent code alive)"
        )
        log.warning("%s", message)
        writer.add_text("val/collapse_warning", message, step)
