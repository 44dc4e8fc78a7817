"""Gradient steps on a run's objective: the optimizer, the plateau LR schedule, the warm-up, DDP's wrapper."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from textvae.config import Config, OptimConfig
from textvae.core import distributed
from textvae.core.device import autocast, report_precision

STEP_SUMS = ("loss", "rec", "kl", "grad_norm", "bow", "size", "tokens", "signals")  # Stepper.gradients


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    if config.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)  # fmt: skip
    # fused: one pass over each parameter, cheaper than foreach on CPU (docs/performance.md)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def step_with_warmup(optimizer: torch.optim.Optimizer, step: int, warmup_steps: int) -> None:
    """optimizer.step() with the LR scaled by min(1, (step + 1) / warmup_steps), a pure function of the step.

    The plateau scheduler owns the groups' base LR; the warm-up factor is applied for this step only.
    """
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    base = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, base):
        group["lr"] = lr * factor
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, base):
        group["lr"] = lr


class Stepper:
    """The objective's gradient steps: forward under autocast, backward scaled so that DDP's average over ranks is
    the global batch's mean, clipping at optim.grad_clip, the optimizer; the LR decays on validation plateaus."""

    def __init__(self, model: nn.Module, objective: nn.Module, config: Config, device: torch.device, world: int):
        self.model, self.objective, self.module = model, objective, objective
        self.optim, self.device, self.world = config.optim, device, world
        self.precision = report_precision(config.train.precision, device)
        self.compile = config.train.compile
        self.optimizer = build_optimizer(model, config.optim)
        # optim.lr_decay 1 disables the plateau decay (the trainer does not step it then)
        factor = config.optim.lr_decay if config.optim.lr_decay < 1.0 else 0.5
        self.scheduler = ReduceLROnPlateau(self.optimizer, factor=factor, patience=config.optim.lr_patience,
                                           min_lr=config.optim.min_lr)  # fmt: skip

    def distribute(self) -> None:
        """Wrap the objective in DistributedDataParallel when there is more than one process (model on its device),
        then in torch.compile under train.compile. The parameters stay the model's: checkpoints are unchanged."""
        self.module = self.objective
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.module = torch.nn.parallel.DistributedDataParallel(self.objective, device_ids=ids)
        if self.compile != "none":
            self.module = torch.compile(self.module, mode=self.compile)

    def _backward(self, batch: Any, share: float, step: int) -> dict[str, torch.Tensor]:
        with autocast(self.device, self.precision):
            terms = self.module(batch, step)
        self.optimizer.zero_grad(set_to_none=True)
        (terms["loss"] * share * self.world).backward()
        return terms

    def gradients(self, batch: Any, share: float, step: int, frozen: list[nn.Parameter], signalled: bool) -> dict:
        """The loop's gradients at `step`, `frozen` parameters left out, clipped; the global sums of STEP_SUMS
        (gathered on the device, read back with one host sync) and whether the bag-of-words term is there."""
        terms = self._backward(batch, share, step)
        for p in frozen:
            p.grad = None
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip or math.inf)
        counts = torch.tensor([batch.size, batch.num_tokens, float(signalled)], dtype=torch.float64)
        bow = terms["bow"].detach().sum() if "bow" in terms else torch.zeros((), device=grad_norm.device)
        local = torch.cat([
            torch.stack([terms["loss"].detach() * share, terms["rec"].detach().sum(), terms["kl"].detach().sum(),
                         grad_norm.detach() / self.world, bow]).double(),
            counts.to(grad_norm.device),
        ])  # fmt: skip
        return {**dict(zip(STEP_SUMS, distributed.sum_across(local).tolist())), "has_bow": "bow" in terms}

    def apply(self, step: int) -> None:
        """The optimizer step on the gradients of `gradients`, with the LR warm-up."""
        step_with_warmup(self.optimizer, step, self.optim.warmup_steps)

    def update(self, batch: Any, share: float, parameters: list[nn.Parameter], step: int) -> float:
        """An optimizer step of `parameters` alone (a hook's: core/hooks.py, StepAccess.update), without warm-up;
        -> the global loss, NaN when it is not finite (then no step is taken)."""
        terms = self._backward(batch, share, step)
        kept = {id(p) for p in parameters}
        for p in self.model.parameters():
            if id(p) not in kept:
                p.grad = None
        loss = distributed.sum_across(terms["loss"].detach().double() * share).item()
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            return math.nan
        torch.nn.utils.clip_grad_norm_(parameters, self.optim.grad_clip or math.inf)
        self.optimizer.step()
        return loss

    def restart(self) -> None:
        """A new phase of training (the VAE after autoencoder pretraining): no moments, the LR back at optim.lr
        whatever the last phase did, and the plateau schedule's memory of the best objective forgotten."""
        self.optimizer.state.clear()
        for group in self.optimizer.param_groups:
            group["lr"] = self.optim.lr
        scheduler = self.scheduler
        scheduler.best, scheduler.num_bad_epochs, scheduler.cooldown_counter = scheduler.mode_worse, 0, 0
