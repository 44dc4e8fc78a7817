"""Passes over a corpus chunk by chunk, in worker processes: count sentences, count words, sample sentences,
encode. Results come back in chunk order, so every pass gives what one process reading the corpus in order
would (the vocabulary's ties broken by first appearance included).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import Counter
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from textvae.config import DataConfig
from textvae.data.corpus import holdout_rows
from textvae.data.encoding import encode_chunk
from textvae.data.sources import Source, Stream
from textvae.data.tokenizer import SentencePieceTokenizer, Tokenizer, WordTokenizer
from textvae.errors import UserError

log = logging.getLogger(__name__)

_WORKER: dict[str, Any] = {}  # what a worker needs beyond its job (tokenizer, datasets): set by Runner


def _setup(context: dict[str, Any]) -> None:
    _WORKER.clear()
    _WORKER.update(context)


def _job(job: tuple[str, Any, Any]) -> Any:
    """One pass's work on one chunk: job = (kind, chunk, argument)."""
    kind, chunk, argument = job
    sentences, blank = chunk.read(_WORKER.get("datasets", {}))
    if kind == "count":
        return len(sentences), blank
    if argument is not None:  # the rows of the chunk this pass reads (its training rows, a sample)
        sentences = [sentences[i] for i in argument.tolist()]
    if kind == "words":
        return WordTokenizer.count_words(sentences, _WORKER["config"])
    if kind == "sample":
        return sentences
    encoded = encode_chunk(sentences, _WORKER["tokenizer"], _WORKER["max_length"])
    return encoded, blank


def default_workers() -> int:
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class Runner:
    """Runs jobs in `workers` forked processes (inheriting the tokenizer, never pickling it), or in this one."""

    def __init__(self, workers: int, source: Source, tokenizer: Tokenizer | None = None, max_length: int = 0,
                 config: DataConfig | None = None):  # fmt: skip
        self.workers = workers or default_workers()
        chunks = sum(len(stream.chunks) for stream in source.streams.values())
        if chunks < 2:  # nothing to share out
            self.workers = 1
        self.context = {"datasets": source.datasets, "tokenizer": tokenizer, "max_length": max_length,
                        "config": config}  # fmt: skip
        self.pool = None

    def __enter__(self) -> Runner:
        if self.workers > 1:
            # fork: the workers start at once and share the parent's tokenizer and datasets, which need
            # not pickle (sentencepiece's processor does not); they run no torch code
            self.pool = multiprocessing.get_context("fork").Pool(self.workers, _setup, (self.context,))
        else:
            _setup(self.context)
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        _WORKER.clear()

    def map(self, kind: str, chunks: list[Any], arguments: list[Any] | None = None):
        """Results of `kind` on each chunk, in order, as they come."""
        jobs = [(kind, chunk, None if arguments is None else arguments[i]) for i, chunk in enumerate(chunks)]
        if self.pool is None:
            return map(_job, jobs)
        return self.pool.imap(_job, jobs)


def encode_stream(runner: Runner, stream: Stream, directory: Path, name: str, dtype: np.dtype) -> dict[str, int]:
    """Encode a stream chunk by chunk into directory/NAME.{tokens,offsets,words,truncated}, appending as the
    chunks come: memory holds a few chunks, never the stream. -> counts (sentences, tokens, blank, truncated)."""
    info = {"sentences": 0, "tokens": 0, "blank": 0, "truncated": 0}
    files = {part: open(directory / f"{name}.{part}", "wb") for part in ("tokens", "offsets", "words", "truncated")}
    try:
        np.zeros(1, np.int64).tofile(files["offsets"])
        for encoded, blank in runner.map("encode", stream.chunks):
            encoded.tokens.astype(dtype, copy=False).tofile(files["tokens"])
            (encoded.offsets[1:] + info["tokens"]).astype(np.int64).tofile(files["offsets"])
            encoded.words.astype(np.int32, copy=False).tofile(files["words"])
            (encoded.truncated + info["sentences"]).astype(np.int64).tofile(files["truncated"])
            info["sentences"] += len(encoded)
            info["tokens"] += len(encoded.tokens)
            info["truncated"] += len(encoded.truncated)
            info["blank"] += blank
    finally:
        for handle in files.values():
            handle.close()
    return info


def holdout(source: Source, stream: str, count: int) -> list[np.ndarray]:
    """The rows of each part of `stream`'s seeded holdout (corpus.holdout_rows), for its `count` sentences."""
    return holdout_rows(count, source.holdouts[stream], source.streams[stream].label)


def holdout_note(source: Source, stream: str, sizes: list[int], fractions: tuple[float, ...]) -> str:
    """The log line that says how a stream was split."""
    names = [split for split, (name, _) in sorted(source.layout.items(), key=lambda item: item[1][1] or 0)
             if name == stream]  # fmt: skip
    parts = " / ".join(f"{split} {size}" for split, size in zip(names, sizes))
    return (f"{source.streams[stream].label}: split {sum(sizes)} lines into {parts} (seeded holdout, seed 1234, "
            f"{fractions[0]:.0%} each held out)")  # fmt: skip


def _per_chunk(rows: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    """Sorted stream rows -> for each chunk (of `counts` sentences), the chunk-local rows among them."""
    bounds = np.cumsum([0] + counts)
    cuts = np.searchsorted(rows, bounds)
    return [rows[cuts[i] : cuts[i + 1]] - bounds[i] for i in range(len(counts))]


def _training_rows(runner: Runner, source: Source) -> tuple[Stream, np.ndarray, list[int]]:
    """The training split's stream, its rows in it, and its chunks' sentence counts (one counting pass)."""
    name, part = source.layout["train"]
    stream = source.streams[name]
    counts = [count for count, _ in runner.map("count", stream.chunks)]
    total = sum(counts)
    if total == 0:
        raise UserError(f"{stream.label}: the corpus is empty (no non-blank lines)")
    rows = np.arange(total) if part is None else holdout(source, name, total)[part]
    return stream, rows, counts


def build_tokenizer(config: DataConfig, source: Source, directory: Path, workers: int = 0) -> Tokenizer:
    """The tokenizer of `config` built on `source`'s training split, in passes over the chunks: the word
    vocabulary counts every training sentence; sentencepiece trains on at most data.tokenizer_sample of them,
    spread evenly over the split. Held-out corpora cost one more pass (counting, for the holdout's rows)."""
    with Runner(workers, source, config=config) as runner:
        name, part = source.layout["train"]
        if config.tokenizer == "word" and part is None:  # every row of the stream trains: no counting pass
            stream, selection = source.streams[name], None
        else:
            stream, rows, counts = _training_rows(runner, source)
            if config.tokenizer != "word" and config.tokenizer_sample and len(rows) > config.tokenizer_sample:
                limit = config.tokenizer_sample
                log.info("sentencepiece: trained on %d of the %d training sentences, spread evenly "
                         "(data.tokenizer_sample)", limit, len(rows))  # fmt: skip
                rows = rows[np.arange(limit) * len(rows) // limit]
            selection = _per_chunk(rows, counts)
        if config.tokenizer == "word":
            total = Counter()
            for counts_of_chunk in runner.map("words", stream.chunks, selection):
                total.update(counts_of_chunk)
            tokenizer = WordTokenizer.from_counts(total, config)
            log.info("word vocabulary: %d of the %d types counted over the whole training split",
                     len(tokenizer) - 4, len(total))  # fmt: skip
            return tokenizer
        sentences = list(chain.from_iterable(runner.map("sample", stream.chunks, selection)))
    return SentencePieceTokenizer.build(sentences, config, directory)
