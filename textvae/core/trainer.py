"""One training loop for every model, text or image: steps, evaluation, checkpoints, logs, exact resume."""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from textvae.config import Config, to_dict
from textvae.core import distributed
from textvae.core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from textvae.core.device import autocast
from textvae.core.objective import ElboModule
from textvae.core.remedies import aggressive_now, encoder_steps, split_parameters, watch_latent
from textvae.core.schedules import kl_weight
from textvae.errors import TrainingStopped, UserError

log = logging.getLogger(__name__)


class BatchSource(Protocol):
    def plan(self, epoch: int, batch_size: int, max_tokens: int = 0, seed: int = 0) -> list[list[int]]: ...

    def collate(self, indices: list[int]) -> Any: ...


@dataclass
class Position:
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch: int = 0  # batches of this epoch's plan already used
    best: float = math.inf  # best validation objective (nelbo)
    bad_evals: int = 0  # evaluations since the best one
    skipped: int = 0  # steps skipped for a non-finite loss or gradient
    skipped_in_row: int = 0
    aggressive: bool = True  # objective.aggressive still on (it ends for good when validation MI falls)
    last_mi: float = -math.inf  # validation MI at the previous evaluation, for aggressive training
    encoder_steps: int = 0  # encoder-only steps taken by aggressive training
    collapse_evals: int = 0  # evaluations in a row with a collapse signal (train.collapse_kl, _mi, _au)


def summarize(metrics: dict[str, Any]) -> str:
    """The headline validation metrics that a run has, as 'nelbo 101.234, kl 4.321, ...'."""
    keys = ("nelbo", "rec", "kl", "nll", "ppl", "mi", "au", "acc", "nmi")
    return ", ".join(
        f"{key} {metrics[key]:.3f}" if isinstance(metrics[key], float) else f"{key} {metrics[key]}"
        for key in keys
        if key in metrics
    )


def _duration(seconds: float) -> str:
    """'1h 05m', '12m 30s' or '45s'."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _NullWriter:
    """Stands in for the SummaryWriter on ranks other than 0: only rank 0 writes logs."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def build_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    opt = config.optim
    if opt.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    # fused: one pass over each parameter (3x faster than foreach on this CPU, 22 -> 7 ms a step for 9M weights)
    return torch.optim.Adam(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay, fused=True)


