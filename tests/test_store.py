"""The encoded-corpus cache (issue 22): the same batches as encoding from scratch, reused by a second run, rebuilt
when the corpus or the tokenizer changes, never left half written; chunked reading and the worker processes
give what one process reading the corpus in order gives."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from textvae.config import DataConfig
from textvae.data import passes, sources, store
from textvae.data.batching import TextSplit
from textvae.data.corpus import clean, load_corpus, read_lines
from textvae.data.encoding import encoded_words
from textvae.data.tokenizer import build_tokenizer
from textvae.errors import UserError

from conftest import make_sentences


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of the test's own, so that hits and misses are this test's."""
    root = tmp_path / "cache"
    monkeypatch.setenv("TEXTVAE_CACHE_DIR", str(root))
    return root / "encoded"


def entries(root):
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("tokenizer-")) if root.is_dir() else []


def assert_encodes_one_by_one(split: TextSplit, sentences: list[str], max_length: int):
    """The batches hold what the tokenizer's `encode` gives sentence by sentence (issue 22's "from scratch")."""
    tok = split.tokenizer
    for indices in split.ordered(16):
        batch = split.collate(indices)
        ids = [tok.encode(sentences[i])[:max_length] for i in indices]
        rows = [[tok.bos_id, *row, tok.eos_id] + [tok.pad_id] * (batch.tokens.shape[1] - len(row) - 2) for row in ids]
        assert batch.tokens.tolist() == rows
        words = [encoded_words(sentences[i], tok, max_length) for i in indices]
        assert batch.num_words == sum(words) + len(indices)


def assert_same_split(cached: TextSplit, fresh: TextSplit):
    assert len(cached) == len(fresh) and cached.truncated == fresh.truncated
    assert np.array_equal(cached.lengths, fresh.lengths) and np.array_equal(cached.word_counts, fresh.word_counts)
    plan = cached.plan(1, 8, max_tokens=60, seed=3)
    assert plan == fresh.plan(1, 8, max_tokens=60, seed=3)
    for indices in list(plan) + list(cached.ordered(16)):
        a, b = cached.collate(indices), fresh.collate(indices)
        assert a.tokens.equal(b.tokens) and a.lengths.equal(b.lengths)
        assert (a.num_tokens, a.num_words) == (b.num_tokens, b.num_words)


@pytest.mark.parametrize(
    "data",
    [
        DataConfig(max_length=6),  # truncation: some sentences are cut
        DataConfig(split="punct", lowercase=True, max_length=8),
        DataConfig(tokenizer="sentencepiece", vocab_size=30, max_length=9),
    ],
)
def test_batches_from_the_cache_equal_batches_built_from_scratch(corpus_dir, tmp_path, cache, data):
    (corpus_dir / "valid.txt").write_text("Hello, World! it's  raw\n\n" + "cat w1, w2 (dog)\n" * 3, encoding="utf-8")
    config = DataConfig(**{**data.__dict__, "corpus": str(corpus_dir)})
    tokenizer, splits = store.load_splits(config, tmp_path / "run" / "tokenizer", ("train", "valid", "test"))
    corpus = load_corpus(str(corpus_dir))
    if data.tokenizer == "word":  # the vocabulary counted chunk by chunk is the one counted in memory
        assert tokenizer.words == build_tokenizer(config, corpus.splits["train"], tmp_path / "tok").words
    for name, split in splits.items():
        assert_same_split(split, TextSplit(corpus.splits[name], tokenizer, config.max_length))
        assert_encodes_one_by_one(split, corpus.splits[name], config.max_length)
    assert splits["train"].truncated > 0


def test_a_single_file_is_held_out_as_load_corpus_does(tmp_path, cache):
    path = tmp_path / "all.txt"
    path.write_text("\n".join(make_sentences(300, seed=5)) + "\n", encoding="utf-8")
    config = DataConfig(corpus=str(path), holdout=0.1)
    tokenizer, splits = store.load_splits(config, tmp_path / "run", ("train", "valid", "test"))
    corpus = load_corpus(str(path), holdout=0.1)
    assert tokenizer.words == build_tokenizer(config, corpus.splits["train"], tmp_path / "tok").words
    for name, split in splits.items():
        assert_same_split(split, TextSplit(corpus.splits[name], tokenizer, config.max_length))


