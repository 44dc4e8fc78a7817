"""Wiring for text runs: corpus + tokenizer + model + trainer from a config, and loading a run back.

textvae/dispatch.py sends image runs elsewhere; the run directory's lifecycle is textvae/core/run.py's."""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from textvae.config import Config
from textvae.core import distributed
from textvae.core.device import resolve_device
from textvae.core.evaluation import Journal, spread
from textvae.core.gaps import inference_gaps
from textvae.core.refit import check_refit, refit_encoder
from textvae.core.run import load_trained, open_run, read_config, save_config
from textvae.core.trainer import Trainer
from textvae.data.batching import Batches, TextSplit
from textvae.data.store import encoded_splits, load_splits
from textvae.data.tokenizer import Tokenizer, load_tokenizer
from textvae.errors import UserError
from textvae.generate import Decoding, decode, interpolation_path
from textvae.models import build_text_model
from textvae.quality import assess, corpus_bleu, reconstruct_split
from textvae.text_metrics import evaluate_text, ppl_unit

log = logging.getLogger(__name__)
RECON_SENTENCES = 100  # validation sentences (spread over the split) behind val/recon_bleu: cheap, greedy


@dataclass
class TextRun:
    config: Config
    tokenizer: Tokenizer
    model: nn.Module
    splits: dict[str, TextSplit]
    device: torch.device
    step: int = 0  # the optimizer step of the loaded checkpoint


def prepare(config: Config, run_dir: Path, splits: tuple[str, ...]) -> TextRun:
    """Build (or reload) the run's tokenizer, open the encoded splits (tokenized once, into the cache of
    textvae/data/store.py), build the model."""
    tokenizer, encoded = load_splits(config.data, run_dir / "tokenizer", splits, config.train.data_workers)
    for name in splits:
        if encoded[name].truncated:
            log.warning("%s: %d sentence(s) truncated to %d tokens", name, encoded[name].truncated,
                        config.data.max_length)  # fmt: skip
    log.info("vocabulary %d (%s); %s", len(tokenizer), tokenizer.kind,
             ", ".join(f"{k} {len(v)} sentences" for k, v in encoded.items()))  # fmt: skip
    torch.manual_seed(config.train.seed)  # the model's initialization depends on the seed alone
    model = build_text_model(config.model, tokenizer, config.objective.bow_weight > 0)
    return TextRun(config, tokenizer, model, encoded, resolve_device(config.train.device))


def text_report(run: TextRun, count: int, seed: int = 0):
    """A callback for the trainer: prior samples, reconstructions of fixed validation sentences and
    one interpolation between two of them (from the only one to the prior's mean when the split has one
    sentence), decoded by beam search (what the model can do, not greedy's first guess), as text for TensorBoard."""
    valid = run.splits["valid"]
    fixed = valid.collate(list(range(min(max(count, 2), len(valid)))))
    tok = run.tokenizer
    # no longer than a training sentence can be (<eos> included): a cheap report on short-sentence configs
    greedy = Decoding(max_length=min(Decoding().max_length, run.config.data.max_length + 1))
    beam = replace(greedy, strategy="beam")

    def report(model: nn.Module) -> dict[str, str]:
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            if model.latent_dim:
                prior = torch.randn(count, model.latent_dim).to(run.device)
                samples = decode(model.decoder, prior, tok.bos_id, tok.eos_id, beam)
                mu, _ = model.encode(fixed.to(run.device))
                recon = decode(model.decoder, mu, tok.bos_id, tok.eos_id, beam)
                end = mu[1] if len(mu) > 1 else torch.zeros_like(mu[0])
                path = decode(model.decoder, interpolation_path(mu[0], end, 5), tok.bos_id, tok.eos_id, beam)
                sources = [tok.decode(s) for s in fixed.tokens.tolist()]
                texts = {
                    "reconstructions": "\n\n".join(f"{s}  →  {tok.decode(r)}" for s, r in zip(sources, recon)),
                    "interpolation": "\n\n".join(tok.decode(row) for row in path),
                }
            else:
                sampling = replace(greedy, strategy="sample")
                samples = decode(model.decoder, None, tok.bos_id, tok.eos_id, sampling, num=count)
                texts = {}
        model.train(was_training)
        texts["samples"] = "\n\n".join(tok.decode(s) for s in samples)
        return texts

    return report


