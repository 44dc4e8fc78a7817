"""MNIST without torchvision: IDX files (gzip or raw), a validation holdout, binarization, quadrant masks.

Training images are binarized dynamically (a fresh Bernoulli draw of every pixel each epoch, Burda et
al. 2015), deterministic in (seed, epoch) so that a resumed run sees the same draws; validation and
test images are binarized once with a fixed seed, so reported numbers always use the same test set.
"""

from __future__ import annotations

import copy
import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from textvae.core.device import transfer
from textvae.core.paths import data_dir
from textvae.core.trainer import merge_short_tail
from textvae.errors import UserError

SIDE = 28
PIXELS = SIDE * SIDE
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FIXED_BINARIZATION_SEED = 0  # the seed of the one binarized validation / test set


def find_mnist(corpus: str) -> Path:
    """The directory holding the four IDX files: `corpus` is `mnist` (in the data directory) or a path."""
    directory = data_dir() / "mnist" if corpus == "mnist" else Path(corpus)
    if not all(_idx_path(directory, name) for pair in FILES.values() for name in pair):
        raise UserError(f"MNIST IDX files (train-images-idx3-ubyte[.gz] ...) not found in {directory}")
    return directory


def _idx_path(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> Tensor:
    """An IDX file (gzip-compressed or not) of unsigned bytes as a uint8 tensor of its shape."""
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise UserError(f"{path}: unreadable ({error})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path}: not an IDX file of unsigned bytes")
    dims = data[3]
    header = 4 + 4 * dims
    shape = struct.unpack(f">{dims}I", data[4:header])
    expected = 1
    for size in shape:
        expected *= size
    if len(data) - header != expected:
        raise UserError(f"{path}: truncated IDX file ({len(data) - header} of {expected} bytes)")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


@dataclass
class ImageBatch:
    """Binarized images, labels and (for the quadrant task) the mask of observed pixels."""

    x: Tensor  # [B, 784] in {0, 1}
    y: Tensor  # [B] digit labels
    observed: Tensor | None = None  # [B, 784] 1 where a pixel is given (quadrant task), else None

    @property
    def size(self) -> int:
        return self.x.shape[0]

    @property
    def num_tokens(self) -> int:
        """Images: the trainer's throughput counts images per second."""
        return self.x.shape[0]

    @property
    def footprint(self) -> int:
        """Decoder outputs per latent sample, in units comparable with a text batch's positions."""
        return self.x.shape[0] * 8

    def to(self, device: torch.device) -> ImageBatch:
        observed = transfer(self.observed, device) if self.observed is not None else None
        return ImageBatch(transfer(self.x, device), transfer(self.y, device), observed)


def quadrant_mask(given: int) -> Tensor:
    """[784] mask of the observed pixels when `given` quadrants (1, 2 or 3) are shown.

    Quadrants are numbered as reading order: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
    As in Pyro's CVAE example (examples/cvae/mnist.py, MaskImages): one given quadrant is the bottom-left one;
    two are the left half (top-left and bottom-left); three are all but the bottom-right one.
    """
    shown = {1: (2,), 2: (0, 2), 3: (0, 1, 2)}[given]
    mask = torch.zeros(SIDE, SIDE)
    half = SIDE // 2
    for q in shown:
        row, col = divmod(q, 2)
        mask[row * half : (row + 1) * half, col * half : (col + 1) * half] = 1.0
    return mask.reshape(PIXELS)


class ImageSplit:
    """One split of grey-level images in [0, 1], binarized fixed (`dynamic=False`) or afresh per epoch,
    or (`binarize=False`) kept as grey levels."""

    def __init__(
        self, images: Tensor, labels: Tensor, dynamic: bool, observed: Tensor | None = None, binarize: bool = True
    ):
        self.grey = images.reshape(-1, PIXELS).float() / 255.0
        self.labels = labels.long()
        self.dynamic = dynamic and binarize
        self.observed = observed  # [784] or None
        self._epoch: int | None = None
        self._binary = None if self.dynamic else self._binarize(FIXED_BINARIZATION_SEED) if binarize else self.grey

    def __len__(self) -> int:
        return self.grey.shape[0]

    def _binarize(self, seed: int) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.bernoulli(self.grey, generator=generator)

    def plan(self, epoch: int, batch_size: int, max_tokens: int = 0, seed: int = 0,
             min_sentences: int = 1) -> list[list[int]]:  # fmt: skip
        """Shuffled batches for `epoch` (a last one of fewer than `min_sentences` images, the processes sharing
        each batch, joins the one before it); a dynamic split also draws this epoch's binarization."""
        if self.dynamic and self._epoch != epoch:
            self._binary = self._binarize(1_000_003 * (seed + 1) + epoch)
            self._epoch = epoch
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
        starts = merge_short_tail(range(0, len(order), batch_size), len(order), min_sentences)
        return [order[start:stop] for start, stop in zip(starts, [*starts[1:], len(order)])]

    def _fix_binary(self) -> None:
        """A dynamic split asked for in order (or in part) before any epoch: one fixed draw."""
        if self._binary is None:
            self._binary = self._binarize(FIXED_BINARIZATION_SEED)

    def ordered(self, batch_size: int) -> list[list[int]]:
        self._fix_binary()
        return [list(range(i, min(i + batch_size, len(self)))) for i in range(0, len(self), batch_size)]

    def subset(self, indices: list[int]) -> ImageSplit:
        """The images at `indices` with their labels and fixed binarization (to evaluate part of a split)."""
        self._fix_binary()
        part = copy.copy(self)
        index = torch.tensor(indices, dtype=torch.long)
        part.grey, part.labels, part._binary = self.grey[index], self.labels[index], self._binary[index]
        part.dynamic = False
        return part

    def collate(self, indices: list[int]) -> ImageBatch:
        index = torch.tensor(indices, dtype=torch.long)
        observed = self.observed.expand(len(indices), -1) if self.observed is not None else None
        return ImageBatch(self._binary[index], self.labels[index], observed)


def load_mnist(
    corpus: str, holdout: float, observed: Tensor | None = None, binarize: bool = True
) -> dict[str, ImageSplit]:
    """train (dynamic binarization), valid (the last `holdout` share of the training images) and test;
    `binarize=False` keeps grey levels everywhere."""
    directory = find_mnist(corpus)
    raw = {
        split: (read_idx(_idx_path(directory, images)), read_idx(_idx_path(directory, labels)))
        for split, (images, labels) in FILES.items()
    }
    train_images, train_labels = raw["train"]
    if train_images.shape[0] != train_labels.shape[0] or train_images.shape[1:] != (SIDE, SIDE):
        raise UserError(f"{directory}: training images and labels do not match 60000 x 28 x 28")
    cut = len(train_images) - int(round(holdout * len(train_images)))
    if cut <= 0 or cut >= len(train_images):
        raise UserError(f"config key data.holdout: {holdout} leaves no training or no validation images")
    return {
        "train": ImageSplit(train_images[:cut], train_labels[:cut], True, observed, binarize),
        "valid": ImageSplit(train_images[cut:], train_labels[cut:], False, observed, binarize),
        "test": ImageSplit(*raw["test"], dynamic=False, observed=observed, binarize=binarize),
    }
