"""Hooks: the parts of training with their own state, which the trainer calls at named points.

A remedy such as aggressive encoder training, the decoder reset or the collapse monitor (core/remedies.py), or a
model's own step at the end of pretraining (VaDE's mixture initialization), is a `Hook`. The trainer calls,
on every rank:

    before_step(step: StepAccess) -> stats          # before each optimizer step; may take extra steps of its own
    after_evaluation(step, metrics, writer)         # after each scheduled validation (not a report-only one)
    end_of_pretraining(model)                       # once, when objective.pretrain_steps steps are done
    state_dict() / load_state_dict(state)           # saved in the checkpoint under hooks[name]

A hook never sees the trainer: `StepAccess` is all it gets of a step (the step number, this epoch's batches,
an optimizer step on chosen parameters, and a way to keep parameters out of the step's own update), as in
minGPT's callbacks. Its state is a pure function of what it has seen, so a resumed run matches a straight one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class StepAccess:
    """What a hook may use of the optimizer step about to be taken (the trainer makes one for each step)."""

    step: int  # the 0-based global step about to be taken
    num_batches: int  # batches in this epoch's plan
    # index -> this process's part of the epoch's batch `index`, on the device, and its share of the global batch
    batch: Callable[[int], tuple[Any, float]]
    # (batch, share, parameters) -> one optimizer step of `parameters` alone on the objective at this step (their
    # gradients clipped as the run's, the others' dropped); the global loss, NaN when not finite (no step taken)
    update: Callable[[Any, float, list[nn.Parameter]], float]
    frozen: list[nn.Parameter] = field(default_factory=list)  # left out of this step's own update

    def freeze(self, parameters: list[nn.Parameter]) -> None:
        """Keep `parameters` out of this step's own update."""
        self.frozen.extend(parameters)


class Hook:
    """A no-op at every point; subclasses override what they need. `name` keys its state in the checkpoint."""

    name = "hook"

    def before_step(self, step: StepAccess) -> dict[str, float]:
        """Called before each optimizer step; returns scalars to log with it (train/<key>)."""
        return {}

    def after_evaluation(self, step: int, metrics: dict[str, Any], writer: Any) -> None:
        """Called after each scheduled validation at the global `step` (TensorBoard's `writer` on rank 0)."""

    def end_of_pretraining(self, model: nn.Module) -> None:
        """Called once, when the autoencoder phase (objective.pretrain_steps) ends."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


class AtEndOfPretraining(Hook):
    """A stateless hook that runs `function(model)` when the autoencoder phase ends."""

    def __init__(self, name: str, function: Callable[[nn.Module], None]):
        self.name, self.function = name, function

    def end_of_pretraining(self, model: nn.Module) -> None:
        self.function(model)


def load_hook_states(hooks: list[Hook], states: dict[str, dict[str, Any]]) -> None:
    """Give each hook its state from a checkpoint's `hooks` (a hook new to the run keeps its initial state)."""
    for hook in hooks:
        if hook.name in states:
            hook.load_state_dict(states[hook.name])