def test_a_second_run_reuses_the_cache_and_the_tokenizer(corpus_dir, tmp_path, cache, monkeypatch):
    config = DataConfig(corpus=str(corpus_dir))
    store.load_splits(config, tmp_path / "first", ("train",))
    assert len(entries(cache)) == 1

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(store, "build_entry", fail)
    monkeypatch.setattr(passes, "build_tokenizer", fail)
    tokenizer, splits = store.load_splits(config, tmp_path / "first", ("train", "valid"))  # resumed
    _, again = store.load_splits(config, tmp_path / "second", ("train",))  # a new run on the same corpus
    assert (tmp_path / "second" / "tokenizer.json").is_file()
    assert_same_split(again["train"], splits["train"])
    assert isinstance(splits["train"].tokens, np.memmap)


def test_the_cache_is_rebuilt_when_the_corpus_or_the_tokenizer_changes(corpus_dir, tmp_path, cache):
    config = DataConfig(corpus=str(corpus_dir))
    tokenizer, splits = store.load_splits(config, tmp_path / "run", ("train",))
    train = corpus_dir / "train.txt"
    text = train.read_text(encoding="utf-8")
    stat = train.stat()
    train.write_text(text.replace("cat", "cot", 1), encoding="utf-8")  # same size
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and same date: the checksum tells
    changed = store.encoded_splits(config, tokenizer, ("train",))["train"]
    assert len(entries(cache)) == 2
    assert_same_split(changed, TextSplit(text.replace("cat", "cot", 1).splitlines(), tokenizer, config.max_length))
    smaller = DataConfig(corpus=str(corpus_dir), vocab_size=20)  # another tokenizer, the same corpus
    _, other = store.load_splits(smaller, tmp_path / "other", ("train",))
    assert len(entries(cache)) == 3 and other["train"].tokens.max() < 20
    shorter = DataConfig(corpus=str(corpus_dir), max_length=3)
    assert store.encoded_splits(shorter, tokenizer, ("train",))["train"].lengths.max() == 5
    assert len(entries(cache)) == 4


def tokenizer_of(config, directory):
    return store.run_tokenizer(config, sources.resolve_source(config.corpus, config.holdout), directory)


def test_a_build_that_fails_midway_leaves_nothing_and_is_redone(corpus_dir, tmp_path, cache, monkeypatch):
    config = DataConfig(corpus=str(corpus_dir))
    tokenizer = tokenizer_of(config, tmp_path / "run")
    encode = passes.encode_stream

    def crash_on_valid(runner, stream, directory, name, dtype):
        if name == "valid":  # train's files are written by now
            assert (directory / "train.tokens").stat().st_size > 0
            raise KeyboardInterrupt
        return encode(runner, stream, directory, name, dtype)

    monkeypatch.setattr(passes, "encode_stream", crash_on_valid)
    with pytest.raises(KeyboardInterrupt):
        store.encoded_splits(config, tokenizer, ("train",))
    assert list(cache.iterdir()) == [p for p in cache.iterdir() if p.name.startswith("tokenizer-")]
    monkeypatch.setattr(passes, "encode_stream", encode)
    splits = store.encoded_splits(config, tokenizer, ("train", "valid"))
    assert_same_split(splits["valid"], TextSplit(load_corpus(str(corpus_dir)).splits["valid"], tokenizer, 100))


