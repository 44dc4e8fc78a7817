"""How much of a sentence the latent code holds: reconstruction and interpolation metrics (README, Metrics).

The scores are pure functions of strings; the helpers below them run a model over many sentences in batches:
posterior means, decoding of each sentence's posterior mean, interpolation paths between pairs.
Sentences are compared as the model sees them (its vocabulary's <unk>s, truncation), as whitespace tokens.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sacrebleu
import torch
from torch import Tensor, nn

from textvae.core.estimators import decoder_code
from textvae.data.batching import TextSplit
from textvae.data.tokenizer import Tokenizer
from textvae.generate import Decoding, decode, interpolation_path


def corpus_bleu(references: list[str], outputs: list[str]) -> float:
    """Corpus BLEU (sacrebleu, 0-100) of `outputs` against one reference each, on the text's own tokens."""
    # force: the text is tokenized on purpose (the model's tokens), not by mistake as sacrebleu warns
    return sacrebleu.corpus_bleu(outputs, [references], tokenize="none", force=True).score


def sentence_bleu(reference: str, output: str) -> float:
    """Sentence BLEU (sacrebleu, 0-100, exponential smoothing) of one output against one reference."""
    return sacrebleu.sentence_bleu(output, [reference], tokenize="none").score


def exact_match(references: list[str], outputs: list[str]) -> float:
    """Share of outputs equal to their reference, token for token."""
    return sum(r.split() == o.split() for r, o in zip(references, outputs)) / max(1, len(references))


def token_accuracy(references: list[str], outputs: list[str]) -> float:
    """Share of reference positions (words and the end) that the output reproduces at the same position."""
    hits = total = 0
    for reference, output in zip(references, outputs):
        ref, out = reference.split() + ["</s>"], output.split() + ["</s>"]
        hits += sum(r == o for r, o in zip(ref, out))
        total += len(ref)
    return hits / max(1, total)


def reconstruction_scores(references: list[str], outputs: list[str]) -> dict[str, Any]:
    """BLEU, exact-match rate and token accuracy of reconstructions against their inputs."""
    return {
        "bleu": round(corpus_bleu(references, outputs), 2),
        "exact_match": round(exact_match(references, outputs), 4),
        "token_accuracy": round(token_accuracy(references, outputs), 4),
        "sentences": len(references),
    }


def interpolation_scores(paths: list[list[str]]) -> dict[str, Any]:
    """Two shares over interpolation paths of K decoded points each (both ends included).

    `distinct`: paths with at least K - 2 distinct sentences (a path that repeats one sentence and then jumps
    fails it). `monotone`: of all K - 1 steps, those at which the sentence BLEU to the path's last sentence (the
    decoded target end) does not fall: the path moves towards the target, or stays, never away from it.
    """
    distinct = monotone = steps = 0
    for path in paths:
        distinct += len(set(path)) >= len(path) - 2
        scores = [sentence_bleu(path[-1], sentence) for sentence in path]
        monotone += sum(after >= before - 1e-9 for before, after in zip(scores, scores[1:]))
        steps += len(path) - 1
    return {
        "distinct": round(distinct / max(1, len(paths)), 4),
        "monotone": round(monotone / max(1, steps), 4),
        "paths": len(paths),
        "steps": len(paths[0]) if paths else 0,
    }


def random_pairs(count: int, pairs: int, seed: int) -> list[tuple[int, int]]:
    """`pairs` pairs of distinct indices of range(count), drawn with `seed`: the same every time."""
    rng = random.Random(seed)
    return [tuple(rng.sample(range(count), 2)) for _ in range(pairs)]


