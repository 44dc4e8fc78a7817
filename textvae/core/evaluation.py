"""Evaluate a latent-variable model on a split: nelbo, rec, kl, IW nll, MI and active units, per example.

Modality-neutral: the text wiring (textvae/text_metrics.py) adds perplexity from the token counts it asks for."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from textvae.core import distributed
from textvae.core.checkpoint import save_checkpoint
from textvae.core.device import autocast
from textvae.core.estimators import (
    AU_SAMPLES,
    active_units,
    base_noise,
    iw_chunk,
    iw_log_likelihood,
    iw_log_weights,
    mi_ceiling,
    mutual_information,
    posterior_mean,
)
from textvae.core.latent import LatentModel, posterior_kl
from textvae.core.logs import ProgressLog

log = logging.getLogger(__name__)
MI_SEED_OFFSET = 1 << 31  # the MI draw: seed + this (mod 2^32, as the CPU generator takes it); batch i: seed + i


class Subsample:
    """A seeded uniform sample of at most `limit` rows (0: all) of tensors that arrive batch by batch: each row
    draws a random key and the `limit` smallest stay, in arrival order. At most 2 * `limit` rows are held."""

    def __init__(self, limit: int, seed: int):
        self.limit, self.seen, self.held = limit, 0, 0
        self.generator = torch.Generator().manual_seed(seed)  # its own: the evaluation's draws stay the same
        self.keys: list[torch.Tensor] = []
        self.parts: list[tuple[torch.Tensor, ...]] = []

    def add(self, *rows: torch.Tensor) -> None:
        """rows: tensors [B, ...] of the same B examples."""
        self.seen += rows[0].shape[0]
        self.held += rows[0].shape[0]
        self.keys.append(torch.rand(rows[0].shape[0], generator=self.generator))
        self.parts.append(rows)
        if self.limit and self.held > 2 * self.limit:
            self.prune()

    def prune(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Keep the rows of the `limit` smallest keys. -> keys [N], one tensor [N, ...] per kind of row."""
        keys = torch.cat(self.keys) if self.keys else torch.zeros(0)
        columns = [torch.cat(column) for column in zip(*self.parts)]
        if self.limit and len(keys) > self.limit:
            keep = torch.topk(keys, self.limit, largest=False).indices.sort().values
            keys, columns = keys[keep], [column[keep] for column in columns]
        self.keys, self.parts, self.held = [keys], [tuple(columns)] if columns else [], len(keys)
        return keys, columns

    def merge(self, states: list[tuple[int, torch.Tensor, list[torch.Tensor]]]) -> None:
        """Pool the samples of all ranks ((seen, keys, columns) each, in rank order) into this one."""
        self.seen = sum(seen for seen, _, _ in states)
        self.keys = [keys for _, keys, _ in states]
        self.parts = [tuple(columns) for _, _, columns in states if columns]
        self.prune()


