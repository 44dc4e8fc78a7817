"""What the trainer reports: train/ scalars and progress, val/ scalars and RUN_DIR/metrics.jsonl."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm


def summarize(metrics: dict[str, Any]) -> str:
    """The headline validation metrics that a run has, as 'nelbo 101.234, kl 4.321, ...'."""
    keys = ("nelbo", "rec", "kl", "nll", "ppl", "mi", "au", "acc", "nmi")
    return ", ".join(
        f"{key} {metrics[key]:.3f}" if isinstance(metrics[key], float) else f"{key} {metrics[key]}"
        for key in keys
        if key in metrics
    )


def duration(seconds: float) -> str:
    """'1h 05m', '12m 30s' or '45s'."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ProgressLog:
    """Off a terminal (nohup, a cluster job), where tqdm's bar is silent, one log line every EVERY seconds: the
    batches done and an ETA from the pace of this session's batches (`resumed`: those a journal held), weighed by
    `sizes`, each batch's work (its decoder positions: a split's batches grow longer towards its end); None where
    the batches are not known ahead."""

    EVERY = 60.0  # seconds between two lines

    def __init__(self, sizes: list[int] | None, resumed: int, quiet: bool, label: str = "evaluate"):
        self.sizes, self.resumed, self.quiet, self.label = sizes, resumed, quiet, label
        self.start = self.said = time.monotonic()

    @classmethod
    def of(cls, bar: tqdm, resumed: int = 0, label: str = "evaluate", rank: int = 0) -> ProgressLog:
        """The log beside tqdm's `bar` over the batches: silent where the bar is shown, and on ranks other than 0."""
        batches = bar.iterable
        sizes = [getattr(batch, "footprint", 1) for batch in batches] if isinstance(batches, (list, tuple)) else None
        return cls(sizes, resumed, quiet=not bar.disable or rank > 0, label=label)

    def batch_done(self, done: int) -> None:
        now = time.monotonic()
        if self.quiet or now - self.said < self.EVERY:
            return
        self.said = now
        logging.getLogger(__name__).info("%s: %s", self.label, self.line(done, now - self.start))

    def line(self, done: int, elapsed: float) -> str:
        """'batch 12/59, ETA 31m 20s' (without sizes: 'batch 12')."""
        if self.sizes is None:
            return f"batch {done}"
        pace = elapsed / max(1, sum(self.sizes[self.resumed : done]))
        return f"batch {done}/{len(self.sizes)}, ETA {duration(sum(self.sizes[done:]) * pace)}"


class NullWriter:
    """Stands in for the SummaryWriter on ranks other than 0: only rank 0 writes logs."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class TrainWindow:
    """The steps since the last train/ log: their stats and real tokens (all ranks), and the time they took (the
    trainer moves `start` on by the time of evaluations and checkpoints in between)."""

    def __init__(self, prefix: str = "train"):
        self.start, self.stats, self.tokens, self.prefix = time.perf_counter(), [], 0.0, prefix  # prefix/ scalars

    def add(self, stats: dict[str, float] | None, tokens: float) -> None:
        if stats is not None:
            self.stats.append(stats)
        self.tokens += tokens

    def close(self, writer: Any, step: int, lr: float) -> tuple[dict[str, float], float]:
        """Write the window's means as scalars at `step` (train/, or the prefix's), start a new window; -> (means,
        seconds per step)."""
        now = time.perf_counter()
        count = len(self.stats)
        means = {key: sum(s[key] for s in self.stats) / count for key in self.stats[0]}
        means["tokens_per_s"] = self.tokens / max(1e-9, now - self.start)
        means["lr"] = lr
        for key, value in means.items():
            writer.add_scalar(f"{self.prefix}/{key}", value, step)
        per_step = (now - self.start) / count
        self.start, self.stats, self.tokens = now, [], 0.0
        return means, per_step


class TrainingLog:
    """Training's reports: TensorBoard's RUN_DIR/tb (rank 0), the progress bar, and off a terminal (nohup, a cluster
    job), where the bar is silent, one line to `logger` at each train/ log (train.log_every steps)."""

    def __init__(self, run_dir: Path, step: int, max_steps: int, main: bool, logger: logging.Logger):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=step or None) if main else NullWriter()
        self.bar = tqdm(total=max_steps, initial=step, dynamic_ncols=True, disable=None if main else True)
        self.max_steps, self.logger = max_steps, logger

    def train(self, window: TrainWindow, step: int, lr: float) -> None:
        """The window's means as train/ scalars, in the bar, or in the log line with an ETA."""
        means, per_step = window.close(self.writer, step, lr)
        self.bar.set_postfix(loss=f"{means['loss']:.2f}", kl=f"{means['kl']:.2f}", tok_s=f"{means['tokens_per_s']:.0f}")
        if self.bar.disable:
            self.logger.info("step %d/%d: loss %.3f, kl %.3f, %.0f tokens/s, ETA %s", step, self.max_steps,
                             means["loss"], means["kl"], means["tokens_per_s"],
                             duration((self.max_steps - step) * per_step))  # fmt: skip

    def evaluation(self, run_dir: Path | None, step: int, epoch: int, metrics: dict[str, Any], lr: float,
                   texts: dict[str, str], images: dict[str, torch.Tensor], seconds: float,
                   phase: str | None = None) -> None:  # fmt: skip
        """val/ scalars (val/loss: the objective, nelbo), the per-dimension KL histogram, the LR, the reports' texts
        and images in TensorBoard; one line of RUN_DIR/metrics.jsonl (rank 0: `run_dir` given), with `seconds`, the
        run's training clock (evaluations included, summed over resumed sessions) when the result was known, and
        the `phase` when given (the encoder refit's rows: "refit")."""
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"val/{key}", value, step)
        if metrics.get("kl_per_dim"):
            self.writer.add_histogram("val/kl_per_dim", torch.tensor(metrics["kl_per_dim"]), step)
        self.writer.add_scalar("val/loss", metrics["nelbo"], step)
        self.writer.add_scalar("val/lr", lr, step)
        for tag, text in texts.items():
            self.writer.add_text(tag, text, step)
        for tag, image in images.items():
            self.writer.add_image(tag, image, step)
        if run_dir is not None:
            record = {"step": step, "epoch": epoch, "seconds": round(seconds, 3), "split": "valid", "metrics": metrics}
            if phase is not None:
                record["phase"] = phase
            with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def flush(self, step: int, metrics: dict[str, Any]) -> None:
        """The summary line of an evaluation, and everything written so far out to disk."""
        self.logger.info("step %d: val %s", step, summarize(metrics))
        self.writer.flush()
        if not sys.stderr.isatty():
            sys.stderr.flush()

    def close(self) -> None:
        self.bar.close()
        self.writer.close()


def drop_metrics(run_dir: Path, drop: Callable[[dict[str, Any]], bool]) -> None:
    """Remove the rows of RUN_DIR/metrics.jsonl for which `drop(row)` holds."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = [line for line in lines if not drop(json.loads(line))]
        if len(kept) != len(lines):
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def drop_metrics_after(run_dir: Path, step: int) -> None:
    """Forget evaluations logged after the checkpoint (a kill between the two), so that none is doubled; an encoder
    refit's rows (phase "refit", core/refit.py), which follow training's last step, stay."""
    drop_metrics(run_dir, lambda row: row["step"] > step and row.get("phase") != "refit")
