"""Tokenizers: a word vocabulary built on the training split, or a sentencepiece model trained on it.

Both reserve ids 0-3 for <pad> <unk> <bos> <eos> and save everything they need under RUN_DIR/tokenizer/.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from abc import ABC, abstractmethod
from collections import Counter
from itertools import chain, repeat
from pathlib import Path

import numpy as np

from textvae.config import DataConfig
from textvae.errors import UserError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_SENTINEL = "\x00"  # marks a sentence end in a joined batch: clean() removes it from text, so no word holds it

log = logging.getLogger(__name__)

# "punct" pre-tokenization for raw text: keep <tags>, words with inner ' or -, numbers; split off punctuation.
_PUNCT_TOKEN = re.compile(r"<[^<>\s]+>|\w+(?:['\-.]\w+)*|[^\w\s]")
_SPACE_BEFORE = re.compile(r" ([.,!?;:%)\]}]|'s\b|n't\b)")
_SPACE_AFTER = re.compile(r"([(\[{$]) ")


class Tokenizer(ABC):
    """Common interface: text <-> ids, without <bos>/<eos> (the batching adds them)."""

    kind = ""
    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """See the subclasses."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """See the subclasses."""

    @abstractmethod
    def __len__(self) -> int:
        """See the subclasses."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A hash of everything that decides the ids: keys the encoded-corpus cache (textvae/data/store.py)."""

    def encode_lines(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The ids of many texts at once, as `encode` gives them. -> ids [sum n_i] (int64, flat), counts [N]."""
        encoded = [self.encode(text) for text in texts]
        counts = np.fromiter(map(len, encoded), np.int64, len(encoded))
        return np.fromiter(chain.from_iterable(encoded), np.int64, int(counts.sum())), counts

    @abstractmethod
    def save(self, directory: Path) -> None:
        """See the subclasses."""

    @property
    def special_ids(self) -> list[int]:
        return [self.pad_id, self.unk_id, self.bos_id, self.eos_id]


class WordTokenizer(Tokenizer):
    kind = "word"

    def __init__(self, words: list[str], split: str = "whitespace", lowercase: bool = False):
        if list(words[:4]) != list(SPECIALS):
            raise UserError("word vocabulary must start with <pad> <unk> <bos> <eos>")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.split, self.lowercase = split, lowercase

    @classmethod
    def build(cls, sentences: list[str], config: DataConfig) -> WordTokenizer:
        """Keep the `vocab_size - 4` most frequent types seen at least `min_count` times (ties: first seen)."""
        return cls.from_counts(cls.count_words(sentences, config), config)

    @classmethod
    def count_words(cls, sentences: list[str], config: DataConfig) -> Counter:
        """How often each word occurs, in order of first appearance (a corpus counts chunk after chunk)."""
        probe = cls(list(SPECIALS), config.split, config.lowercase)
        if probe.split == "whitespace":  # one split of the joined text: the same words, in order, much faster
            return Counter(probe.words_of("\n".join(sentences)))
        return Counter(chain.from_iterable(map(probe.words_of, sentences)))

    @classmethod
    def from_counts(cls, counts: Counter, config: DataConfig) -> WordTokenizer:
        """The vocabulary of `build` from word counts."""
        counts = Counter(counts)
        for special in SPECIALS:
            counts.pop(special, None)
        kept = [w for w, c in counts.most_common() if c >= config.min_count][: max(0, config.vocab_size - 4)]
        return cls(list(SPECIALS) + kept, config.split, config.lowercase)

    def words_of(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        return text.split() if self.split == "whitespace" else _PUNCT_TOKEN.findall(text)

    def encode(self, text: str) -> list[int]:
        """Word ids; a literal <pad>, <bos> or <eos> in the text is an unknown word, never a control token
        (a literal <unk>, as PTB writes rare words, is the unknown word)."""
        ids = [self.index.get(w, UNK_ID) for w in self.words_of(text)]
        return [UNK_ID if i in (PAD_ID, BOS_ID, EOS_ID) else i for i in ids]

    def encode_lines(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`encode` of many texts; for whitespace words, one split and one dict lookup per word for all of them.

        The texts are joined with a sentinel word between them (a sentence end); its id, -1, marks the ends.
        """
        joined = f" {_SENTINEL} ".join(texts)
        if self.split != "whitespace" or not texts or joined.count(_SENTINEL) != len(texts) - 1:
            return super().encode_lines(texts)  # a text that holds the sentinel itself: one at a time
        index = self.index | {_SENTINEL: -1}
        words = self.words_of(joined)
        ids = np.fromiter(map(index.get, words, repeat(UNK_ID)), np.int64, len(words))
        ends = np.flatnonzero(ids == -1)
        counts = np.diff(np.concatenate([[-1], ends, [len(ids)]])) - 1
        ids = ids[ids != -1]
        ids[(ids == PAD_ID) | (ids == BOS_ID) | (ids == EOS_ID)] = UNK_ID  # literal control tokens: see encode
        return ids, counts

    def decode(self, ids: list[int]) -> str:
        text = " ".join(self.words[i] for i in ids if i not in (PAD_ID, BOS_ID, EOS_ID))
        if self.split == "punct":
            text = _SPACE_AFTER.sub(r"\1", _SPACE_BEFORE.sub(r"\1", text))
        return text

    def __len__(self) -> int:
        return len(self.words)

    def fingerprint(self) -> str:
        meta = {"kind": self.kind, "split": self.split, "lowercase": self.lowercase, "words": self.words}
        return hashlib.sha256(json.dumps(meta).encode("utf-8")).hexdigest()

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocab.txt").write_text("\n".join(self.words) + "\n", encoding="utf-8")
        meta = {"kind": self.kind, "split": self.split, "lowercase": self.lowercase, "size": len(self)}
        (directory / "tokenizer.json").write_text(json.dumps(meta), encoding="utf-8")


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, model_file: Path, lowercase: bool = False):
        import sentencepiece

        self.model_file = Path(model_file)
        self.processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self.lowercase = lowercase

    @classmethod
    def build(cls, sentences: list[str], config: DataConfig, directory: Path) -> SentencePieceTokenizer:
        """Train a unigram or BPE model on the training sentences; write it to directory/spm.model.

        At most data.tokenizer_sample sentences, spread evenly over the split: sentencepiece's own bound
        (input_sentence_size) would draw them at random, unseeded, and need them all in memory first."""
        import sentencepiece

        directory.mkdir(parents=True, exist_ok=True)
        limit = config.tokenizer_sample
        if limit and len(sentences) > limit:
            log.info("sentencepiece: trained on %d of %d training sentences, spread evenly (data.tokenizer_sample)",
                     limit, len(sentences))  # fmt: skip
            sentences = [sentences[i * len(sentences) // limit] for i in range(limit)]
        texts = [s.lower() for s in sentences] if config.lowercase else sentences
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_prefix=str(directory / "spm"),
                vocab_size=config.vocab_size,
                model_type=config.sentencepiece_type,
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                character_coverage=1.0,
                minloglevel=2,
            )
        except RuntimeError as error:
            raise UserError(f"sentencepiece training failed: {str(error).splitlines()[0]}") from None
        return cls(directory / "spm.model", config.lowercase)

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text.lower() if self.lowercase else text)

    def encode_lines(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`encode` of many texts in one call into sentencepiece's C++ (one thread: workers run in parallel)."""
        encoded = self.processor.encode([t.lower() for t in texts] if self.lowercase else texts, num_threads=1)
        counts = np.fromiter(map(len, encoded), np.int64, len(encoded))
        return np.fromiter(chain.from_iterable(encoded), np.int64, int(counts.sum())), counts

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.model_file.read_bytes())
        digest.update(json.dumps({"kind": self.kind, "lowercase": self.lowercase}).encode("utf-8"))
        return digest.hexdigest()

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode([i for i in ids if i not in (PAD_ID, BOS_ID, EOS_ID)])

    def __len__(self) -> int:
        return self.processor.get_piece_size()

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / "spm.model"
        if target.resolve() != self.model_file.resolve():
            target.write_bytes(self.model_file.read_bytes())
        meta = {"kind": self.kind, "lowercase": self.lowercase, "size": len(self)}
        (directory / "tokenizer.json").write_text(json.dumps(meta), encoding="utf-8")


def build_tokenizer(config: DataConfig, train_sentences: list[str], directory: Path) -> Tokenizer:
    """Build the tokenizer the config asks for from the training split and save it under `directory`."""
    if config.tokenizer == "sentencepiece":
        tokenizer = SentencePieceTokenizer.build(train_sentences, config, directory)
    else:
        tokenizer = WordTokenizer.build(train_sentences, config)
    tokenizer.save(directory)
    return tokenizer


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load a tokenizer saved by `build_tokenizer`."""
    meta_file = directory / "tokenizer.json"
    if not meta_file.is_file():
        raise UserError(f"no tokenizer in {directory} (tokenizer.json missing)")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if meta.get("kind") == "sentencepiece":
        return SentencePieceTokenizer(directory / "spm.model", meta.get("lowercase", False))
    words = (directory / "vocab.txt").read_text(encoding="utf-8").split("\n")[: meta["size"]]
    return WordTokenizer(words, meta.get("split", "whitespace"), meta.get("lowercase", False))
