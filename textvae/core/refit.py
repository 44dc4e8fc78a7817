"""Refitting the inference network to the trained decoder, after training (train.refit_encoder_steps).

The amortized posterior q(z|x) trains beside a decoder under dropout (and weight drop); the decoder that
evaluation and use read has none, so a run ends with its encoder fit to another decoder than the one it serves,
and the bounds it gives (the ELBO, the IW-k NLL) are looser than they need be: part of the amortization gap
(Cremer et al. 2018). The refit trains the inference side alone (core/remedies.split_parameters) on the ELBO of
the model as evaluated, the decoder frozen in eval mode, from best.pt, with Adam. p(x|z) and p(z) do not change,
so log p(x) does not: its estimates tighten. What kept the code informative in training still holds: the run's
free bits (objective.free_bits) apply, and batch norm on the inference side (BN-VAE's posterior means) keeps
normalizing over the batch, so its KL floor stays; without them the refit buys a tighter bound with the code's
information (docs/results_ptb.md).

Validation runs every train.eval_every steps of the refit and at its end; a validation nelbo better than the
trained best.pt's is written to best.pt (the trained one is kept as checkpoints/trained.pt), its rows go to
metrics.jsonl at the steps after training's last, on the run's training clock. checkpoints/refit.json marks the
refit of this training done; a refit stopped part-way starts again from trained.pt. Under torchrun every process
refits the same model on the whole batches (the same seed), so that validation can be split among them.
"""

from __future__ import annotations

import json
import logging
import math
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Any

import torch
from torch import nn

from textvae.config import Config
from textvae.core import distributed
from textvae.core.checkpoint import load_checkpoint, save_checkpoint
from textvae.core.device import autocast, backward_in_eval_mode
from textvae.core.logs import TrainingLog, TrainWindow, drop_metrics
from textvae.core.objective import ElboSettings, elbo
from textvae.core.remedies import split_parameters
from textvae.core.signals import StopSignals
from textvae.errors import TrainingStopped, UserError

log = logging.getLogger(__name__)

MARK, TRAINED, BEST = "refit.json", "trained.pt", "best.pt"


def check_refit(model: nn.Module, config: Config) -> None:
    """Before training: refuse a refit that would change the model (a learned prior is on the inference side)."""
    if config.train.refit_encoder_steps and getattr(model, "own_prior", False):
        raise UserError(f"config key train.refit_encoder_steps: {type(model).__name__} learns its prior p(z), which "
                        "the refit would train with the encoder (a changed model, not a tighter bound)")  # fmt: skip


def refit_modes(model: nn.Module) -> None:
    """Eval mode (no dropout anywhere), but for the inference side's batch norm, which normalizes over the batch:
    each batch-norm layer and the module holding it (which may apply it itself, as core/posterior.PosteriorHead
    does) are set training, alone (their other children stay in eval mode)."""
    model.eval()
    decoder = {id(module) for part in model.decoder_modules() for module in part.modules()}
    for parent in model.modules():
        for child in parent.children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and id(child) not in decoder:
                child.training = True
                if parent is not model:  # the model's own flag stays off
                    parent.training = True


def refit_step(model: nn.Module, batch: Any, parameters: list[nn.Parameter], optimizer: torch.optim.Optimizer,
               config: Config, device: torch.device) -> dict[str, float] | None:  # fmt: skip
    """One Adam step of `parameters` on the batch's negative ELBO at KL weight 1, under the run's free bits (as in
    training: the refit must not buy a tighter bound with the code's information); -> its loss, rec and kl, or None
    when the loss or gradient is not finite (no step taken)."""
    objective = config.objective
    with backward_in_eval_mode():  # the model is in eval mode (refit_modes)
        with autocast(device, config.train.precision):
            terms = elbo(model, batch, ElboSettings(free_bits=objective.free_bits,
                                                    free_bits_mode=objective.free_bits_mode))  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(parameters, config.optim.grad_clip or math.inf)
    loss, rec, kl, norm = torch.stack([terms.loss.detach(), terms.rec.detach().mean(), terms.kl.detach().mean(),
                                       norm.detach().float()]).tolist()  # fmt: skip
    if not (math.isfinite(loss) and math.isfinite(norm)):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    return {"loss": loss, "rec": rec, "kl": kl}


def refit_batches(data: Any, batch_size: int, max_tokens: int, seed: int, epoch: int) -> Iterator[tuple[int, Any]]:
    """(epoch, batch indices) of the epochs after `epoch`, whose plans training has not seen, without end."""
    while True:
        epoch += 1
        plan = data.plan(epoch, batch_size, max_tokens, seed)
        if not len(plan):
            raise UserError("no training batch to refit the encoder on")
        for indices in plan:
            yield epoch, indices


def trained_state(checkpoints: Path) -> dict[str, Any]:
    """The state the refit starts from: best.pt as training left it (copied to trained.pt the first time; a best.pt
    written by an earlier refit of the same training is not refit again)."""
    best = load_checkpoint(checkpoints / BEST)
    if "refit" not in best:
        if distributed.is_main():
            save_checkpoint(best, checkpoints / TRAINED)
        return best
    return load_checkpoint(checkpoints / TRAINED)


def restore_trained_best(checkpoints: Path) -> None:
    """Training goes on past a refit: best.pt goes back to training's own best (trained.pt), which the trainer's
    best value and optim.reload_best refer to (a refit best.pt would stand against training's evaluations, or be
    reloaded into training); the refit runs again after the new training."""
    trained, best = checkpoints / TRAINED, checkpoints / BEST
    if trained.is_file() and best.is_file() and "refit" in load_checkpoint(best):
        save_checkpoint(load_checkpoint(trained), best)
        log.info("training goes on past the encoder refit: %s is training's best again (%s)", best, trained)


