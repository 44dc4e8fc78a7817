"""Property tests: arbitrary bytes and Unicode through corpus loading, tokenizers and batching."""

import unicodedata

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textvae.config import DataConfig
from textvae.data.batching import TextSplit
from textvae.data.corpus import load_corpus
from textvae.data.tokenizer import WordTokenizer, build_tokenizer
from textvae.errors import UserError

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r", "\n\n", " \n"])
# words from letters, digits and punctuation of any script; no whitespace or control characters inside
WORD = st.text(st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=8)
LINE = st.lists(WORD, min_size=0, max_size=12).map(" ".join)


def _load_or_clear_error(path):
    """Load a corpus; the only failure allowed is a UserError with a one-line message."""
    try:
        return load_corpus(str(path), holdout=0.2)
    except UserError as error:
        assert "\n" not in str(error)
        return None


@SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes_load_or_fail_clearly(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "corpus.txt"
    path.write_bytes(data)
    corpus = _load_or_clear_error(path)
    if corpus is not None:
        tokenizer = WordTokenizer.build(corpus.splits["train"], DataConfig(split="punct"))
        split = TextSplit(corpus.splits["train"], tokenizer, 20)
        assert sorted(i for b in split.plan(0, 4) for i in b) == list(range(len(split)))


@SETTINGS
@given(lines=st.lists(LINE, min_size=0, max_size=30), ends=st.lists(LINE_ENDS, min_size=1, max_size=30),
       bom=st.booleans())  # fmt: skip
def test_random_unicode_round_trips_through_the_word_vocabulary(tmp_path_factory, lines, ends, bom):
    text = "".join(line + ends[i % len(ends)] for i, line in enumerate(lines))
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    corpus = _load_or_clear_error(path)
    if corpus is None:
        return
    sentences = [s for split in corpus.splits.values() for s in split]
    tokenizer = WordTokenizer.build(sentences, DataConfig(vocab_size=100000))
    control = {"<pad>", "<bos>", "<eos>"}  # literal control-token names in text are unknown words
    for sentence in sentences:  # every word is covered, so encode -> decode gives the text back
        expected = " ".join("<unk>" if w in control else w for w in sentence.split())
        assert tokenizer.decode(tokenizer.encode(sentence)) == expected
    batch = TextSplit(sentences, tokenizer, 5).collate(list(range(len(sentences))))
    assert batch.tokens.shape[0] == len(sentences) and batch.tokens.shape[1] <= 7


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE.filter(str.strip), min_size=5, max_size=40))
def test_sentencepiece_round_trips_text_it_was_trained_on(tmp_path_factory, lines):
    directory = tmp_path_factory.mktemp("spm")
    try:
        tokenizer = build_tokenizer(DataConfig(tokenizer="sentencepiece", vocab_size=40), lines, directory)
    except UserError as error:  # e.g. more distinct characters than pieces: one clear line
        assert "sentencepiece" in str(error)
        return
    for line in lines:
        expected = " ".join(unicodedata.normalize("NFKC", line).split())
        assert " ".join(tokenizer.decode(tokenizer.encode(line)).split()) == expected
