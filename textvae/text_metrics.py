"""The text wiring's evaluation: the core's modality-neutral metrics plus sentences, tokens, words and
perplexity (DESIGN.md, metrics)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from textvae.core.evaluation import evaluate
from textvae.data.tokenizer import Tokenizer

COUNTS = {"tokens": lambda batch: batch.num_tokens, "words": lambda batch: batch.num_words}


def ppl_unit(tokenizer: Tokenizer) -> str:
    """Perplexity per word for subword vocabularies (comparable with word-level runs), else per token."""
    return "word" if tokenizer.kind == "sentencepiece" else "token"


def evaluate_text(
    model: torch.nn.Module,
    batches: Iterable[Any],
    iw_samples: int,
    device: torch.device,
    precision: str = "fp32",
    ppl_unit: str = "token",
    **options: Any,
) -> dict[str, Any]:
    """core.evaluation.evaluate over text batches (its `options`: token_budget, seed, population,
    mi_max_examples), with `sentences`, `tokens` (predicted: <eos> in, <bos> out), `words` (whitespace words
    + 1 per sentence end) and `ppl` = exp(total nll / tokens), or / words when `ppl_unit` is "word":
    comparable across subword vocabularies."""
    metrics = evaluate(model, batches, iw_samples, device, precision, counts=COUNTS, **options)
    metrics["sentences"] = metrics.pop("examples")
    total_nll = metrics["nll"] * metrics["sentences"]
    metrics["ppl"] = math.exp(min(700.0, total_nll / max(1, metrics[ppl_unit + "s"])))
    metrics["ppl_per"] = ppl_unit
    return metrics