def references(split: TextSplit, tokenizer: Tokenizer) -> list[str]:
    """Each sentence of `split` as the model sees it: its ids (truncated, <unk>s) decoded without <bos>/<eos>."""
    return [tokenizer.decode(seq[1:-1].tolist()) for seq in split.sequences]


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout, no word dropout, BN-VAE's running statistics), then as it was."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def posterior_means(model: nn.Module, split: TextSplit, device: torch.device, batch_size: int = 256,
                    decoded: bool = False) -> Tensor:  # fmt: skip
    """E_q[z|x] for every sentence of `split`, in its order -> [N, D] on the CPU: of the base Gaussian (mu, the
    probe's features), or with `decoded` of the z the decoder reads (estimators.decoder_code: the code to decode
    from, which differs from mu under a flow)."""
    means = torch.zeros(len(split), model.latent_dim)
    with evaluating(model):
        for indices in split.ordered(batch_size):  # length-sorted batches pad little; rows go back in place
            mu, logvar = model.encode(split.collate(indices).to(device))
            means[indices] = (decoder_code(model, mu, logvar) if decoded else mu.float()).cpu()
    return means


def decode_codes(model: nn.Module, tokenizer: Tokenizer, z: Tensor, options: Decoding, batch_size: int = 256
                 ) -> list[str]:  # fmt: skip
    """One sentence per row of z ([N, D]), decoded `batch_size` rows at a time (beam: that many inputs)."""
    device = next(model.parameters()).device
    banned = [tokenizer.pad_id, tokenizer.bos_id]
    sentences = []
    with evaluating(model):
        for start in range(0, len(z), batch_size):
            rows = z[start : start + batch_size].to(device, torch.float32)
            ids = decode(model.decoder, rows, tokenizer.bos_id, tokenizer.eos_id, options, banned=banned)
            sentences.extend(tokenizer.decode(row) for row in ids)
    return sentences


def reconstruct_split(model: nn.Module, tokenizer: Tokenizer, split: TextSplit, options: Decoding,
                      device: torch.device, means: Tensor | None = None) -> tuple[list[str], list[str]]:  # fmt: skip
    """(inputs as the model sees them, their reconstructions decoded from the posterior means [N, D]).
    Decoded in order of length, so that a batch's rows end at about the same step."""
    means = posterior_means(model, split, device, decoded=True) if means is None else means
    order = [i for batch in split.ordered(max(1, len(split))) for i in batch]
    decoded = decode_codes(model, tokenizer, means[order], options)
    outputs = [""] * len(split)
    for position, index in enumerate(order):
        outputs[index] = decoded[position]
    return references(split, tokenizer), outputs


def pair_paths(means: Tensor, pairs: list[tuple[int, int]], steps: int) -> Tensor:
    """The K = `steps` points of the straight line between the codes of each pair (a, b), both ends
    included. means: [N, D] -> [pairs * K, D], pair after pair."""
    if not pairs:
        return means.new_zeros(0, means.shape[-1])
    return torch.cat([interpolation_path(means[a], means[b], steps) for a, b in pairs])


def assess(
    model: nn.Module,
    tokenizer: Tokenizer,
    split: TextSplit,
    options: Decoding,
    device: torch.device,
    reconstruction: bool = True,
    interpolations: int = 0,
    steps: int = 7,
    seed: int = 0,
) -> dict[str, Any]:
    """Reconstruction scores of every sentence of `split` (`reconstruction`) and interpolation scores of
    `interpolations` seeded random pairs of its sentences, K = `steps` points each, all decoded with `options`
    from posterior means. -> {"reconstruction": {...}, "interpolation": {...}} (the parts asked for)."""
    means = posterior_means(model, split, device, decoded=True)
    result: dict[str, Any] = {}
    if reconstruction:
        inputs, outputs = reconstruct_split(model, tokenizer, split, options, device, means)
        result["reconstruction"] = {**reconstruction_scores(inputs, outputs), "decode": options.strategy}
    if interpolations:
        if len(split) < 2:
            raise ValueError("an interpolation needs at least 2 sentences")
        flat = decode_codes(model, tokenizer, pair_paths(means, random_pairs(len(split), interpolations, seed), steps),
                            options)  # fmt: skip
        paths = [flat[i * steps : (i + 1) * steps] for i in range(interpolations)]
        result["interpolation"] = {**interpolation_scores(paths), "decode": options.strategy, "seed": seed}
    return result