def test_a_killed_build_s_leftovers_are_removed(corpus_dir, tmp_path, cache):
    config = DataConfig(corpus=str(corpus_dir))
    tokenizer = tokenizer_of(config, tmp_path / "run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    key = store.encoded_key(sources.resolve_source(str(corpus_dir), 0.05), tokenizer, 100)
    leftover = cache / f".tmp-{key}-{int(dead.stdout)}-abcd1234"  # as SIGKILL midway leaves it: no meta.json
    leftover.mkdir(parents=True)
    (leftover / "train.tokens").write_bytes(b"\x01\x00" * 10)
    splits = store.encoded_splits(config, tokenizer, ("train",))
    assert not leftover.exists() and entries(cache) == [key] and len(splits["train"]) == 240
    assert json.loads((cache / key / "meta.json").read_text())["streams"]["train"]["sentences"] == 240


def test_worker_processes_give_what_one_process_gives(corpus_dir, tmp_path, cache):
    (corpus_dir / "train.txt").write_text("\n".join(make_sentences(2000, seed=9)) + "\n", encoding="utf-8")
    source = sources.resolve_source(str(corpus_dir), 0.05, chunk_bytes=2000)  # a dozen chunks of train
    assert len(source.streams["train"].chunks) > 10
    config = DataConfig(corpus=str(corpus_dir), vocab_size=30)  # ties in the counts decide the last words
    one = passes.build_tokenizer(config, source, tmp_path / "a", workers=1)
    two = passes.build_tokenizer(config, source, tmp_path / "b", workers=2)
    assert one.words == two.words
    for name, workers in (("one", 1), ("two", 2)):
        (tmp_path / name).mkdir()
        store.build_entry(tmp_path / name, source, one, 12, workers=workers)
    for name in ("tokens", "offsets", "words", "truncated"):
        assert (tmp_path / "one" / f"train.{name}").read_bytes() == (tmp_path / "two" / f"train.{name}").read_bytes()


def test_chunks_split_lines_as_the_datasets_text_loader(tmp_path):
    path = tmp_path / "odd.txt"
    text = "\ufeffone two\r\nthree\rfour\x00five\n\n  \nsix\x0cseven\u00a0eight\r\n\u2028nine\x85ten\n" * 40 + "last"
    path.write_bytes(text.encode("utf-8"))
    chunks = sources.file_chunks(path, chunk_bytes=7)
    assert len(chunks) > 50 and chunks[0].start == 0 and chunks[-1].stop == len(text.encode("utf-8"))
    read = [chunk.read({}) for chunk in chunks]
    assert ([line for lines, _ in read for line in lines], sum(b for _, b in read)) == clean(read_lines(path))


def test_bad_utf8_in_a_chunk_names_its_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\n" * 100 + b"bad \xff byte\n" + b"fine\n" * 10)
    with pytest.raises(UserError, match=r"line 101 is not valid UTF-8 \(byte 504\)"):
        for chunk in sources.file_chunks(path, chunk_bytes=64):
            chunk.read({})


def test_an_empty_split_is_a_user_error(corpus_dir, tmp_path, cache):
    (corpus_dir / "valid.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(UserError, match="valid.txt: the corpus is empty"):
        store.load_splits(DataConfig(corpus=str(corpus_dir)), tmp_path / "run", ("train",))


def test_an_hf_corpus_from_a_local_dataset_directory(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    root = tmp_path / "my_dataset"
    root.mkdir()
    rows = {"train": make_sentences(200, 1), "validation": make_sentences(20, 2), "test": make_sentences(20, 3)}
    for split, sentences in rows.items():
        lines = [json.dumps({"label": i % 2, "sentence": s, "topic": s[:3]}) for i, s in enumerate(sentences)]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = DataConfig(corpus=f"hf:{root}::sentence")
    tokenizer, splits = store.load_splits(config, tmp_path / "run", ("train", "valid", "test"))
    for name, key in (("train", "train"), ("valid", "validation"), ("test", "test")):
        assert_same_split(splits[name], TextSplit(rows[key], tokenizer, 100))
    assert len(entries(cache)) == 1
    store.load_splits(config, tmp_path / "run", ("train",))  # the same dataset: the same entry
    assert len(entries(cache)) == 1
    with open(root / "train.jsonl", "a", encoding="utf-8") as handle:  # new data: datasets' fingerprint changes
        handle.write(json.dumps({"label": 0, "sentence": "cat w1 cat", "topic": "cat"}) + "\n")
    assert len(store.load_splits(config, tmp_path / "run", ("train",))[1]["train"]) == 201
    assert len(entries(cache)) == 2
    with pytest.raises(UserError, match="name the text column.*label, sentence, topic"):
        store.load_splits(DataConfig(corpus=f"hf:{root}"), tmp_path / "other", ("train",))
    with pytest.raises(UserError, match="could not load hf:"):
        store.load_splits(DataConfig(corpus=f"hf:{tmp_path / 'missing'}"), tmp_path / "x", ("train",))