def train_text(config: Config, run_dir: Path, device: torch.device | None = None) -> dict[str, Any] | None:
    """Train (or resume) a text run in `run_dir` (on `device`, else train.device); return the last validation
    metrics. Under torchrun (textvae.dispatch.train sets it up) each process trains on its share of every batch."""
    open_run(config, run_dir)
    if distributed.is_main() and not (run_dir / "checkpoints" / "last.pt").is_file():
        # a fresh start: a tokenizer left by a start stopped before its first checkpoint may be of other settings
        # (no config check guards it); it is built again, from the cache when the settings are the same
        shutil.rmtree(run_dir / "tokenizer", ignore_errors=True)
    # the tokenizer, the encoded corpus and the config are written once, then read by every rank
    run = prepare(config, run_dir, ("train", "valid")) if distributed.is_main() else None
    save_config(config, run_dir)
    if distributed.active():
        torch.distributed.barrier()
    run = run or prepare(config, run_dir, ("train", "valid"))
    if device is not None:
        run.device = device
    train_cfg = config.train
    rank, world = distributed.rank(), distributed.world_size()
    valid_plan = run.splits["valid"].ordered(train_cfg.eval_batch_size)[rank::world]
    valid_batches = run.splits["valid"].batches(valid_plan)  # collated as evaluated: a big split stays a memory map
    recon_split = run.splits["valid"].subset(spread(len(run.splits["valid"]), RECON_SENTENCES))
    greedy = Decoding(max_length=min(Decoding().max_length, config.data.max_length + 1))

    def evaluate_valid(model: nn.Module) -> dict[str, Any]:
        metrics = evaluate_text(model, valid_batches, train_cfg.eval_iw_samples, run.device, train_cfg.precision,
                                ppl_unit(run.tokenizer), mi_max_examples=train_cfg.mi_max_examples)  # fmt: skip
        if model.latent_dim:  # how much of a sentence the code holds, as the likelihood metrics do not say
            metrics["recon_bleu"] = corpus_bleu(*reconstruct_split(model, run.tokenizer, recon_split, greedy,
                                                                   run.device))  # fmt: skip
        return metrics

    check_refit(run.model, config)
    trainer = Trainer(run.model, run.splits["train"], evaluate_valid, config, run_dir, run.device,
                      text_report(run, train_cfg.num_text_samples))  # fmt: skip
    metrics = trainer.fit()
    if train_cfg.refit_encoder_steps:
        metrics = refit_encoder(run.model, run.splits["train"], evaluate_valid, config, run_dir, run.device) or metrics
    return metrics


def load_run(run_dir: Path, checkpoint: str = "best") -> TextRun:
    """Rebuild a trained run's model and tokenizer from its directory (best.pt, else last.pt)."""
    config = read_config(run_dir)
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    model = build_text_model(config.model, tokenizer, config.objective.bow_weight > 0)
    step = load_trained(run_dir, config, model, checkpoint)
    device = resolve_device(config.train.device)
    model.to(device).eval()
    return TextRun(config, tokenizer, model, {}, device, step)


def split_batches(run: TextRun, split: str, max_examples: int | None = None) -> Batches:
    """A split of the run's corpus (or `max_examples` sentences spread evenly over it) in evaluation batches,
    collated as they are iterated."""
    data = encoded_splits(run.config.data, run.tokenizer, (split,), workers=run.config.train.data_workers)[split]
    if max_examples is not None:
        data = data.subset(spread(len(data), max_examples))
    return data.batches(data.ordered(run.config.train.eval_batch_size))


def evaluation_journal(run_dir: Path, run: TextRun, split: str, iw_samples: int, precision: str,
                       max_examples: int | None, batches: Batches) -> Journal:  # fmt: skip
    """Where an evaluation of `run` keeps its progress (RUN_DIR/evaluation_SPLIT_iwK[_nN].partial, one file a rank),
    so that a stopped `textvae evaluate` or reproduction suite resumes it; keyed by what decides its figures."""
    name = f"evaluation_{split}_iw{iw_samples}" + (f"_n{max_examples}" if max_examples is not None else "")
    if distributed.active():
        name += f"_rank{distributed.rank()}of{distributed.world_size()}"
    plan = hashlib.sha256()  # which sentences each batch holds (train.eval_batch_size may change between runs)
    for indices in batches.plan:
        plan.update(np.asarray(indices, dtype=np.int64).tobytes() + b"|")
    key = {"step": run.step, "split": split, "iw_samples": iw_samples, "precision": precision,
           "max_examples": max_examples, "plan": plan.hexdigest(), "device": run.device.type}  # fmt: skip
    return Journal(run_dir / f"{name}.partial", key)


def evaluate_text_run(
    run_dir: Path,
    split: str,
    iw_samples: int,
    precision: str = "fp32",
    gaps: dict[str, Any] | None = None,
    max_examples: int | None = None,
    quality: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a trained run on a split of its corpus with K importance samples; with `gaps` (options of
    core.gaps.inference_gaps: svi_steps, svi_lr, svi_samples, elbo_samples) also the inference-gap report;
    with `quality` ({decode, beam_size, reconstruction, interpolations, steps, seed}: see quality.assess) also
    the reconstruction and interpolation scores of the same sentences, decoded up to data.max_length + 1 tokens.
    `max_examples` evaluates that many examples spread evenly over the split (the same ones every time)."""
    run = load_run(run_dir)
    if quality is not None and not run.model.latent_dim:
        raise UserError("this run is a language model: it has no latent code to reconstruct or interpolate from")
    batches = split_batches(run, split, max_examples)
    population = "split" if max_examples is None else "--max-examples part of the split"
    journal = evaluation_journal(run_dir, run, split, iw_samples, precision, max_examples, batches)
    metrics = evaluate_text(run.model, batches, iw_samples, run.device, precision, ppl_unit(run.tokenizer),
                            population=population, mi_max_examples=run.config.train.mi_max_examples,
                            journal=journal)  # fmt: skip
    metrics["split"] = split
    metrics["checkpoint_step"] = run.step
    if max_examples is not None:
        metrics["max_examples"] = max_examples
    if gaps is not None and run.model.latent_dim:
        metrics["gaps"] = inference_gaps(
            run.model, batches, run.device, -metrics["nll"], **gaps, precision=precision, iw_samples=iw_samples
        )
    if quality is not None:
        data = batches.split  # the sentences evaluated above, encoded (any corpus kind, the cache's memory map)
        options = Decoding(quality["decode"], run.config.data.max_length + 1, quality["beam_size"])
        metrics.update(assess(run.model, run.tokenizer, data, options, run.device, quality["reconstruction"],
                              quality["interpolations"], quality["steps"], quality["seed"]))  # fmt: skip
    return metrics
