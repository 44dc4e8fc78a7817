"""A corpus as streams of chunks, each read on its own: byte ranges of a text file or row ranges of a `datasets`
split. A pass over a corpus of millions of sentences (count, vocabulary, encode: textvae/data/store.py) then
holds one chunk at a time and can run in worker processes.

Text files are read directly, not through the `datasets` text loader, which would first copy the whole corpus
into Arrow files; `clean_text` splits lines as that loader does, so the sentences are the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textvae.data import corpus as corpus_lib
from textvae.data.corpus import clean, clean_text
from textvae.errors import UserError

CHUNK_BYTES = 1 << 20  # a chunk's text: its words, as Python objects, take ten times that (larger: more page faults)
CHUNK_ROWS = 50_000  # a chunk of a `datasets` split
HASH_BLOCK = 8 << 20


@dataclass(frozen=True)
class Chunk:
    """Items [start, stop) of one source: byte offsets on line boundaries of a text file (FileChunk), or rows of
    a `datasets` split that the workers find in `datasets` by stream name (RowChunk)."""

    source: str  # the file's path, or the stream's name
    start: int
    stop: int


class FileChunk(Chunk):
    def read(self, datasets: Mapping[str, Any]) -> tuple[list[str], int]:
        """The chunk's cleaned non-blank lines and how many blank ones were skipped."""
        with open(self.source, "rb") as handle:
            handle.seek(self.start)
            raw = handle.read(self.stop - self.start)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            offset = self.start + error.start
            line = _line_at(self.source, offset)
            raise UserError(f"{self.source}: line {line} is not valid UTF-8 (byte {offset})") from None
        return clean_text(text)


class RowChunk(Chunk):
    def read(self, datasets: Mapping[str, Any]) -> tuple[list[str], int]:
        dataset, column = datasets[self.source]
        texts = dataset[self.start : self.stop][column]
        return clean(["" if text is None else str(text) for text in texts])


@dataclass
class Stream:
    """One file or `datasets` split, in chunks, with what identifies its content (for the cache key)."""

    label: str  # for messages: a path, or hf:NAME/split
    chunks: list[Any]
    identity: dict[str, Any]


@dataclass
class Source:
    """A corpus before reading: its streams and how the train/valid/test splits come from them.

    `layout` maps a split to (stream, part): part None is the whole stream; part k is the k-th part of the
    stream's seeded holdout, whose fractions (of the parts after the first) are in `holdouts`."""

    name: str
    streams: dict[str, Stream]
    layout: dict[str, tuple[str, int | None]]
    holdouts: dict[str, tuple[float, ...]] = field(default_factory=dict)
    datasets: dict[str, Any] = field(default_factory=dict)  # hf: stream -> (datasets.Dataset, column)

    def identity(self) -> dict[str, Any]:
        """What the encoded splits depend on, besides the tokenizer and data.max_length."""
        streams = {name: stream.identity for name, stream in self.streams.items()}
        holdouts = {name: list(fractions) for name, fractions in self.holdouts.items()}
        return {"streams": streams, "layout": self.layout, "holdouts": holdouts, "seed": corpus_lib.HOLDOUT_SEED}


def _line_at(path: str, offset: int) -> int:
    """The 1-based line of byte `offset` (an error message's; reads the file up to there)."""
    with open(path, "rb") as handle:
        return handle.read(offset).count(b"\n") + 1


def sha256_of(path: Path) -> str:
    """The file's SHA-256, read in large blocks (about 0.7 GB/s here: 1.5 s for 10M PTB-like sentences)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _next_line_start(handle, position: int) -> int:
    """The offset just past the first line end ("\\n", "\\r\\n" or "\\r") at or after `position`."""
    handle.seek(position)
    while block := handle.read(1 << 16):
        ends = [i for i in (block.find(b"\n"), block.find(b"\r")) if i >= 0]
        if ends:
            end = position + min(ends)
            handle.seek(end)
            pair = handle.read(2)
            return end + (2 if pair == b"\r\n" else 1)
        position += len(block)
    return position


def file_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> list[FileChunk]:
    """A text file cut into chunks of about `chunk_bytes`, each ending at a line end."""
    size = path.stat().st_size
    bounds = [0]
    with open(path, "rb") as handle:
        while bounds[-1] + chunk_bytes < size:
            end = _next_line_start(handle, bounds[-1] + chunk_bytes)
            if end >= size:
                break
            bounds.append(end)
    bounds.append(size)
    return [FileChunk(str(path), start, stop) for start, stop in zip(bounds[:-1], bounds[1:]) if stop > start]


def file_stream(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Stream:
    """A text file as a stream, identified by its size and SHA-256 (not its name or date: a copy hits the cache)."""
    if not path.is_file():
        raise UserError(f"corpus file not found: {path}")
    identity = {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
    return Stream(str(path), file_chunks(path, chunk_bytes), identity)


def layout_for(names: set[str], holdout: float) -> tuple[dict[str, tuple[str, int | None]], dict[str, tuple]]:
    """Splits from the streams there are: valid and test missing from them are held out of train (or of "all")."""
    base = "all" if "all" in names else "train"
    missing = [split for split in ("valid", "test") if split not in names]
    layout: dict[str, tuple[str, int | None]] = {split: (split, None) for split in ("train", "valid", "test")}
    if not missing:
        return layout, {}
    layout["train"] = (base, 0)
    for part, split in enumerate(missing, 1):
        layout[split] = (base, part)
    return layout, {base: tuple(holdout for _ in missing)}


def resolve_source(spec: str, holdout: float, chunk_bytes: int = CHUNK_BYTES) -> Source:
    """The source of `data.corpus`: a known name, a directory, one file, or hf:NAME[:CONFIG][:COLUMN]."""
    if spec.startswith("hf:"):
        from textvae.data.hub import hub_source

        return hub_source(spec, holdout)
    name, files = corpus_lib.resolve(spec)
    streams = {split: file_stream(path, chunk_bytes) for split, path in files.items()}
    layout, holdouts = layout_for(set(streams), holdout)
    return Source(name, streams, layout, holdouts)