def spread(count: int, limit: int | None) -> list[int]:
    """`limit` indices spread evenly over range(count), the same every time; all of them without a limit."""
    if limit is None or limit >= count:
        return list(range(count))
    return [i * count // limit for i in range(limit)]


class Journal:
    """The per-batch results of an evaluation in progress, written atomically to `path` at most every `every`
    seconds, so that an interrupted evaluation resumes at the batch it had reached and ends with the figures of an
    uninterrupted one (each batch's draws are seeded by its position). `key` names what is evaluated (checkpoint
    step, split, samples, precision...): a journal of other settings is discarded."""

    def __init__(self, path: Path, key: dict[str, Any], every: float = 60.0):
        self.path: Path | None = path
        self.key, self.every = key, every
        self.records: list[dict[str, Any]] = []
        self.saved_at = time.monotonic()
        if path.is_file():
            try:
                state = torch.load(path, weights_only=True)
            except Exception:  # a damaged journal costs its batches, never the evaluation
                state = {}
            if state.get("key") == key:
                self.records = state["records"]
                log.info("resuming the evaluation in %s at batch %d", path, len(self.records))
            else:
                log.info("discarding %s: a partial evaluation of other settings", path)

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if time.monotonic() - self.saved_at >= self.every:
            self.save()

    def save(self) -> None:
        if self.path is None:
            return
        try:
            save_checkpoint({"key": self.key, "records": self.records}, self.path)
        except OSError as error:  # a run directory one may read but not write: evaluate without a journal
            log.warning("cannot keep the evaluation's progress in %s (%s): it would start over if stopped",
                        self.path, error.strerror or error)  # fmt: skip
            self.path = None
        self.saved_at = time.monotonic()

    def finish(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


@torch.no_grad()
def evaluate(
    model: LatentModel,
    batches: Iterable[Any],
    iw_samples: int,
    device: torch.device,
    precision: str = "fp32",
    token_budget: int = 32768,
    seed: int = 0,
    population: str = "split",
    mi_max_examples: int = 0,
    counts: dict[str, Callable[[Any], int]] | None = None,
    journal: Journal | None = None,
) -> dict[str, Any]:
    """Metrics of DESIGN.md over all `batches` (per example, summed over tokens); deterministic under `seed`.

    The encoder runs once per batch; its posterior serves all K importance samples, drawn in chunks
    so that at most about `token_budget` tokens go through the decoder at once; batch i draws them from
    torch.manual_seed(seed + i). `counts`: name -> a function of a batch; each is summed over the batches (and
    ranks) and returned under its name (the text wiring counts tokens and words, for perplexity).
    `population` names what the batches are (the whole split, or a part of it) in `mi_over`. MI and active
    units are over a seeded sample of `mi_max_examples` examples when there are more (0: all); the other
    metrics over all, streamed: only that sample's posteriors are held. With a `journal`, the batches it holds
    are not evaluated again, and it is deleted when the evaluation is complete.
    """
    was_training = model.training
    model.eval()
    totals = {"rec": 0.0, "kl": 0.0, "nll": 0.0}
    examples = 0
    counts = counts or {}
    counted = dict.fromkeys(counts, 0)
    # per example: mu, logvar (MI) and, under a flow, E_q[z|x] of the z the decoder reads (active units)
    sample = Subsample(mi_max_examples, seed + 1 + distributed.rank())
    kl_sums = None  # per-dimension KL summed over examples
    flow = getattr(model, "posterior_flow", None) is not None
    # one set of base-noise draws for every example: see estimators.posterior_mean
    noise = base_noise(model.latent_dim, seed) if flow else None
    done = journal.records if journal is not None else []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        bar = tqdm(batches, desc="evaluate", unit="batch", leave=False, disable=None)
        progress = ProgressLog.of(bar, resumed=len(done), rank=distributed.rank())
        for index, batch in enumerate(bar):
            if index < len(done):
                record = done[index]
            else:
                torch.manual_seed(seed + index)
                record = _evaluate_batch(model, batch.to(device), iw_samples, device, precision, token_budget,
                                         flow, noise, counts)  # fmt: skip
                if journal is not None:
                    journal.add(record)
                progress.batch_done(index + 1)
            totals["rec"] += record["rec"]
            totals["kl"] += record["kl"]
            totals["nll"] += record["nll"]
            examples += record["examples"]
            for name in counts:
                counted[name] += record["counts"][name]
            if record["rows"]:
                sample.add(*record["rows"])
                kl_sums = record["kl_sum"] if kl_sums is None else kl_sums + record["kl_sum"]
        if distributed.active():  # each rank saw a shard of the batches: add up, and pool the posteriors
            summed = distributed.sum_across(
                torch.tensor(
                    [totals["rec"], totals["kl"], totals["nll"], examples, *counted.values()], dtype=torch.float64
                )  # fmt: skip
            )
            totals["rec"], totals["kl"], totals["nll"] = summed[:3].tolist()
            examples = int(summed[3])
            counted = {name: int(value) for name, value in zip(counted, summed[4:].tolist())}
            if model.latent_dim:
                kl_sums = distributed.sum_across(kl_sums if kl_sums is not None else torch.zeros(model.latent_dim))
            sample.merge(distributed.gather((sample.seen, *sample.prune())))
        _, columns = sample.prune()
        mu_all = columns[0] if columns else torch.zeros(examples, 0)
        logvar_all = columns[1] if columns else torch.zeros(examples, 0)
        # MI of the base Gaussian: the flow is one bijection for all x, which leaves I(x; z) unchanged
        # its own seeded draw (a journal holding every batch replays them without reseeding the global stream), from
        # a seed no batch's reaches
        generator = torch.Generator(mu_all.device).manual_seed(seed + MI_SEED_OFFSET)
        mi = mutual_information(mu_all, logvar_all, generator=generator)
        mean_all = columns[2] if flow and columns else mu_all
    model.train(was_training)
    if journal is not None:
        journal.finish()
    scope = f"{population}, N = {mu_all.shape[0]}"
    if columns and sample.seen > mu_all.shape[0]:
        scope += f" of {sample.seen} (a seeded sample, train.mi_max_examples; active units over it too)"
    scope += ", base Gaussian (same MI after the flow)" if flow else ""
    kl_per_dim = kl_sums.cpu() / max(1, examples) if kl_sums is not None else torch.zeros(0)
    rec, kl, nll = (totals[k] / max(1, examples) for k in ("rec", "kl", "nll"))
    metrics = {
        "nelbo": rec + kl,
        "rec": rec,
        "kl": kl,
        "nll": nll,
        "mi": mi,
        "mi_ceiling": mi_ceiling(mu_all.shape[0]),
        "mi_over": scope,
        "au": active_units(mean_all),
        "examples": examples,
        **counted,
        "iw_samples": iw_samples if model.latent_dim else 0,
        "kl_per_dim": [round(float(v), 5) for v in kl_per_dim],
    }
    if flow:
        metrics["kl_estimate"] = f"monte-carlo, {iw_samples} draws per example"
        metrics["au_estimate"] = f"E_q[z|x] after the flow from {AU_SAMPLES} draws per example (the same draws for all)"
    return metrics


def _evaluate_batch(model, batch, iw_samples, device, precision, token_budget, flow, noise, counts) -> dict[str, Any]:
    """One batch's sums (rec, kl, nll), its example count and `counts`, and the rows the MI sample keeps."""
    with autocast(device, precision):
        if model.latent_dim == 0:
            log_px = model.log_likelihood(batch, None)[:, 0].float()
            rec, kl, nll = -log_px, torch.zeros_like(log_px), -log_px
        else:
            mu, logvar = model.encode(batch)
            chunk = iw_chunk(iw_samples, batch.footprint, token_budget)
            log_w, log_px_z, log_ratio = iw_log_weights(model, batch, mu, logvar, iw_samples, chunk)
            rec = -log_px_z.mean(1)  # E_q[-log p(x|z)], averaged over the K samples
            kl_terms = posterior_kl(model, batch, mu, logvar, log_ratio=log_ratio)  # core/latent.py's rule
            kl = kl_terms.sum(-1)
            nll = -iw_log_likelihood(log_w)
    rows, kl_sum = [], None
    if model.latent_dim:
        rows = [mu.float().cpu(), logvar.float().cpu()]
        if flow:  # in fp32, outside autocast: a property of the model, not of bf16
            rows.append(posterior_mean(model, mu, logvar, noise).cpu())
        kl_sum = kl_terms.sum(0).float().cpu()
    return {
        "rec": float(rec.sum()),
        "kl": float(kl.sum()),
        "nll": float(nll.sum()),
        "examples": batch.size,
        "counts": {name: int(count(batch)) for name, count in counts.items()},
        "rows": rows,
        "kl_sum": kl_sum,
    }
