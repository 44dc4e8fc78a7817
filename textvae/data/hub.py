"""`data.corpus: hf:NAME[:CONFIG][:COLUMN]`: a corpus loaded with `datasets.load_dataset` (the Hugging Face hub
when online, or a local dataset directory), cached under $TEXTVAE_CACHE_DIR/datasets.

NAME is a hub name (`ag_news`) or a directory of data files (train.jsonl, validation.csv, ...). CONFIG is the
dataset's configuration (empty for none: `hf:NAME::COLUMN`); COLUMN the text column, by default `text` or the
only string column. Splits named validation, valid or dev are the valid split; valid or test missing are held
out of train as for a single file.
"""

from __future__ import annotations

import logging
from typing import Any

from textvae.data.corpus import cache_dir
from textvae.data.sources import CHUNK_ROWS, RowChunk, Source, Stream, layout_for
from textvae.errors import UserError

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "validation": "valid", "valid": "valid", "dev": "valid", "test": "test"}


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """hf:NAME[:CONFIG][:COLUMN] -> (NAME, CONFIG or None, COLUMN or None)."""
    parts = spec[len("hf:") :].split(":")
    if not parts[0] or len(parts) > 3:
        raise UserError(f"data.corpus {spec!r}: expected hf:NAME[:CONFIG][:COLUMN]")
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1] or None, parts[2] or None


def text_column(dataset: Any, column: str | None, spec: str) -> str:
    """The column to read: `column`, else `text`, else the only string column."""
    strings = [name for name, feature in dataset.features.items() if getattr(feature, "dtype", "") in ("string",
               "large_string")]  # fmt: skip
    if column is None:
        column = "text" if "text" in strings else strings[0] if len(strings) == 1 else None
    if column is None or column not in dataset.column_names:
        have = ", ".join(dataset.column_names)
        raise UserError(f"data.corpus {spec!r}: name the text column (hf:NAME:CONFIG:COLUMN); columns: {have}")
    return column


def load_splits(name: str, config: str | None, spec: str) -> dict[str, Any]:
    """`datasets.load_dataset` of every split, renamed train/valid/test; a one-line UserError when it fails."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        loaded = datasets.load_dataset(name, config, cache_dir=str(cache_dir() / "datasets"))
    except Exception as error:  # offline, unknown name, bad files: the library's many exception types
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"could not load {spec}: {first}") from None
    splits = {SPLIT_NAMES[key]: part for key, part in loaded.items() if key in SPLIT_NAMES}
    if "train" not in splits:
        raise UserError(f"{spec}: no train split (has: {', '.join(loaded)})")
    return splits


def hub_source(spec: str, holdout: float) -> Source:
    """The source of an hf: corpus. Its streams are identified by `datasets`' own fingerprint of each split,
    which follows the data files (their revision on the hub, their content or date on disk)."""
    name, config, column = parse_spec(spec)
    splits = load_splits(name, config, spec)
    streams, readers = {}, {}
    for split, dataset in splits.items():
        chosen = text_column(dataset, column, spec)
        dataset = dataset.select_columns([chosen])
        rows = len(dataset)
        chunks = [RowChunk(split, start, min(start + CHUNK_ROWS, rows)) for start in range(0, rows, CHUNK_ROWS)]
        identity = {"dataset": name, "config": config, "column": chosen, "rows": rows,
                    "fingerprint": dataset._fingerprint}  # fmt: skip
        streams[split] = Stream(f"{spec} ({split})", chunks, identity)
        readers[split] = (dataset, chosen)
    layout, holdouts = layout_for(set(streams), holdout)
    log.info("%s: %s", spec, ", ".join(f"{split} {len(part)} rows" for split, part in splits.items()))
    return Source(name.rstrip("/").rsplit("/", 1)[-1], streams, layout, holdouts, readers)
