import random
import sys

import pytest
import torch

from textvae.config import DataConfig
from textvae.data import corpus as corpus_lib
from textvae.data.batching import TextSplit, bucket
from textvae.data.corpus import clean, load_corpus
from textvae.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    SentencePieceTokenizer,
    WordTokenizer,
    build_tokenizer,
    load_tokenizer,
)
from textvae.errors import UserError

from conftest import make_sentences


def test_directory_corpus_has_three_splits(corpus_dir):
    corpus = load_corpus(str(corpus_dir))
    assert {k: len(v) for k, v in corpus.splits.items()} == {"train": 240, "valid": 40, "test": 40}


def test_single_file_is_split_with_a_fixed_reported_holdout(tmp_path):
    path = tmp_path / "all.txt"
    path.write_text("\n".join(f"sentence {i}" for i in range(200)), encoding="utf-8")
    first, second = load_corpus(str(path), holdout=0.1), load_corpus(str(path), holdout=0.1)
    assert first.splits == second.splits
    sizes = {k: len(v) for k, v in first.splits.items()}
    assert sizes == {"train": 160, "valid": 20, "test": 20}
    assert set(first.splits["train"]).isdisjoint(first.splits["test"])
    assert any("seeded holdout" in note for note in first.notes)


def test_blank_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a b\n\n   \nc d\n\ne f\n", encoding="utf-8")
    corpus = load_corpus(str(path), holdout=0.2)
    assert corpus.skipped_blank["all"] == 3
    assert sum(len(v) for v in corpus.splits.values()) == 3


def test_bom_crlf_and_control_characters_are_cleaned():
    lines, blank = clean(["\ufeffhello world\r", "a\x00b\x07c", "\x0c"])
    assert lines == ["hello world", "a b c"]
    assert blank == 1


def test_crlf_file_reads_as_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbfone two\r\nthree\r\nfour five\r\n")
    lines, _ = clean(corpus_lib.read_lines(path))
    assert lines == ["one two", "three", "four five"]


@pytest.mark.parametrize(
    "content, message", [(b"fine\nalso fine\nbad \xff byte\n", "line 3 is not valid UTF-8"), (b"", "empty")]
)
def test_invalid_utf8_names_the_line_and_a_zero_byte_file_is_an_empty_corpus(tmp_path, content, message):
    path = tmp_path / "c.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_corpus(str(path))


def test_empty_and_missing_corpora_are_user_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        load_corpus(str(empty))
    with pytest.raises(UserError, match="not found"):
        load_corpus(str(tmp_path / "nope.txt"))
    (tmp_path / "dir").mkdir()
    with pytest.raises(UserError, match="lacks"):
        load_corpus(str(tmp_path / "dir"))


def test_word_vocabulary_limits_and_specials():
    sentences = ["a a a b b c", "a b d"]
    tok = WordTokenizer.build(sentences, DataConfig(vocab_size=6, min_count=1))
    assert tok.words == ["<pad>", "<unk>", "<bos>", "<eos>", "a", "b"]
    assert tok.encode("a c zzz") == [4, UNK_ID, UNK_ID]
    tok = WordTokenizer.build(sentences, DataConfig(vocab_size=100, min_count=2))
    assert tok.words[4:] == ["a", "b"]
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)


def test_punct_split_handles_raw_text_and_detokenizes_cleanly():
    config = DataConfig(split="punct", lowercase=True, min_count=1)
    tok = WordTokenizer.build(["Hello, world! It's a <unk> test (really)."], config)
    assert tok.words_of("Hello, world!") == ["hello", ",", "world", "!"]
    assert tok.words_of("a <unk> b") == ["a", "<unk>", "b"]
    assert tok.decode(tok.encode("Hello, world! It's a test (really).")) == "hello, world! it's a test (really)."


