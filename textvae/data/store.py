"""The encoded-corpus cache: a corpus tokenized once into flat numpy files, memory-mapped by every later run.

$TEXTVAE_CACHE_DIR/encoded/<key>/ holds, per stream (a file, or a `datasets` split): STREAM.tokens (ids,
uint16 under 65,536 types), STREAM.offsets (int64, N + 1), STREAM.words (int32, N), STREAM.truncated (rows
cut to data.max_length); PART.rows for the held-out splits of a single file; meta.json. The key hashes the
corpus' content (each file's SHA-256, or `datasets`' fingerprint), the holdout, the tokenizer's fingerprint
and data.max_length: a changed file or tokenizer gets a new entry, a resumed or second run finds its own.

A build writes into a temporary directory beside the entry, fsyncs, and renames it into place: an entry is
complete or absent, never half written; a build that was killed leaves a temporary directory, removed by
the next build. The tokenizer built on a corpus is cached the same way (tokenizer-<key>/), so that a second
run on it skips the pass that counts its words.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textvae.config import DataConfig
from textvae.data import passes
from textvae.data.batching import TextSplit
from textvae.data.corpus import cache_dir
from textvae.data.encoding import Encoded, token_dtype
from textvae.data.sources import Source, resolve_source
from textvae.data.tokenizer import Tokenizer, load_tokenizer
from textvae.errors import UserError

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the files' layout or the encoding changes: older entries are then ignored
TOKENIZER_KEYS = ("tokenizer", "vocab_size", "min_count", "split", "lowercase", "sentencepiece_type",
                  "tokenizer_sample")  # fmt: skip


def store_root() -> Path:
    return cache_dir() / "encoded"


def digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def encoded_key(source: Source, tokenizer: Tokenizer, max_length: int) -> str:
    """The cache entry of `source` encoded by `tokenizer`, cut to `max_length`."""
    return digest({"format": FORMAT, "corpus": source.identity(), "tokenizer": tokenizer.fingerprint(),
                   "max_length": max_length})  # fmt: skip


def tokenizer_key(source: Source, config: DataConfig) -> str:
    """The cache entry of the tokenizer that `config` builds on `source`'s training split."""
    settings = {key: getattr(config, key) for key in TOKENIZER_KEYS}
    return digest({"format": FORMAT, "corpus": source.identity(), "tokenizer": settings})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(root: Path) -> None:
    """Remove the temporary directories of builds whose process is gone (killed midway)."""
    for path in root.glob(".tmp-*"):
        try:
            pid = int(path.name.split("-")[-2])
        except (IndexError, ValueError):
            continue
        if not _alive(pid):
            log.info("removing %s: a build that did not finish", path)
            shutil.rmtree(path, ignore_errors=True)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def publish(build, target: Path) -> None:
    """Run build(temporary directory) and rename the result to `target` once complete and on disk."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent)
    temporary = target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        build(temporary)
        for path in temporary.iterdir():
            _fsync(path)
        _fsync(temporary)
        try:
            os.rename(temporary, target)
        except OSError:  # another process published the same entry first: it is the same content
            if not target.is_dir():
                raise
            shutil.rmtree(temporary, ignore_errors=True)
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _memmap(path: Path, dtype: str, count: int) -> np.ndarray:
    if count == 0:  # an empty file cannot be mapped
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def open_entry(directory: Path, tokenizer: Tokenizer, splits: Sequence[str]) -> dict[str, TextSplit]:
    """The splits of a complete cache entry, over memory maps of its files."""
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    for note in meta["notes"]:
        log.info("%s", note)
    opened: dict[str, Encoded] = {}
    result = {}
    for split in splits:
        stream, part = meta["layout"][split]
        if stream not in opened:
            info = meta["streams"][stream]
            opened[stream] = Encoded(
                _memmap(directory / f"{stream}.tokens", meta["dtype"], info["tokens"]),
                _memmap(directory / f"{stream}.offsets", "int64", info["sentences"] + 1),
                _memmap(directory / f"{stream}.words", "int32", info["sentences"]),
                np.fromfile(directory / f"{stream}.truncated", dtype=np.int64),
            )
        rows = None if part is None else np.fromfile(directory / f"{split}.rows", dtype=np.int64)
        result[split] = TextSplit.from_encoded(tokenizer, opened[stream], rows)
    return result


def build_entry(directory: Path, source: Source, tokenizer: Tokenizer, max_length: int, workers: int) -> None:
    """Encode every stream of `source` into `directory` (see the module's docstring for the files)."""
    started = time.perf_counter()
    dtype = token_dtype(tokenizer)
    meta = {"format": FORMAT, "dtype": dtype.name, "layout": source.layout, "streams": {}, "notes": []}
    with passes.Runner(workers, source, tokenizer, max_length) as runner:
        for name, stream in source.streams.items():
            meta["streams"][name] = info = passes.encode_stream(runner, stream, directory, name, dtype)
            if info["blank"]:
                meta["notes"].append(f"{stream.label}: skipped {info['blank']} blank line(s)")
            if not info["sentences"]:
                raise UserError(f"{stream.label}: the corpus is empty (no non-blank lines)")
    for name, fractions in source.holdouts.items():
        parts = passes.holdout(source, name, meta["streams"][name]["sentences"])
        for split, (stream, part) in source.layout.items():
            if stream == name:
                parts[part].tofile(directory / f"{split}.rows")
        meta["notes"].append(passes.holdout_note(source, name, [len(p) for p in parts], fractions))
    sentences = sum(info["sentences"] for info in meta["streams"].values())
    seconds = time.perf_counter() - started
    log.info("encoded %d sentences in %.1f s (%.0f sentences/s, %d worker(s)) into %s", sentences, seconds,
             sentences / max(seconds, 1e-9), runner.workers, directory.parent)  # fmt: skip
    (directory / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def run_tokenizer(config: DataConfig, source: Source, directory: Path, workers: int = 0) -> Tokenizer:
    """The run's tokenizer: reloaded from `directory`, else the cached one built on this corpus with these
    settings, else built on the training split (and cached); saved in `directory` either way."""
    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory)
    target = store_root() / f"tokenizer-{tokenizer_key(source, config)}"
    if (target / "tokenizer.json").is_file():
        log.info("tokenizer: the one built before on this corpus with these settings (%s)", target)
    else:
        publish(lambda temporary: passes.build_tokenizer(config, source, temporary, workers).save(temporary), target)
    tokenizer = load_tokenizer(target)
    tokenizer.save(directory)
    return load_tokenizer(directory)


def encoded_splits(config: DataConfig, tokenizer: Tokenizer, splits: Sequence[str], source: Source | None = None,
                   workers: int = 0) -> dict[str, TextSplit]:  # fmt: skip
    """`splits` of the corpus encoded by `tokenizer`: from the cache, built there first when missing."""
    source = source or resolve_source(config.corpus, config.holdout)
    unknown = [split for split in splits if split not in source.layout]
    if unknown:
        raise UserError(f"split {unknown[0]!r} not in corpus (have: {', '.join(source.layout)})")
    target = store_root() / encoded_key(source, tokenizer, config.max_length)
    if (target / "meta.json").is_file():
        log.info("encoded corpus: %s (cached)", target)
    else:
        publish(lambda temporary: build_entry(temporary, source, tokenizer, config.max_length, workers), target)
    return open_entry(target, tokenizer, splits)


def load_splits(config: DataConfig, tokenizer_dir: Path, splits: Sequence[str], workers: int = 0
                ) -> tuple[Tokenizer, dict[str, TextSplit]]:  # fmt: skip
    """The run's tokenizer (see `run_tokenizer`) and its encoded `splits` (see `encoded_splits`)."""
    source = resolve_source(config.corpus, config.holdout)
    tokenizer = run_tokenizer(config, source, tokenizer_dir, workers)
    return tokenizer, encoded_splits(config, tokenizer, splits, source, workers)
