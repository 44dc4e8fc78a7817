import gzip
import random
import struct
from pathlib import Path

import pytest
import torch

from textvae import config as config_lib

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test uses its own textvae cache (downloads, datasets arrow files), never the user's."""
    monkeypatch.setenv("TEXTVAE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def shortest_and_longest(split) -> tuple[list[int], list[int]]:
    """Index lists of a split's shortest sentence alone, and of it batched with the longest (so padded)."""
    short = min(range(len(split)), key=split.lengths.__getitem__)
    longest = max(range(len(split)), key=split.lengths.__getitem__)
    return [short], [short, longest]


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


IMAGE_CONFIGS = CONFIGS / "image"


def write_idx(path: Path, array: torch.Tensor, compress: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    data = header + array.to(torch.uint8).numpy().tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def synthetic_digits(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic 'digits': each class lights its own band of rows, plus noise; structure a tiny model can learn."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=g)
    images = (torch.rand(count, 28, 28, generator=g) * 60).round()
    for i, label in enumerate(labels.tolist()):
        images[i, 2 * label + 4 : 2 * label + 7, 4:24] = 255
    return images.to(torch.uint8), labels.to(torch.uint8)


@pytest.fixture
def mnist_dir(tmp_path) -> Path:
    root = tmp_path / "mnist"
    root.mkdir()
    for prefix, count, seed in (("train", 400, 0), ("t10k", 100, 1)):
        images, labels = synthetic_digits(count, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, compress=prefix == "t10k")  # .gz or raw
    return root


def image_config(name: str, mnist_dir: Path, *overrides: str) -> config_lib.Config:
    small = ["train.batch_size=50", "train.eval_batch_size=50", "train.eval_iw_samples=4", "train.log_every=5",
             "train.device=cpu", f"data.corpus={mnist_dir}", "data.holdout=0.1"]  # fmt: skip
    return config_lib.load(IMAGE_CONFIGS / name, [*small, *overrides])