class Trainer:
    """Trains `model` on `data` with the shared ELBO; `evaluate(model)` returns validation metrics.

    `report_text(model)`, when given, returns {tag: text} logged to TensorBoard at each evaluation;
    `report_images(model)` returns {tag: image [3, H, W] in [0, 1]}, logged too.
    With objective.pretrain_steps P > 0 the first P steps train a deterministic autoencoder (z = mu, no KL);
    then `end_pretraining(model)` runs once (a GMM fit, a decoder reset), the optimizer state, the learning
    rate (back to optim.lr) and the best objective are reset, and the KL schedule starts counting from step P.
    The trainer never looks inside the model: it only calls the objective and the callbacks.
    """

    def __init__(
        self,
        model: nn.Module,
        data: BatchSource,
        evaluate: Callable[[nn.Module], dict[str, Any]],
        config: Config,
        run_dir: Path,
        device: torch.device,
        report_text: Callable[[nn.Module], dict[str, str]] | None = None,
        report_images: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None,
        end_pretraining: Callable[[nn.Module], None] | None = None,
    ):
        self.model, self.data, self.evaluate_fn, self.report_text = model, data, evaluate, report_text
        self.report_images, self.end_pretraining = report_images, end_pretraining
        self.config, self.run_dir, self.device = config, Path(run_dir), device
        self.optimizer = build_optimizer(model, config)
        self.decays = config.optim.lr_decay < 1.0  # optim.lr_decay 1 disables the plateau decay
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            factor=config.optim.lr_decay if self.decays else 0.5,
            patience=config.optim.lr_patience,
            min_lr=config.optim.min_lr,
        )
        self.position = Position()
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.objective = ElboModule(model)  # wrapped in DistributedDataParallel under torchrun
        self.train_module: nn.Module = self.objective
        self._signal: int | None = None  # a signal this process received
        self._stopping: int | None = None  # the signal all ranks agreed on in a step's all-reduce: stop after it
        self._tokens = 0.0  # real tokens since the last train/ log, all ranks
        self._plan: list[list[int]] = []  # this epoch's batches (aggressive training draws from them)
        self._encoder_params: list[torch.nn.Parameter] = []
        self._decoder_params: list[torch.nn.Parameter] = []
        if config.objective.aggressive:
            self._encoder_params, self._decoder_params = split_parameters(model)
        self.last_path = self.run_dir / "checkpoints" / "last.pt"
        self.best_path = self.run_dir / "checkpoints" / "best.pt"

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "position": vars(self.position).copy(),
            "rng": rng_state(),
            "rng_ranks": distributed.gather(rng_state()) if self.world > 1 else [],
            "config": to_dict(self.config),
        }

    def save(self, path: Path) -> None:
        """Every rank takes part in building the state (RNG states are gathered); rank 0 writes it."""
        state = self.state_dict()
        if self.rank == 0:
            save_checkpoint(state, path)

    def resume(self) -> bool:
        """Restore everything from last.pt when it exists; return whether it did."""
        if self.last_path.parent.is_dir():
            for stale in self.last_path.parent.glob("*.tmp"):  # a write cut short by a kill
                stale.unlink()
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
        saved = dict(state["position"])
        saved.setdefault("collapse_evals", saved.pop("low_kl_evals", 0))  # the name before MI and AU counted
        self.position = Position(**saved)
        ranks = state.get("rng_ranks") or []
        if self.world > 1 and len(ranks) != self.world:
            log.warning("resuming on %d processes a run saved on %d: random streams restart", self.world, len(ranks))
            torch.manual_seed(self.config.train.seed + self.rank + self.position.step)
        else:
            set_rng_state(ranks[self.rank] if self.world > 1 else state["rng"])
        self._drop_metrics_after(self.position.step)
        log.info("resumed %s at step %d", self.run_dir, self.position.step)
        return True

    def _drop_metrics_after(self, step: int) -> None:
        """Forget evaluations logged after the checkpoint (a kill between the two), so none is doubled."""
        path = self.run_dir / "metrics.jsonl"
        if self.rank == 0 and path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
            if len(kept) != len(lines):
                path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    # -- the loop ------------------------------------------------------------------------------
    def train_step(self, batch: Any, share: float = 1.0) -> dict[str, float] | None:
        """One optimizer step on this rank's `share` of the global batch.

        Returns global scalars to log, or None when the step was skipped (non-finite loss or gradient).
        """
        obj = self.config.objective
        pretraining = self.position.step < obj.pretrain_steps
        if pretraining:
            weight, sample = 0.0, False
        else:
            steps_after = self.position.step - obj.pretrain_steps
            weight, sample = kl_weight(obj, steps_after, self.config.train.max_steps - obj.pretrain_steps), True
        aggressive = aggressive_now(self.config.objective, self.position)
        inner = encoder_steps(self, weight, sample) if aggressive else 0
        self.model.train()
        with autocast(self.device, self.config.train.precision):
            terms = self.train_module(batch, weight, obj.free_bits, obj.free_bits_mode, obj.iw_samples, sample,
                                      obj.bow_weight)  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks; scaling by share * world makes that the global-batch mean.
        (terms["loss"] * share * self.world).backward()
        if aggressive:  # He et al.: after the encoder's inner loop, the step updates the decoder only
            for p in self._encoder_params:
                p.grad = None
        clip = self.config.optim.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        # Everything the step reports, gathered on the device and read back with one host sync.
        counts = torch.tensor([batch.size, batch.num_tokens, float(self._signal is not None)], dtype=torch.float64)
        bow = terms["bow"].detach().sum() if "bow" in terms else torch.zeros((), device=grad_norm.device)
        local = torch.cat([
            torch.stack([terms["loss"].detach() * share, terms["rec"].detach().sum(), terms["kl"].detach().sum(),
                         grad_norm.detach() / self.world, bow]).double(),
            counts.to(grad_norm.device),
        ])  # fmt: skip
        loss, rec, kl, grad_norm, bow, size, tokens, signals = distributed.sum_across(local).tolist()
        if signals and self._stopping is None:
            # every rank reads the same sum, so all stop after this step; a signal that comes after the
            # all-reduce waits for the next one, else the ranks would part ways in the collectives of save()
            self._stopping = self._signal or signal.SIGTERM  # SIGTERM when only another rank was signalled
        self._tokens += tokens
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.position.skipped += 1
            self.position.skipped_in_row += 1
            log.warning("step %d: non-finite loss or gradient, step skipped", self.position.step)
            if self.position.skipped_in_row >= self.config.train.max_nonfinite_steps:
                raise TrainingStopped(
                    f"{self.position.skipped_in_row} non-finite steps in a row at step {self.position.step}: the run "
                    f"diverged; {self.last_path} holds the last good state (try a lower optim.lr)",
                    exit_code=3,
                )
            return None
        self.position.skipped_in_row = 0
        self._step_with_warmup()
        stats = {"loss": loss, "rec": rec / size, "kl": kl / size, "kl_weight": weight, "grad_norm": grad_norm}
        if "bow" in terms:
            stats["bow"] = bow / size
        if obj.aggressive:
            stats["encoder_steps"] = float(inner)
        return stats

    def _step_with_warmup(self) -> None:
        """optimizer.step() with the LR scaled by min(1, (step + 1) / warmup_steps), a pure function of the step.

        The plateau scheduler owns the groups' base LR; the warm-up factor is applied for this step only.
        """
        warmup = self.config.optim.warmup_steps
        factor = min(1.0, (self.position.step + 1) / warmup) if warmup else 1.0
        base = [group["lr"] for group in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, base):
            group["lr"] = lr * factor
        self.optimizer.step()
        for group, lr in zip(self.optimizer.param_groups, base):
            group["lr"] = lr

    def fit(self) -> dict[str, Any] | None:
        """Train until train.max_steps (or early stopping); return the last validation metrics.

        SIGTERM / SIGINT finish the current step, write last.pt and raise TrainingStopped.
        """
        self._signal = self._stopping = None
        if threading.current_thread() is not threading.main_thread():
            return self._fit()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:
            signal.signal(sig, self._on_signal)
        try:
            return self._fit()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        if self._signal is not None:  # a second signal: stop now, the last checkpoint stays as it is
            raise KeyboardInterrupt
        self._signal = signum

    def _fit(self) -> dict[str, Any] | None:
        from torch.utils.tensorboard import SummaryWriter

        train = self.config.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        self.model.to(self.device)
        self.train_module = self.objective
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_module = torch.nn.parallel.DistributedDataParallel(self.objective, device_ids=ids)
        main = self.rank == 0
        writer = (
            SummaryWriter(str(self.run_dir / "tb"), purge_step=self.position.step or None) if main else _NullWriter()
        )
        bar = tqdm(
            total=train.max_steps, initial=self.position.step, dynamic_ncols=True, disable=None if main else True
        )
        window = {"time": time.perf_counter(), "stats": []}
        self._tokens = 0
        metrics, stop = None, False
        checkpoint_every = train.checkpoint_every or train.eval_every
        while self.position.step < train.max_steps and not stop:
            plan = self.data.plan(self.position.epoch, train.batch_size, train.max_tokens, train.seed)
            if self.world > 1:  # every rank needs a share of each batch
                plan = [indices for indices in plan if len(indices) >= self.world]
            if not plan:  # else the loop would run through empty epochs for ever
                raise UserError(
                    f"no training batch holds a sentence for each of the {self.world} processes: use a larger "
                    "train.batch_size (or train.max_tokens) or more training sentences"
                )
            self._plan = plan
            while self.position.batch < len(plan) and self.position.step < train.max_steps and not stop:
                indices = plan[self.position.batch]
                shard = indices[self.rank :: self.world]  # the same global plan on every rank, split
                stats = self.train_step(self.data.collate(shard).to(self.device), len(shard) / len(indices))
                self.position.batch += 1
                self.position.step += 1
                if stats is not None:
                    window["stats"].append(stats)
                bar.update(1)
                step = self.position.step
                if step == self.config.objective.pretrain_steps:
                    self._finish_pretraining()
                if step % train.log_every == 0 and window["stats"]:
                    self._log_train(writer, bar, window)
                evaluated = step % train.eval_every == 0
                if evaluated or step == train.max_steps:
                    # An extra evaluation at the last step only reports: the LR schedule, best.pt and early
                    # stopping see the eval_every grid alone, so a run extended later matches a longer one.
                    metrics = self.evaluate(writer, scheduled=evaluated)
                    # never during autoencoder pretraining: its nelbo is not the objective being trained
                    stop = 0 < train.early_stopping <= self.position.bad_evals and not self._pretraining()
                if evaluated or step % checkpoint_every == 0 or self._stopping is not None:
                    self.save(self.last_path)
                if self._stopping is not None:
                    name = signal.Signals(self._stopping).name
                    raise TrainingStopped(
                        f"stopped by {name} at step {step}; {self.last_path} is saved: run the same command to resume",
                        exit_code=128 + self._stopping,
                    )
            if self.position.batch >= len(plan):
                self.position.epoch += 1
                self.position.batch = 0
        if stop:
            log.info("early stopping at step %d", self.position.step)
        self.save(self.last_path)
        bar.close()
        writer.close()
        return metrics

    def _pretraining(self) -> bool:
        return self.position.step < self.config.objective.pretrain_steps

    def _finish_pretraining(self) -> None:
        """The step after which the autoencoder phase ends: run the hook, start the VAE phase afresh, save."""
        log.info("step %d: autoencoder pretraining done", self.position.step)
        if self.end_pretraining is not None:
            self.end_pretraining(self.model)
        self.optimizer.state.clear()
        for group in self.optimizer.param_groups:  # the VaDE/VAE phase starts at optim.lr, whatever the AE phase did
            group["lr"] = self.config.optim.lr
        self.scheduler.best, self.scheduler.num_bad_epochs = self.scheduler.mode_worse, 0
        self.scheduler.cooldown_counter = 0
        self.position.best, self.position.bad_evals = math.inf, 0
        self.save(self.last_path)  # a resumed run never runs the hook twice

    def _log_train(self, writer, bar, window) -> None:
        now = time.perf_counter()
        count = len(window["stats"])
        means = {k: sum(s[k] for s in window["stats"]) / count for k in window["stats"][0]}
        means["tokens_per_s"] = self._tokens / max(1e-9, now - window["time"])
        means["lr"] = self.optimizer.param_groups[0]["lr"]
        for key, value in means.items():
            writer.add_scalar(f"train/{key}", value, self.position.step)
        bar.set_postfix(loss=f"{means['loss']:.2f}", kl=f"{means['kl']:.2f}", tok_s=f"{means['tokens_per_s']:.0f}")
        if bar.disable:  # off a terminal (nohup, a cluster job) the bar is silent: one log line instead
            left = (self.config.train.max_steps - self.position.step) * (now - window["time"]) / count
            log.info("step %d/%d: loss %.3f, kl %.3f, %.0f tokens/s, ETA %s", self.position.step,
                     self.config.train.max_steps, means["loss"], means["kl"], means["tokens_per_s"],
                     _duration(left))  # fmt: skip
        window.update(time=now, stats=[])
        self._tokens = 0

    def evaluate(self, writer, scheduled: bool = True) -> dict[str, Any]:
        """Validate and log; when `scheduled`, also step the LR scheduler, keep best.pt, count stalls."""
        step = self.position.step
        metrics = self.evaluate_fn(self.model)
        objective = metrics["nelbo"]
        if scheduled and self.decays:
            self.scheduler.step(objective)
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(f"val/{key}", value, step)
        if metrics.get("kl_per_dim"):
            writer.add_histogram("val/kl_per_dim", torch.tensor(metrics["kl_per_dim"]), step)
        writer.add_scalar("val/loss", objective, step)
        writer.add_scalar("val/lr", self.optimizer.param_groups[0]["lr"], step)
        if self.rank == 0:
            for tag, text in (self.report_text(self.model) if self.report_text else {}).items():
                writer.add_text(tag, text, step)
            for tag, image in (self.report_images(self.model) if self.report_images else {}).items():
                writer.add_image(tag, image, step)
            record = {"step": step, "epoch": self.position.epoch, "split": "valid", "metrics": metrics}
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        if scheduled:  # a report-only evaluation changes no state, so a resumed run matches a straight one
            watch_latent(self, metrics, writer)
        if scheduled and objective < self.position.best:
            self.position.best, self.position.bad_evals = objective, 0
            self.save(self.best_path)
        elif scheduled:
            self.position.bad_evals += 1
        log.info("step %d: val %s", step, summarize(metrics))
        writer.flush()
        if not sys.stderr.isatty():
            sys.stderr.flush()
        return metrics
