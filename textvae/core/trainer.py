"""One training loop for every model, text or image: steps, evaluation, checkpoints, signals, exact resume.

The loop knows steps, batches, checkpoints and signals, and nothing of the model or the remedies: the objective
(core/objective.py) owns the ELBO's settings and the KL schedule; anything with its own state is a hook
(core/hooks.py), called at named points, its state saved in the checkpoint under `hooks`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import monotonic, perf_counter
from typing import Any, Protocol

import torch
from torch import nn

from textvae.config import Config, OptimConfig, to_dict
from textvae.core import distributed
from textvae.core.average import WeightAverage
from textvae.core.checkpoint import load_checkpoint, remove_partial_writes, restore_rng, rng_state, save_checkpoint
from textvae.core.hooks import Hook, StepAccess, load_hook_states
from textvae.core.logs import TrainingLog, TrainWindow, drop_metrics, drop_metrics_after
from textvae.core.objective import Objective
from textvae.core.optim import Stepper
from textvae.core.refit import restore_trained_best
from textvae.core.remedies import legacy_hook_states, remedy_hooks
from textvae.core.signals import StopSignals
from textvae.errors import TrainingStopped, UserError

log = logging.getLogger(__name__)


def merge_short_tail(starts: Sequence[int], total: int, min_sentences: int) -> Sequence[int]:
    """Batch starts over `total` sentences with a last batch of fewer than `min_sentences` joined to the one before
    it (which then holds fewer than batch_size + min_sentences): under torchrun every process needs a sentence of
    each batch, and a batch it could not share would be dropped, the same long sentences every epoch."""
    if len(starts) > 1 and total - starts[-1] < min_sentences:
        return starts[:-1]
    return starts


class BatchSource(Protocol):
    def plan(self, epoch: int, batch_size: int, max_tokens: int = 0, seed: int = 0,
             min_sentences: int = 1) -> list[list[int]]: ...  # fmt: skip

    def collate(self, indices: list[int]) -> Any: ...


@dataclass
class Position:
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch: int = 0  # batches of this epoch's plan already used
    best: float = math.inf  # best validation objective (nelbo)
    bad_evals: int = 0  # evaluations since the best one
    decays: int = 0  # plateau decays of the LR in this phase (optim.max_decays)
    skipped: int = 0  # steps skipped for a non-finite loss or gradient
    skipped_in_row: int = 0


def decays_in(lr: float, optim: OptimConfig) -> int:
    """How many plateau decays took optim.lr down to `lr` (a checkpoint saved before Position.decays)."""
    if not 0.0 < optim.lr_decay < 1.0 or lr >= optim.lr:
        return 0
    return max(0, round(math.log(lr / optim.lr) / math.log(optim.lr_decay)))


class Trainer:
    """Trains `model` on `data` with its objective; `evaluate(model)` returns validation metrics.

    `report_text(model)`, when given, returns {tag: text} logged to TensorBoard at each evaluation;
    `report_images(model)` returns {tag: image [3, H, W] in [0, 1]}, logged too. `hooks` join the remedies
    that config asks for (core/remedies.py). With objective.pretrain_steps P > 0 the first P steps train a
    deterministic autoencoder; then the hooks' end_of_pretraining runs once, and the optimizer state, the LR
    (back to optim.lr) and the best objective are reset; the state after step P (its evaluation included) is kept
    in checkpoints/pretrained.pt, from which a run differing only in its VAE phase can start.
    """

    def __init__(self, model: nn.Module, data: BatchSource, evaluate: Callable[[nn.Module], dict[str, Any]],
                 config: Config, run_dir: Path, device: torch.device,
                 report_text: Callable[[nn.Module], dict[str, str]] | None = None,
                 report_images: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None,
                 hooks: list[Hook] | tuple[Hook, ...] = ()):  # fmt: skip
        self.model, self.data, self.evaluate_fn, self.report_text = model, data, evaluate, report_text
        self.report_images, self.config, self.run_dir, self.device = report_images, config, Path(run_dir), device
        self.position = Position()
        self.seconds = 0.0  # wall time of training so far, evaluations included, summed over resumed sessions
        self._clock = monotonic()  # when self.seconds was last brought up to date (_tick)
        self.hooks = [*remedy_hooks(model, config), *hooks]
        self._carried: dict[str, Any] = {}  # hook states of the checkpoint that no hook of this run claims
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.objective = Objective(model, config)
        self.stepper = Stepper(model, self.objective, config, device, self.world)
        self.optimizer, self.scheduler = self.stepper.optimizer, self.stepper.scheduler
        self.average = WeightAverage(model, config.optim)  # what validation and best.pt see (optim.average)
        self.signals = StopSignals()
        self._plan: list[list[int]] = []  # this epoch's batches
        self._window = TrainWindow()  # steps since the last train/ log
        self.last_path = self.run_dir / "checkpoints" / "last.pt"
        self.best_path = self.run_dir / "checkpoints" / "best.pt"
        self.pretrained_path = self.run_dir / "checkpoints" / "pretrained.pt"

    def state_dict(self, averaged: bool = False) -> dict[str, Any]:
        """`averaged`: the model holds optim.average's average now (best.pt), which the state then keeps once."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "position": vars(self.position).copy(),
            "seconds": self.seconds,
            "hooks": {**self._carried, **{hook.name: hook.state_dict() for hook in self.hooks}},
            "average": self.average.state_dict(in_model=averaged),
            "rng": rng_state(),
            "rng_ranks": distributed.gather(rng_state()) if self.world > 1 else [],
            "config": to_dict(self.config),
        }

    def save(self, path: Path, averaged: bool = False) -> None:
        """Every rank takes part in building the state (RNG states are gathered); rank 0 writes it."""
        state = self.state_dict(averaged)
        if self.rank == 0:
            save_checkpoint(state, path)

    def resume(self) -> bool:
        """Restore everything from last.pt when it exists; return whether it did."""
        remove_partial_writes(self.last_path.parent)
        if not self.last_path.is_file():
            # ranks draw different dropout masks and z samples, like the examples of one big batch
            torch.manual_seed(self.config.train.seed + self.rank)
            return False
        state = load_checkpoint(self.last_path)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError:
            raise UserError(f"{self.last_path}: checkpoint is of another model or vocabulary") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.patience = self.config.optim.lr_patience  # the config's rule, not the state's copy of it
        fields = {field.name for field in dataclasses.fields(Position)}
        self.position = Position(**{key: value for key, value in state["position"].items() if key in fields})
        if "decays" not in state["position"]:  # saved before optim.max_decays: the count is in the LR
            self.position.decays = decays_in(self.optimizer.param_groups[0]["lr"], self.config.optim)
        self.seconds = float(state.get("seconds", 0.0))
        self.average.load_state_dict(state.get("average"))
        self._carried = dict(state.get("hooks") or {})
        # before issue 21 the remedies' state sat in the position; it is theirs now
        load_hook_states(self.hooks, state.get("hooks") or legacy_hook_states(state["position"]))
        if not restore_rng(state, self.rank, self.world):
            log.warning("resuming on %d processes a run saved on another number: random streams restart", self.world)
            torch.manual_seed(self.config.train.seed + self.rank + self.position.step)
        if self.rank == 0:
            drop_metrics_after(self.run_dir, self.position.step)
        log.info("resumed %s at step %d", self.run_dir, self.position.step)
        return True

    def train_step(self, batch: Any, share: float = 1.0) -> dict[str, float] | None:
        """One optimizer step on this rank's `share` of the global batch, after the hooks' before_step.

        Returns global scalars to log, or None when the step was skipped (non-finite loss or gradient).
        """
        step = self.position.step
        self.model.train()
        access = StepAccess(step, len(self._plan), lambda index: self.shard(self._plan[index]),
                            lambda batch, part, params: self.stepper.update(batch, part, params, step))  # fmt: skip
        extra = {key: value for hook in self.hooks for key, value in hook.before_step(access).items()}
        sums = self.stepper.gradients(batch, share, step, access.frozen, self.signals.received)
        self.signals.agree(sums["signals"])  # all ranks stop after the same step
        self._window.add(None, sums["tokens"])
        if not (math.isfinite(sums["loss"]) and math.isfinite(sums["grad_norm"])):
            self.position.skipped += 1
            self.position.skipped_in_row += 1
            log.warning("step %d: non-finite loss or gradient, step skipped", step)
            if self.position.skipped_in_row >= self.config.train.max_nonfinite_steps:
                raise TrainingStopped(f"{self.position.skipped_in_row} non-finite steps in a row at step {step}: the "
                                      f"run diverged; {self.last_path} holds the last good state (try a lower "
                                      "optim.lr)", exit_code=3)  # fmt: skip
            return None
        self.position.skipped_in_row = 0
        self.stepper.apply(step)
        self.average.update(step)
        size = sums["size"]
        stats = {"loss": sums["loss"], "rec": sums["rec"] / size, "kl": sums["kl"] / size,
                 "kl_weight": self.objective.schedule(step), "grad_norm": sums["grad_norm"]}  # fmt: skip
        if sums["has_bow"]:
            stats["bow"] = sums["bow"] / size
        return {**stats, **extra}

    def shard(self, indices: list[int]) -> tuple[Any, float]:
        """This rank's part of the global batch `indices` (the same plan on every rank, split), and its share."""
        part = indices[self.rank :: self.world]
        return self.data.collate(part).to(self.device), len(part) / len(indices)

    def fit(self) -> dict[str, Any] | None:
        """Train until train.max_steps (or early stopping); return the last validation metrics.

        SIGTERM / SIGINT finish the current step, write last.pt and raise TrainingStopped.
        """
        with self.signals.installed():
            return self._fit()

    def _fit(self) -> dict[str, Any] | None:
        train = self.config.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.model.to(self.device)  # first: the optimizer's state loads onto the device of the parameters
        self.resume()
        self.stepper.distribute()
        logs = TrainingLog(self.run_dir, self.position.step, train.max_steps, self.rank == 0, log)
        metrics, self._window = None, TrainWindow()
        # a finished run run again trains no further (its time budget spent included)
        stop = self._stop_reason(self.position.step) is not None or 0 < train.max_minutes * 60 <= self.seconds
        if self.rank == 0 and not stop and self.position.step < train.max_steps:  # training on past a refit
            drop_metrics(self.run_dir, lambda row: row.get("phase") == "refit")
            restore_trained_best(self.best_path.parent)
        self._clock = monotonic()
        if not stop and self._pretraining_end_unevaluated():  # stopped in the evaluation where the VAE phase starts
            self._tick()
            metrics = self.evaluate(logs, scheduled=True)
            stop = self._stop_reason(self.position.step) is not None
            self.save(self.last_path)
            self.save(self.pretrained_path)
        while self.position.step < train.max_steps and not stop:
            # under torchrun, batches every rank can share (a source of one process need not know the keyword)
            shared = {"min_sentences": self.world} if self.world > 1 else {}
            self._plan = self.data.plan(self.position.epoch, train.batch_size, train.max_tokens, train.seed, **shared)
            if self.world > 1:  # every rank needs a share of each batch (only an epoch of fewer sentences lacks it)
                self._plan = [indices for indices in self._plan if len(indices) >= self.world]
            if not self._plan:  # else the loop would run through empty epochs for ever
                raise UserError(f"no training batch holds a sentence for each of the {self.world} processes: use a "
                                "larger train.batch_size (or train.max_tokens) or more training sentences")  # fmt: skip
            while self.position.batch < len(self._plan) and self.position.step < train.max_steps and not stop:
                self._window.add(self.train_step(*self.shard(self._plan[self.position.batch])), 0)
                self.position.batch += 1
                self.position.step += 1
                logs.bar.update(1)
                step = self.position.step
                if step == self.config.objective.pretrain_steps:
                    self._finish_pretraining()
                if step % train.log_every == 0 and self._window.stats:
                    logs.train(self._window, step, self.optimizer.param_groups[0]["lr"])
                evaluated = step % train.eval_every == 0
                self._tick()
                paused = perf_counter()  # evaluations and checkpoints are not in train/tokens_per_s
                out_of_time = 0 < train.max_minutes * 60 <= self.seconds
                if evaluated or step == train.max_steps or out_of_time:
                    # An extra evaluation at the last step only reports: the LR schedule, best.pt and early
                    # stopping see the eval_every grid alone, so a run extended later matches a longer one.
                    metrics = self.evaluate(logs, scheduled=evaluated)
                    stop = out_of_time or self._stop_reason(step) is not None
                stopping = self.signals.stopping is not None
                if evaluated or step % (train.checkpoint_every or train.eval_every) == 0 or stopping:
                    self.save(self.last_path)
                if step == self.config.objective.pretrain_steps:  # where the VAE phase starts, for runs sharing it
                    self.save(self.pretrained_path)
                self._window.start += perf_counter() - paused
                if stopping:
                    raise self.signals.stop(step, str(self.last_path))
            if self.position.batch >= len(self._plan):
                self.position.epoch += 1
                self.position.batch = 0
        reason = self._stop_reason(self.position.step)
        if stop and reason:
            log.info("%s at step %d", reason, self.position.step)
        elif stop:
            log.info("train.max_minutes (%g) reached at step %d", train.max_minutes, self.position.step)
        self.save(self.last_path)
        logs.close()
        return metrics

    def _finish_pretraining(self) -> None:
        """The step after which the autoencoder phase ends: run the hooks, start the VAE phase afresh, save."""
        log.info("step %d: autoencoder pretraining done", self.position.step)
        for hook in self.hooks:
            hook.end_of_pretraining(self.model)
        self.stepper.restart()
        self.average.restart()
        self.position.best, self.position.bad_evals, self.position.decays = math.inf, 0, 0
        self.save(self.last_path)  # a resumed run never runs the hooks twice

    def _pretraining_end_unevaluated(self) -> bool:
        """Whether the run resumed at the end of its autoencoder pretraining, a step of the evaluation grid, before
        that evaluation: last.pt is written there (after the hooks, the best reset) before the evaluation and
        pretrained.pt, so a stop in between leaves those two to do. A run started from another's pretrained.pt,
        saved after the evaluation, has its best."""
        step, train = self.position.step, self.config.train
        at_end = 0 < step == self.config.objective.pretrain_steps and step % train.eval_every == 0
        return at_end and self.position.best == math.inf

    def _stop_reason(self, step: int) -> str | None:
        """Why training ends at `step`'s evaluation (train.early_stopping, optim.max_decays), None to go on; never
        during autoencoder pretraining, whose nelbo is not the objective being trained."""
        if self.objective.schedule.pretraining(step):
            return None
        if 0 < self.config.train.early_stopping <= self.position.bad_evals:
            return "early stopping"
        if 0 < self.config.optim.max_decays <= self.position.decays:
            return f"the LR decayed {self.position.decays} times (optim.max_decays)"
        return None

    def _tick(self) -> float:
        """Add the wall time since the last tick to the run's training clock; -> the clock (seconds)."""
        now = monotonic()
        self.seconds, self._clock = self.seconds + now - self._clock, now
        return self.seconds

    def evaluate(self, logs: TrainingLog, scheduled: bool = True) -> dict[str, Any]:
        """Validate and log; when `scheduled`, also step the LR scheduler, call the hooks, keep best.pt, count
        stalls (a report-only evaluation changes no state, so a resumed run matches a straight one). Under
        optim.average the average of the weights stands in for them throughout."""
        with self.average.applied():
            metrics, decayed = self._evaluate(logs, scheduled)
        if decayed and self.config.optim.reload_best and self.best_path.is_file():
            self._reload_best()
        return metrics

    def _evaluate(self, logs: TrainingLog, scheduled: bool) -> tuple[dict[str, Any], bool]:
        """evaluate's validation, logs and best.pt; -> the metrics and whether the LR decayed."""
        step, main = self.position.step, self.rank == 0
        metrics = self.evaluate_fn(self.model)
        seconds = self._tick()  # the training clock when this result was known, kept by the checkpoint after it
        lr = self.optimizer.param_groups[0]["lr"]
        # the objective being trained: the reconstruction term while the autoencoder is pretrained (KL weight 0)
        target = metrics["rec"] if self.objective.schedule.pretraining(step) else metrics["nelbo"]
        optim = self.config.optim
        if scheduled and optim.lr_decay < 1.0 and step >= optim.lr_decay_from_step:  # lr_decay 1: no plateau decay
            self.scheduler.step(target)
        decayed = self.optimizer.param_groups[0]["lr"] < lr
        self.position.decays += decayed
        texts = self.report_text(self.model) if main and self.report_text else {}
        images = self.report_images(self.model) if main and self.report_images else {}
        logs.evaluation(self.run_dir if main else None, step, self.position.epoch, metrics,
                        self.optimizer.param_groups[0]["lr"], texts, images, seconds)  # fmt: skip
        for hook in self.hooks if scheduled else ():
            hook.after_evaluation(step, metrics, logs.writer)
        if scheduled and target < self.position.best:
            self.position.best, self.position.bad_evals = target, 0
            self.save(self.best_path, averaged=self.average.active)
        elif scheduled:
            self.position.bad_evals += 1
        logs.flush(step, metrics)
        return metrics, decayed

    def _reload_best(self) -> None:
        """Back to best.pt's weights and optimizer state, keeping the LR the plateau decay just set (under
        optim.average, best.pt's weights are the average, which restarts from them)."""
        best = load_checkpoint(self.best_path)
        self.model.load_state_dict(best["model"])
        self.average.restart()
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(best["optimizer"])
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        log.info("step %d: LR decayed to %g; weights of best.pt (step %d) reloaded", self.position.step, lrs[0],
                 best["position"]["step"])  # fmt: skip