@dataclass
class RefitValidation:
    """The refit's validations: a row of metrics.jsonl on the run's clock (`clock()`), best.pt when the nelbo beats
    the best so far (on the main process)."""

    evaluate: Callable[[nn.Module], dict[str, Any]]
    logs: TrainingLog
    run_dir: Path
    source: dict[str, Any]  # the trained state the refit started from
    settings: dict[str, Any]  # what the refit.json mark compares: after_step, steps, lr, free bits
    clock: Callable[[], float]
    best: float

    def __call__(self, model: nn.Module, step: int, epoch: int) -> dict[str, Any]:
        metrics, at = self.evaluate(model), self.settings["after_step"] + step
        main = distributed.is_main()
        self.logs.evaluation(self.run_dir if main else None, at, epoch, metrics, self.settings["lr"], {}, {},
                             self.clock(), phase="refit")  # fmt: skip
        self.logs.flush(at, metrics)
        if metrics["nelbo"] < self.best:
            self.best = metrics["nelbo"]
            refit = {**self.settings, "step": step, "trained_step": self.source["position"]["step"]}
            if main:
                save_checkpoint({**self.source, "model": model.state_dict(), "refit": refit},
                                self.run_dir / "checkpoints" / BEST)  # fmt: skip
        refit_modes(model)
        return metrics


def stopped(signals: StopSignals, step: int, checkpoints: Path) -> TrainingStopped:
    """The error that ends a refit on SIGTERM / SIGINT (nothing to save: it starts again from trained.pt)."""
    name = signal.Signals(signals.signal).name
    return TrainingStopped(f"stopped by {name} in the encoder refit, at its step {step}: the same command starts it "
                           f"again from {checkpoints / TRAINED}", exit_code=128 + signals.signal)  # fmt: skip


def refit_encoder(model: nn.Module, data: Any, evaluate: Callable[[nn.Module], dict[str, Any]], config: Config,
                  run_dir: Path, device: torch.device) -> dict[str, Any] | None:  # fmt: skip
    """The refit of a trained run (see the module's docstring); -> the last validation metrics, or None when this
    training's refit was already done."""
    train, checkpoints, run_dir = config.train, Path(run_dir) / "checkpoints", Path(run_dir)
    last = load_checkpoint(checkpoints / "last.pt")
    after, epoch = last["position"]["step"], last["position"]["epoch"]
    settings = {
        "after_step": after,
        "steps": train.refit_encoder_steps,
        "lr": train.refit_encoder_lr,
        "free_bits": config.objective.free_bits,
        "free_bits_mode": config.objective.free_bits_mode,
    }
    mark = checkpoints / MARK
    if mark.is_file() and {k: v for k, v in json.loads(mark.read_text()).items() if k in settings} == settings:
        log.info("the encoder of this training is already refit (%s)", mark)
        return None
    if not (checkpoints / BEST).is_file():
        log.warning("no best.pt to refit the encoder of (training never evaluated)")
        return None
    source = trained_state(checkpoints)
    model.load_state_dict(source["model"])
    model.to(device)
    inference, decoder = split_parameters(model)
    for p in decoder:
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(inference, lr=train.refit_encoder_lr)
    if distributed.is_main():
        drop_metrics(run_dir, lambda row: row["step"] > after or row.get("phase") == "refit")  # an earlier refit's
    log.info("refitting the encoder of best.pt (step %d, validation nelbo %.3f) to its decoder: %d steps, lr %g",
             source["position"]["step"], source["position"]["best"], train.refit_encoder_steps,
             train.refit_encoder_lr)  # fmt: skip
    torch.manual_seed(train.seed + after)  # every process draws the same z, so the copies stay equal
    logs = TrainingLog(run_dir, after, after + train.refit_encoder_steps, distributed.is_main(), log)
    start = monotonic()
    validate = RefitValidation(evaluate, logs, run_dir, source, settings, lambda: last["seconds"] + monotonic() - start,
                               source["position"]["best"])  # fmt: skip
    window, signals = TrainWindow("refit"), StopSignals()  # refit/ scalars, not train/
    batches = refit_batches(data, train.batch_size, train.max_tokens, train.seed, epoch)
    refit_modes(model)
    try:
        with signals.installed():
            for step in range(1, train.refit_encoder_steps + 1):
                epoch, indices = next(batches)
                batch = data.collate(indices).to(device)
                stats = refit_step(model, batch, inference, optimizer, config, device)
                window.add(stats, batch.num_tokens)
                logs.bar.update(1)
                if signals.received:  # SIGTERM / SIGINT: stop now; the refit starts again from trained.pt next time
                    raise stopped(signals, step, checkpoints)
                if step % train.log_every == 0 and window.stats:
                    logs.train(window, after + step, train.refit_encoder_lr)
                if step % train.eval_every == 0 or step == train.refit_encoder_steps:
                    metrics = validate(model, step, epoch)
    finally:  # also on a stop: the model handed back trains whole again
        logs.close()
        for p in decoder:
            p.requires_grad_(True)
        model.eval()
    if distributed.is_main():
        mark.write_text(json.dumps({**settings, "best_nelbo": validate.best}) + "\n")
    log.info("encoder refit: validation nelbo %.3f (trained: %.3f)", validate.best, source["position"]["best"])
    return metrics
