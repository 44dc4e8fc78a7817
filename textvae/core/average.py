"""An average of the weights along training, validated and kept in place of the trained ones (optim.average).

`uniform` is Polyak & Juditsky (1992)'s iterate average, the "A" of the averaged SGD that AWD-LSTM (Merity et al.
2018) trains its LSTM language models with: the mean of the parameters after every optim.average_every-th
optimizer step from optim.average_from_step on. `ema` is an exponential moving average with optim.average_decay.
The trainer steps the model's own weights; validation, best.pt and the models rebuilt from it see the average.
Buffers (batch norm's running statistics) are running averages already and stay the model's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from textvae.config import OptimConfig


class WeightAverage:
    """The average of `model`'s parameters along training (optim.average_*); inert for `none`."""

    def __init__(self, model: nn.Module, optim: OptimConfig):
        self.model, self.kind = model, optim.average
        self.from_step, self.every, self.decay = optim.average_from_step, optim.average_every, optim.average_decay
        self.count = 0  # steps averaged since the start or the last restart
        self.averages: list[torch.Tensor] = []  # one per parameter, fp32 like the parameters

    @property
    def active(self) -> bool:
        """Whether there is an average to stand in for the weights."""
        return self.kind != "none" and self.count > 0

    def update(self, step: int) -> None:
        """Fold in the weights after the 0-based optimizer `step`: optim.average_from_step's and every
        optim.average_every-th after it."""
        if self.kind == "none" or step < self.from_step or (step - self.from_step) % self.every:
            return
        params = self._params()
        if self.count == 0:
            self.averages = [p.clone() for p in params]
        else:  # uniform: a_n = a_(n-1) + (p - a_(n-1)) / n; ema: a_n = decay a_(n-1) + (1 - decay) p
            weight = 1.0 / (self.count + 1) if self.kind == "uniform" else 1.0 - self.decay
            torch._foreach_lerp_(self.averages, params, weight)
        self.count += 1

    def _params(self) -> list[torch.Tensor]:
        """The model's parameters (detached), the average moved to their device (a resumed run loads it first)."""
        params = [p.detach() for p in self.model.parameters()]
        if self.averages and self.averages[0].device != params[0].device:
            self.averages = [a.to(params[0].device) for a in self.averages]
        return params

    def restart(self) -> None:
        """Forget the average (a new phase: the VAE after pretraining, or the weights of best.pt reloaded)."""
        self.count, self.averages = 0, []

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the average inside the block and its own weights again after it (unchanged)."""
        if not self.active:
            yield
            return
        params = self._params()
        own = [p.clone() for p in params]
        with torch.no_grad():
            torch._foreach_copy_(params, self.averages)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, own)

    def state_dict(self, in_model: bool = False) -> dict[str, Any]:
        """`in_model`: the checkpoint's weights are the average (best.pt's), so it keeps the count only."""
        return {"count": self.count, "averages": [] if in_model else [a.clone() for a in self.averages]}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore a saved average; a checkpoint from before optim.average (None) or one that keeps the count only
        starts none."""
        state = state or {"count": 0, "averages": []}
        self.averages = list(state["averages"])
        self.count = state["count"] if self.averages else 0
