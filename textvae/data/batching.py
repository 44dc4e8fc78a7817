"""Encoded splits and length-bucketed batches (little padding), deterministic per (seed, epoch)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from textvae.data.tokenizer import Tokenizer

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


def encoded_words(sentence: str, tokenizer: Tokenizer, kept: int) -> int:
    """Whitespace words of `sentence` that its first `kept` ids reach; a word cut by the truncation counts.

    Per-word perplexity divides the NLL of the encoded ids by these words, not by the whole sentence's. Pieces
    never cross a space (word vocabularies and sentencepiece's default), so the sentence's ids are its words'
    ids one after the other; only the words up to the cut are encoded.
    """
    reached = ids = 0
    for word in sentence.split():
        if ids >= kept:
            break
        reached += 1
        ids += len(tokenizer.encode(word))
    return reached


def transfer(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch tensor to `device`; to CUDA through pinned memory, so the copy does not block the host."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class TextSplit:
    """One split, encoded once: sentences as id tensors with <bos>/<eos>, truncated to a maximum length."""

    def __init__(self, sentences: list[str], tokenizer: Tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.sequences: list[Tensor] = []
        self.truncated = 0
        self.word_counts: list[int] = []  # whitespace words encoded + 1 (<eos>) per sentence
        for sentence in sentences:
            ids = tokenizer.encode(sentence)
            words = len(sentence.split())
            if len(ids) > max_length:
                ids = ids[:max_length]
                words = encoded_words(sentence, tokenizer, max_length)
                self.truncated += 1
            self.sequences.append(torch.tensor([tokenizer.bos_id, *ids, tokenizer.eos_id], dtype=torch.long))
            self.word_counts.append(words + 1)
        self.lengths = [len(s) for s in self.sequences]

    def __len__(self) -> int:
        return len(self.sequences)

    def collate(self, indices: list[int]) -> TextBatch:
        seqs = [self.sequences[i] for i in indices]
        tokens = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=self.tokenizer.pad_id)
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        words = sum(self.word_counts[i] for i in indices)
        return TextBatch(tokens, lengths, int(lengths.sum()) - len(seqs), words)

    def plan(self, epoch: int, batch_size: int, max_tokens: int = 0, seed: int = 0) -> list[list[int]]:
        """Shuffled length-bucketed batches for one epoch: the same (seed, epoch) gives the same plan."""
        rng = random.Random(seed * 1_000_003 + epoch)
        order = list(range(len(self)))
        rng.shuffle(order)
        batches = []
        pool = batch_size * POOL
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=self.lengths.__getitem__)
            batches.extend(bucket(chunk, self.lengths, batch_size, max_tokens))
        rng.shuffle(batches)
        return batches

    def ordered(self, batch_size: int) -> list[list[int]]:
        """Batches for evaluation: sorted by length, no shuffling."""
        chunk = sorted(range(len(self)), key=self.lengths.__getitem__)
        return bucket(chunk, self.lengths, batch_size, 0)


def bucket(indices: list[int], lengths: list[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Cut length-sorted indices into batches of at most `batch_size` sentences and `max_tokens` padded tokens."""
    batches, current, longest = [], [], 0
    for i in indices:
        grown = max(longest, lengths[i])
        if current and (len(current) == batch_size or (max_tokens and grown * (len(current) + 1) > max_tokens)):
            batches.append(current)
            current, grown = [], lengths[i]
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches
