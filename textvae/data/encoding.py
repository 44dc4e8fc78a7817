"""Sentences to ids, many at a time: flat numpy arrays (ids, offsets, word counts), truncated to a maximum length.

One code path for the encoded-corpus cache (textvae/data/store.py) and for sentences given in memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from textvae.data.tokenizer import Tokenizer, WordTokenizer

ENCODE_BATCH = 50_000  # sentences encoded at once from memory: bounds the Python objects alive


@dataclass(frozen=True)
class Encoded:
    """Sentences encoded once, without <bos>/<eos>; numpy arrays, in memory or memory-mapped."""

    tokens: np.ndarray  # [sum n_i] ids: sentence i is tokens[offsets[i] : offsets[i + 1]]
    offsets: np.ndarray  # [N + 1] int64
    words: np.ndarray  # [N] whitespace words encoded + 1 (<eos>), for per-word perplexity
    truncated: np.ndarray  # [T] int64: the sentences cut to max_length

    def __len__(self) -> int:
        return len(self.offsets) - 1


def token_dtype(tokenizer: Tokenizer) -> np.dtype:
    """The smallest dtype for the vocabulary's ids: uint16 halves the cache of a vocabulary under 65,536."""
    return np.dtype(np.uint16 if len(tokenizer) <= 1 << 16 else np.int32)


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


def encode_chunk(sentences: list[str], tokenizer: Tokenizer, max_length: int) -> Encoded:
    """Encode `sentences`, each cut to `max_length` ids. Offsets start at 0; `truncated` indexes `sentences`."""
    ids, counts = tokenizer.encode_lines(sentences)
    one_per_word = isinstance(tokenizer, WordTokenizer) and tokenizer.split == "whitespace"
    if one_per_word:
        words = counts.copy()
    else:
        words = np.fromiter(map(len, map(str.split, sentences)), np.int64, len(sentences))
    truncated = np.flatnonzero(counts > max_length)
    if len(truncated):
        starts = np.cumsum(counts) - counts
        position = np.arange(len(ids)) - np.repeat(starts, counts)  # of each id within its sentence
        ids = ids[position < max_length]
        if one_per_word:  # the kept ids are the first max_length words
            words = np.minimum(words, max_length)
        else:
            for row in truncated.tolist():  # the words the kept ids reach, word by word
                words[row] = encoded_words(sentences[row], tokenizer, max_length)
        counts = np.minimum(counts, max_length)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return Encoded(ids.astype(token_dtype(tokenizer)), offsets, (words + 1).astype(np.int32), truncated)


def concatenate(parts: list[Encoded], dtype: np.dtype) -> Encoded:
    """Chunks one after the other, as one: offsets and truncated rows shifted."""
    if not parts:
        return Encoded(np.zeros(0, dtype), np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64))
    token_base = np.cumsum([0] + [len(p.tokens) for p in parts])
    row_base = np.cumsum([0] + [len(p) for p in parts])
    offsets = [parts[0].offsets[:1]] + [p.offsets[1:] + base for p, base in zip(parts, token_base)]
    return Encoded(
        np.concatenate([p.tokens for p in parts]).astype(dtype, copy=False),
        np.concatenate(offsets),
        np.concatenate([p.words for p in parts]),
        np.concatenate([p.truncated + base for p, base in zip(parts, row_base)]).astype(np.int64),
    )


def encode_sentences(sentences: list[str], tokenizer: Tokenizer, max_length: int) -> Encoded:
    """`encode_chunk` of sentences in memory, a batch at a time."""
    parts = [
        encode_chunk(list(sentences[start : start + ENCODE_BATCH]), tokenizer, max_length)
        for start in range(0, len(sentences), ENCODE_BATCH)
    ]
    return concatenate(parts, token_dtype(tokenizer))
