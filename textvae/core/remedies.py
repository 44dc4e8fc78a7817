"""The posterior-collapse remedies' part of training, as hooks (core/hooks.py) the trainer calls: aggressive
inference-network training, the decoder reset at the end of pretraining and the collapse monitor; and which
parameters are the decoder.

A model's decoder is what its `decoder_modules()` returns (core/latent.py: its `decoder` submodule); everything
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

from textvae.config import Config, ObjectiveConfig, TrainConfig
from textvae.core.hooks import AtEndOfPretraining, Hook, StepAccess
from textvae.core.latent import LatentModel

log = logging.getLogger(__name__)


def split_parameters(model: LatentModel) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(inference-side parameters, decoder parameters); together they are all of model.parameters()."""
    decoder = [p for module in model.decoder_modules() for p in module.parameters()]
    ids = {id(p) for p in decoder}
    return [p for p in model.parameters() if id(p) not in ids], decoder


def reset_decoder(model: LatentModel) -> None:
    """Re-initialize every decoder layer as at construction (Li et al. 2019); the encoder keeps its weights.

    Draws from torch's global generator, whose state the checkpoint keeps, so a resumed run matches.
    """
    count = 0
    for module in model.decoder_modules():
        for layer in module.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
                count += 1
        if hasattr(module, "init_weights"):  # a decoder's own initialization over torch's defaults (Transformers)
            module.init_weights()
    log.info("decoder re-initialized (%d layers)", count)


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


def remedy_hooks(model: nn.Module, config: Config) -> list[Hook]:
    """The hooks of the remedies `config` asks for, for a model with a latent code: aggressive training, the
    decoder reset at the end of pretraining, and the collapse monitor (always; train.collapse_patience 0 mutes it)."""
    if not getattr(model, "latent_dim", 0):
        return []
    objective = config.objective
    hooks: list[Hook] = []
    if objective.aggressive:
        hooks.append(AggressiveTraining(model, objective, config.train.seed))
    if objective.reset_decoder:
        hooks.append(AtEndOfPretraining("decoder_reset", reset_decoder))
    hooks.append(CollapseMonitor(config.train, objective.pretrain_steps, getattr(model, "to_posterior", None)))
    return hooks


def legacy_hook_states(position: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The remedies' state in a checkpoint written before they were hooks (issue 21): fields of its position."""
    return {
        "aggressive": {
            "active": position.get("aggressive", True),
            "last_mi": position.get("last_mi", -math.inf),
            "encoder_steps": position.get("encoder_steps", 0),
        },
        # low_kl_evals: the name before MI and active units counted
        "collapse_monitor": {"evals": position.get("collapse_evals", position.get("low_kl_evals", 0))},
    }


class AggressiveTraining(Hook):
    """He et al. (2019): before each decoder step, encoder-only steps until the encoder catches up; the decoder
    step then leaves the encoder as it is. On from the end of pretraining until validation MI falls (for good)
    or objective.aggressive_until."""

    name = "aggressive"

    def __init__(self, model: nn.Module, objective: ObjectiveConfig, seed: int):
        self.encoder, _ = split_parameters(model)
        self.objective, self.seed = objective, seed
        self.active = True  # until validation MI falls
        self.last_mi = -math.inf  # validation MI at the previous evaluation
        self.encoder_steps = 0  # encoder-only steps taken

    def on_at(self, step: int) -> bool:
        """Whether `step` trains aggressively: past pretraining, before aggressive_until (when set), MI not fallen."""
        objective = self.objective
        capped = 0 < objective.aggressive_until <= step
        return self.active and step >= objective.pretrain_steps and not capped

    def before_step(self, step: StepAccess) -> dict[str, float]:
        inner = 0
        if self.on_at(step.step):
            inner = self._inner_loop(step)
            step.freeze(self.encoder)  # after the encoder's inner loop, the step updates the decoder only
        return {"encoder_steps": float(inner)}

    def _inner_loop(self, step: StepAccess) -> int:
        """Encoder-only steps on random batches of this epoch until the summed loss of a window of
        `aggressive_window` steps is no lower than the previous window's, at most `aggressive_max_inner`. The
        batches are a pure function of (seed, step): a resumed run draws the same. -> steps taken."""
        objective = self.objective
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step.step)
        picks = torch.randint(step.num_batches, (objective.aggressive_max_inner,), generator=generator).tolist()
        window, previous = 0.0, math.inf
        for count, pick in enumerate(picks, 1):
            loss = step.update(*step.batch(pick), self.encoder)
            if not math.isfinite(loss):
                return count - 1
            self.encoder_steps += 1
            window += loss
            if count % objective.aggressive_window == 0:
                if window >= previous:
                    return count
                previous, window = window, 0.0
        return len(picks)

    def after_evaluation(self, step: int, metrics: dict[str, Any], writer: Any) -> None:
        """He et al.: aggressive training ends for good once validation MI falls."""
        if step < self.objective.pretrain_steps:
            return
        if self.on_at(step) and "mi" in metrics:
            if metrics["mi"] < self.last_mi:
                self.active = False
                log.info("step %d: validation MI fell (%.3f < %.3f): aggressive training ends after %d encoder-only "
                         "steps", step, metrics["mi"], self.last_mi, self.encoder_steps)  # fmt: skip
            self.last_mi = metrics["mi"]
        writer.add_scalar("val/aggressive", float(self.on_at(step)), step)

    def state_dict(self) -> dict[str, Any]:
        return {"active": self.active, "last_mi": self.last_mi, "encoder_steps": self.encoder_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active, self.last_mi, self.encoder_steps = state["active"], state["last_mi"], state["encoder_steps"]


class CollapseMonitor(Hook):
    """At each scheduled evaluation after pretraining: warn once a collapse signal (`collapse_signals`) has shown at
    train.collapse_patience evaluations in a row, naming the signals in the log and in TensorBoard
    (val/collapse_kl, val/collapse_mi, val/collapse_au: 1 when seen; val/collapsed)."""

    name = "collapse_monitor"

    def __init__(self, train: TrainConfig, pretrain_steps: int, posterior: nn.Module | None = None):
        self.train, self.pretrain_steps = train, pretrain_steps
        self.posterior = posterior  # the model's posterior head: a BN-VAE's says when its KL floor is lost
        self.evals = 0  # evaluations in a row with a collapse signal

    def after_evaluation(self, step: int, metrics: dict[str, Any], writer: Any) -> None:
        train = self.train
        if step < self.pretrain_steps or not train.collapse_patience:
            return
        signals = collapse_signals(metrics, train)
        for name in ("kl", "mi", "au"):
            writer.add_scalar(f"val/collapse_{name}", float(name in signals), step)
        self.evals = self.evals + 1 if signals else 0
        writer.add_scalar("val/collapsed", float(self.evals >= train.collapse_patience), step)
        if self.evals == train.collapse_patience:
            what = "z stays at the prior" if "kl" in signals else "z carries no information about x, whatever its KL"
            floor_lost = getattr(self.posterior, "floor_lost", lambda: None)()
            remedies = floor_lost or ("Remedies: KL annealing, word dropout, free bits, objective.aggressive, "
                                      "objective.bow_weight (README: Keeping the latent code alive)")  # fmt: skip
            message = (
                f"step {step}: posterior collapse (signal: {', '.join(name.upper() for name in signals)}): "
                f"{'; '.join(signals.values())}, a collapse signal at {self.evals} evaluations in a row: "
                f"{what}; the decoder ignores z. {remedies}"
            )
            log.warning("%s", message)
            writer.add_text("val/collapse_warning", message, step)

    def state_dict(self) -> dict[str, Any]:
        return {"evals": self.evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.evals = state["evals"]
