"""scripts/make_long_documents.py: consecutive sentences joined into lines of about N tokens."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from make_long_documents import join_sentences  # noqa: E402

from conftest import make_sentences  # noqa: E402


def test_sentences_join_in_order_into_lines_of_about_the_target_length():
    sentences = make_sentences(500)
    lines = join_sentences(sentences, 40)
    assert " ".join(lines).split() == " ".join(sentences).split()  # every sentence once, in order, none split
    sizes = [len(line.split()) for line in lines]
    longest = max(len(s.split()) for s in sentences)  # 12 here
    assert all(abs(size - 40) <= longest // 2 + 1 for size in sizes[:-1])  # the closest a whole sentence allows
    assert abs(sum(sizes) / len(sizes) - 40) < 3
    assert join_sentences(["a b c"] * 3, 1) == ["a b c"] * 3  # a sentence longer than the target stands alone


def test_script_writes_three_splits(corpus_dir, tmp_path):
    out = tmp_path / "long"
    command = [sys.executable, str(ROOT / "scripts/make_long_documents.py"), str(out), "--corpus", str(corpus_dir),
               "--tokens", "30"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == ["train", "valid", "test"]
    for split in ("train", "valid", "test"):
        lines = (out / f"{split}.txt").read_text(encoding="utf-8").splitlines()
        source = (corpus_dir / f"{split}.txt").read_text(encoding="utf-8").split()
        assert " ".join(lines).split() == source and len(lines) > 1
