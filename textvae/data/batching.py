"""Encoded splits and length-bucketed batches (little padding), deterministic per (seed, epoch).

A split is a flat array of ids (a memory map of the encoded-corpus cache, textvae/data/store.py, or an array
in memory) and each sentence's start, length and word count. Batches are planned on the lengths alone, in
numpy: memory grows with the corpus by those arrays, not by a Python object per sentence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from textvae.core.device import transfer
from textvae.core.trainer import merge_short_tail
from textvae.data.encoding import Encoded, encode_sentences, encoded_words
from textvae.data.tokenizer import Tokenizer

__all__ = ["POOL", "Plan", "TextBatch", "TextSplit", "bucket", "encoded_words", "transfer"]

POOL = 100  # batches' worth of sentences sorted together: bigger pools pad less, shuffle less


@dataclass
class TextBatch:
    tokens: Tensor  # [B, T] <bos> w_1 .. w_n <eos> <pad> ...
    lengths: Tensor  # [B] n + 2, on the CPU (packing needs host lengths)
    num_tokens: int  # predicted tokens: sum of n + 1 (<eos> included, <bos> not)
    num_words: int = 0  # whitespace words encoded + 1 (<eos>) per sentence, for per-word perplexity with subwords

    @property
    def size(self) -> int:
        return self.tokens.shape[0]

    @property
    def footprint(self) -> int:
        """Positions the decoder computes per latent sample (padding included): sizes evaluation chunks."""
        return self.tokens.numel()

    def to(self, device: torch.device) -> TextBatch:
        return TextBatch(transfer(self.tokens, device), self.lengths, self.num_tokens, self.num_words)


class Plan(Sequence):
    """Batches of sentence indices, each a slice of one index array: no Python list per batch or sentence."""

    def __init__(self, order: np.ndarray, starts: np.ndarray, stops: np.ndarray):
        self.order, self.starts, self.stops = order, starts, stops  # [N], [batches], [batches]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self[i] for i in range(len(self))[item]]
        return self.order[self.starts[item] : self.stops[item]]

    def __eq__(self, other) -> bool:
        return len(self) == len(other) and all(np.array_equal(a, b) for a, b in zip(self, other))

    __hash__ = None


class Batches:
    """Batches of a split collated one at a time as they are iterated (evaluation over a large split)."""

    def __init__(self, split: TextSplit, plan: Sequence):
        self.split, self.plan = split, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[TextBatch]:
        return (self.split.collate(indices) for indices in self.plan)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self.split.collate(indices) for indices in self.plan[item]]
        return self.split.collate(self.plan[item])


class _Sequences(Sequence):
    """split.sequences[i]: sentence i's ids with <bos> and <eos>, as a tensor (built on access)."""

    def __init__(self, split: TextSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> Tensor:
        return self.split.collate([i]).tokens[0]


class TextSplit:
    """One split, encoded once: ids with <bos>/<eos> added at collation, truncated to a maximum length."""

    def __init__(self, sentences: Sequence[str], tokenizer: Tokenizer, max_length: int):
        self._attach(tokenizer, encode_sentences(list(sentences), tokenizer, max_length))

    @classmethod
    def from_encoded(cls, tokenizer: Tokenizer, encoded: Encoded, rows: np.ndarray | None = None) -> TextSplit:
        """A split over encoded sentences (a stream of the cache), or over some `rows` of them (a held-out part)."""
        split = cls.__new__(cls)
        split._attach(tokenizer, encoded, rows)
        return split

    def _attach(self, tokenizer: Tokenizer, encoded: Encoded, rows: np.ndarray | None = None) -> None:
        self.tokenizer, self.tokens = tokenizer, encoded.tokens
        if rows is None:
            self.starts = encoded.offsets[:-1]  # [N] int64 (a view of a memory map stays one)
            sizes = np.diff(encoded.offsets)
            self.word_counts = encoded.words  # [N]
            self._truncated = np.asarray(encoded.truncated)  # [T] indices of sentences cut to max_length
        else:
            rows = np.asarray(rows, dtype=np.int64)
            self.starts = np.asarray(encoded.offsets[rows])
            sizes = np.asarray(encoded.offsets[rows + 1]) - self.starts
            self.word_counts = np.asarray(encoded.words[rows])
            self._truncated = np.flatnonzero(np.isin(rows, encoded.truncated))
        self.lengths = (sizes + 2).astype(np.int32)  # [N] <bos> + ids + <eos>

    def subset(self, rows: Sequence[int]) -> TextSplit:
        """The sentences `rows` of this split, in that order (a spread-out part for evaluation)."""
        rows = np.asarray(rows, dtype=np.int64)
        part = TextSplit.__new__(TextSplit)
        part.tokenizer, part.tokens = self.tokenizer, self.tokens
        part.starts, part.lengths, part.word_counts = self.starts[rows], self.lengths[rows], self.word_counts[rows]
        part._truncated = np.flatnonzero(np.isin(rows, self._truncated))
        return part

    @property
    def truncated(self) -> int:
        """Sentences cut to max_length."""
        return len(self._truncated)

    @property
    def sequences(self) -> Sequence[Tensor]:
        return _Sequences(self)

    def __len__(self) -> int:
        return len(self.lengths)

    def collate(self, indices: Sequence[int]) -> TextBatch:
        """Sentences `indices` padded into one batch: tokens [B, T] with <bos>/<eos>, T the longest + 2."""
        indices = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[indices].astype(np.int64)  # [B]
        body = lengths - 2
        tokens = np.full((len(indices), int(lengths.max(initial=2))), self.tokenizer.pad_id, dtype=np.int64)
        tokens[:, 0] = self.tokenizer.bos_id
        row = np.repeat(np.arange(len(indices)), body)
        first = np.repeat(np.cumsum(body) - body, body)  # each id's sentence's first position in the flat ids
        position = np.arange(int(body.sum())) - first
        tokens[row, position + 1] = self.tokens[np.repeat(self.starts[indices], body) + position]
        tokens[np.arange(len(indices)), lengths - 1] = self.tokenizer.eos_id
        words = int(self.word_counts[indices].sum())
        return TextBatch(torch.from_numpy(tokens), torch.from_numpy(lengths), int(lengths.sum()) - len(indices), words)

    def batches(self, plan: Sequence) -> Batches:
        """The batches of `plan`, collated as they are iterated."""
        return Batches(self, plan)

    def plan(self, epoch: int, batch_size: int, max_tokens: int = 0, seed: int = 0, min_sentences: int = 1) -> Plan:
        """Shuffled length-bucketed batches for one epoch: the same (seed, epoch) gives the same plan.

        Pools of `POOL` batches' worth of shuffled sentences are each sorted by length (stable) and cut into
        batches; the batches are then shuffled. Each batch holds at least `min_sentences` (the processes that
        share it) where the epoch has that many: see cut_points."""
        rng = np.random.default_rng([seed % (1 << 64), epoch])
        order = rng.permutation(len(self))
        pool = batch_size * POOL
        lengths = self.lengths[order].astype(np.int64)
        key = np.arange(len(order)) // pool * (int(lengths.max(initial=0)) + 1) + lengths  # (pool, length)
        sort = np.argsort(key, kind="stable")
        order, lengths = order[sort], lengths[sort]
        if max_tokens:
            starts = np.concatenate(
                [start + cut_points(lengths[start : start + pool], batch_size, max_tokens, min_sentences)
                 for start in range(0, len(order), pool)] or [np.zeros(0, np.int64)]
            )  # fmt: skip
        else:  # pools hold whole batches, so the cuts of one pool after another are every batch_size
            starts = merge_short_tail(np.arange(0, len(order), batch_size), len(order), min_sentences)
        stops = np.append(starts[1:], len(order))
        shuffle = rng.permutation(len(starts))
        return Plan(order, starts[shuffle], stops[shuffle])

    def ordered(self, batch_size: int) -> Plan:
        """Batches for evaluation: sorted by length (stable), no shuffling."""
        order = np.argsort(self.lengths, kind="stable")
        starts = np.arange(0, len(order), batch_size)
        return Plan(order, starts, np.append(starts[1:], len(order)))


def cut_points(lengths: np.ndarray, batch_size: int, max_tokens: int, min_sentences: int = 1) -> np.ndarray:
    """Where batches start in a run of sentences with these `lengths` (in order): at most `batch_size`
    sentences and `max_tokens` padded tokens each; a single sentence longer than that still makes a batch, and
    so do `min_sentences` (the processes that share each batch) over the budget (see merge_short_tail)."""
    starts, start = [], 0
    while start < len(lengths):
        window = lengths[start : start + batch_size]
        padded = np.maximum.accumulate(window) * np.arange(1, len(window) + 1)  # a batch of the first k
        fits = padded <= max_tokens
        fits[: max(1, min_sentences)] = True
        starts.append(start)
        start += len(window) if fits.all() else int(np.argmin(fits))
    return merge_short_tail(np.array(starts, dtype=np.int64), len(lengths), min_sentences)


def bucket(indices: list[int], lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Cut length-sorted indices into batches of at most `batch_size` sentences and `max_tokens` padded tokens."""
    indices = np.asarray(indices, dtype=np.int64)
    run = np.asarray(lengths, dtype=np.int64)[indices]
    starts = cut_points(run, batch_size, max_tokens) if max_tokens else np.arange(0, len(indices), batch_size)
    return [part.tolist() for part in np.split(indices, starts[1:])]
