"""Clustering metrics (accuracy under the best one-to-one matching, NMI) and image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import normalized_mutual_info_score
from torch import Tensor

from image_baselines.data import SIDE


def cluster_accuracy(labels: Tensor, clusters: Tensor) -> float:
    """Share of examples whose cluster maps to their label under the best one-to-one mapping
    (Hungarian matching on the contingency table, scipy's linear_sum_assignment)."""
    labels, clusters = labels.long().cpu().numpy(), clusters.long().cpu().numpy()
    if labels.size == 0:
        return 0.0
    size = int(max(labels.max(), clusters.max())) + 1
    table = np.zeros((size, size), dtype=np.int64)
    np.add.at(table, (clusters, labels), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / labels.size)


def nmi(labels: Tensor, clusters: Tensor) -> float:
    return float(normalized_mutual_info_score(labels.cpu().numpy(), clusters.cpu().numpy()))


def image_grid(images: Tensor, rows: int) -> Tensor:
    """[N, 784] in [0, 1] -> a [3, rows*29+1, cols*29+1] grid with 1-pixel grey borders, for TensorBoard."""
    images = images.detach().float().cpu().clamp(0, 1).reshape(-1, SIDE, SIDE)
    cols = -(-images.shape[0] // rows)
    grid = torch.full((rows * (SIDE + 1) + 1, cols * (SIDE + 1) + 1), 0.5)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        top, left = 1 + r * (SIDE + 1), 1 + c * (SIDE + 1)
        grid[top : top + SIDE, left : left + SIDE] = image
    return grid.unsqueeze(0).expand(3, -1, -1).contiguous()


def save_png(grid: Tensor, path: Path, scale: int = 2) -> None:
    """Write a [3, H, W] grid in [0, 1] as a PNG, enlarged `scale` times (nearest neighbour)."""
    from PIL import Image

    pixels = (grid[0].numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(pixels, mode="L")
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    image.save(tmp)
    tmp.replace(path)
