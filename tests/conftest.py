import random
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test uses its own textvae cache (downloads, datasets arrow files), never the user's."""
    monkeypatch.setenv("TEXTVAE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def make_sentences(count: int, seed: int = 0) -> list[str]:
    """Short sentences with some structure (a topic word repeated) so a tiny model has something to learn."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)]
    topics = ["cat", "dog", "sun", "sea"]
    lines = []
    for _ in range(count):
        topic = rng.choice(topics)
        body = rng.choices(words, k=rng.randint(1, 10))
        lines.append(" ".join([topic, *body, topic]))
    return lines


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    """A corpus directory with train/valid/test.txt."""
    root = tmp_path / "corpus"
    root.mkdir()
    for split, count, seed in (("train", 240, 0), ("valid", 40, 1), ("test", 40, 2)):
        (root / f"{split}.txt").write_text("\n".join(make_sentences(count, seed)) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def tiny_config_path() -> Path:
    return CONFIGS / "text" / "tiny.yaml"
