"""The download path of a known corpus, against a local HTTP server (no network needed)."""

import functools
import hashlib
import http.server
import threading

import pytest

from textvae.data import corpus as corpus_lib
from textvae.errors import UserError


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "mirror"
    (root / "ptb").mkdir(parents=True)
    contents = {split: f"the {split} sentence\nanother {split} one\n" for split in ("train", "valid", "test")}
    for split, text in contents.items():
        (root / "ptb" / f"ptb.{split}.txt").write_text(text, encoding="utf-8")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", contents
    httpd.shutdown()


def _point_at(monkeypatch, tmp_path, url, checksums):
    monkeypatch.setenv("TEXTVAE_DATA_DIR", str(tmp_path / "empty-data-dir"))
    monkeypatch.setenv("TEXTVAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TEXTVAE_DATA_URL", url)
    monkeypatch.setattr(corpus_lib, "SHA256", checksums)


def test_known_corpus_downloads_with_checksum(server, tmp_path, monkeypatch):
    url, contents = server
    sums = {f"ptb/ptb.{s}.txt": hashlib.sha256(t.encode()).hexdigest() for s, t in contents.items()}
    _point_at(monkeypatch, tmp_path, url, sums)
    corpus = corpus_lib.load_corpus("ptb")
    assert corpus.splits["valid"] == ["the valid sentence", "another valid one"]
    cached = tmp_path / "cache" / "data" / "ptb" / "ptb.train.txt"
    assert cached.read_text(encoding="utf-8") == contents["train"]


def test_checksum_mismatch_is_refused_and_leaves_nothing(server, tmp_path, monkeypatch):
    url, contents = server
    _point_at(monkeypatch, tmp_path, url, {f"ptb/ptb.{s}.txt": "0" * 64 for s in contents})
    with pytest.raises(UserError, match="checksum mismatch"):
        corpus_lib.load_corpus("ptb")
    leftovers = list((tmp_path / "cache" / "data" / "ptb").iterdir())
    assert leftovers == []


def test_unreachable_mirror_is_a_user_error(tmp_path, monkeypatch):
    _point_at(monkeypatch, tmp_path, "http://127.0.0.1:9", {})
    with pytest.raises(UserError, match="could not download"):
        corpus_lib.load_corpus("ptb")