def test_word_tokenizer_saves_and_loads(tmp_path):
    tok = build_tokenizer(DataConfig(split="punct"), make_sentences(50), tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.words == tok.words and again.split == "punct"


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_sentencepiece_trains_on_train_split_and_round_trips(tmp_path, kind):
    sentences = make_sentences(300) + ["The quick brown fox jumps over the lazy dog."] * 5
    config = DataConfig(tokenizer="sentencepiece", sentencepiece_type=kind, vocab_size=46)
    tok = build_tokenizer(config, sentences, tmp_path / "tok")
    assert isinstance(tok, SentencePieceTokenizer) and len(tok) == 46
    again = load_tokenizer(tmp_path / "tok")
    ids = again.encode("cat w1 w2 cat")
    assert ids and again.decode(ids) == "cat w1 w2 cat"
    assert again.processor.pad_id() == PAD_ID and again.processor.eos_id() == EOS_ID


def test_sentencepiece_with_too_large_vocabulary_is_a_user_error(tmp_path):
    config = DataConfig(tokenizer="sentencepiece", vocab_size=5000)
    with pytest.raises(UserError, match="sentencepiece"):
        build_tokenizer(config, ["a b c", "d e f"], tmp_path / "tok")


def test_truncation_is_counted_and_bos_eos_added():
    tok = WordTokenizer.build(["a b c d e f"], DataConfig())
    split = TextSplit(["a b c d e f", "a b"], tok, max_length=3)
    assert split.truncated == 1
    assert split.sequences[0].tolist() == [BOS_ID, *tok.encode("a b c"), EOS_ID]
    batch = split.collate([0, 1])
    assert batch.tokens.shape == (2, 5)
    assert batch.tokens[1].tolist()[-1] == PAD_ID
    assert batch.num_tokens == 4 + 3  # predicted tokens: words + <eos>


def test_per_word_counts_of_a_truncated_sentence_are_the_words_encoded():
    # punct split: "a, b, c, d" is 4 whitespace words and 7 ids (a , b , c , d)
    tok = WordTokenizer.build(["a, b, c, d"], DataConfig(split="punct"))
    counts = [TextSplit(["a, b, c, d"], tok, limit).word_counts[0] for limit in (1, 2, 3, 4, 6, 7)]
    assert counts == [2, 2, 3, 3, 4, 5]  # words reached by the kept ids (a word cut in two counts) + <eos>
    split = TextSplit(["a, b, c, d", "a, b"], tok, max_length=3)  # "a , b" of the first: 2 words
    assert split.collate([0, 1]).num_words == (2 + 1) + (2 + 1)


def test_per_word_counts_with_sentencepiece_follow_the_truncation(tmp_path):
    sentences = make_sentences(300) + ["The quick brown fox jumps over the lazy dog."] * 5
    tok = build_tokenizer(DataConfig(tokenizer="sentencepiece", vocab_size=46), sentences, tmp_path / "tok")
    sentence = "The quick brown fox jumps over the lazy dog."
    pieces = [len(tok.encode(word)) for word in sentence.split()]  # several pieces a word at this vocabulary
    assert sum(pieces) == len(tok.encode(sentence)) and max(pieces) > 1
    for limit in range(1, sum(pieces) + 1):
        reached = sum(1 for j in range(len(pieces)) if sum(pieces[:j]) < limit)  # words whose first piece is kept
        assert TextSplit([sentence], tok, limit).word_counts == [reached + 1], limit


def test_bucketed_plan_covers_every_sentence_once_and_is_deterministic():
    tok = WordTokenizer.build(make_sentences(500), DataConfig())
    split = TextSplit(make_sentences(500, seed=3), tok, 50)
    plan = split.plan(epoch=2, batch_size=16, seed=7)
    assert sorted(i for batch in plan for i in batch) == list(range(500))
    assert plan == split.plan(epoch=2, batch_size=16, seed=7)
    assert plan != split.plan(epoch=3, batch_size=16, seed=7)
    padded = sum(len(b) * max(split.lengths[i] for i in b) for b in plan)
    assert sum(split.lengths) / padded > 0.9  # length bucketing keeps padding small


def test_token_budget_caps_padded_batch_size():
    lengths = [5, 5, 5, 10, 10, 10, 10]
    batches = bucket(list(range(7)), lengths, batch_size=100, max_tokens=20)
    assert all(len(b) * max(lengths[i] for i in b) <= 20 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert bucket([0], [50], batch_size=4, max_tokens=20) == [[0]]  # a single long sentence still passes


def test_a_plan_for_several_processes_keeps_every_sentence_the_longest_included():
    # 8 processes at a 500-token budget: a batch of sentences over ~60 tokens would hold fewer than 8, and the
    # trainer dropped such batches (the same longest sentences every epoch); each batch now holds 8 or more
    rng = random.Random(0)
    sentences = [" ".join(["w"] * rng.randint(5, 100)) for _ in range(2000)]
    split = TextSplit(sentences, WordTokenizer.build(["w"], DataConfig()), 100)
    for epoch in (0, 1):
        plan = split.plan(epoch, batch_size=64, max_tokens=500, seed=3, min_sentences=8)
        assert sorted(i for batch in plan for i in batch) == list(range(2000))
        assert min(len(batch) for batch in plan) >= 8 and max(len(batch) for batch in plan) < 64 + 8
        over = [batch for batch in plan if len(batch) * max(split.lengths[i] for i in batch) > 500]
        assert over and all(len(batch) < 16 for batch in over)  # over the budget only to give each process one
    alone = split.plan(0, batch_size=64, max_tokens=500, seed=3)
    assert min(len(batch) for batch in alone) < 8  # one process: the plan as before, long sentences alone
    assert alone == split.plan(0, batch_size=64, max_tokens=500, seed=3, min_sentences=1)
    tail = split.plan(0, batch_size=64, seed=3, min_sentences=24)  # 2000 = 31 * 64 + 16: the 16 join a batch
    assert len(tail) == 31 and sorted(len(batch) for batch in tail)[-1] == 80


def test_batch_moves_to_device():
    tok = WordTokenizer.build(["a b"], DataConfig())
    batch = TextSplit(["a b"], tok, 5).collate([0]).to(torch.device("cpu"))
    assert batch.size == 1


@pytest.mark.parametrize("head", [b"BZh", b"PK\x03\x04", b"\x04\x22\x4d\x18"])
def test_text_that_starts_like_an_archive_is_read_as_text(tmp_path, head):
    path = tmp_path / "c.txt"
    path.write_bytes(head + b" first line\r\nsecond\rthird\n")
    lines = corpus_lib.read_lines(path)
    assert lines == [head.decode() + " first line", "second", "third"]


def test_a_one_megabyte_line_is_read_and_truncated(tmp_path):
    path = tmp_path / "c.txt"
    long_line = " ".join(["word"] * 200_000)  # 1 MB
    path.write_text("short one\n" + long_line + "\nanother short\nand more\n", encoding="utf-8")
    corpus = load_corpus(str(path), holdout=0.25)
    sentences = [s for split in corpus.splits.values() for s in split]
    assert long_line in sentences
    tok = WordTokenizer.build(sentences, DataConfig())
    split = TextSplit(sentences, tok, max_length=50)
    assert split.truncated == 1 and max(split.lengths) == 52


def test_without_the_datasets_package_a_file_reads_as_the_loader_reads_it(tmp_path, monkeypatch):
    path = tmp_path / "c.txt"
    path.write_bytes(b"one two\r\nthree\rfour  \n\nfive \xc3\xa9\n")
    with_loader = corpus_lib.read_lines(path)
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    without = corpus_lib.read_lines(path)
    assert without == with_loader
    assert without == ["one two", "three", "four  ", "", "five é"]
