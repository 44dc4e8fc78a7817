"""What every sequence decoder shares: K samples of z per sentence, and log p(x|z) on real tokens only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def repeat_for_samples(tokens: Tensor, z: Tensor | None) -> tuple[Tensor, Tensor | None, int]:
    """tokens [B, T], z [B, K, D] -> tokens [B*K, T] (sentence-major, like z), z [B*K, D], K."""
    if z is None:
        return tokens, None, 1
    samples = z.shape[1]
    if samples > 1:
        tokens = tokens.repeat_interleave(samples, dim=0)
    return tokens, z.reshape(-1, z.shape[-1]), samples


def sequence_log_prob(hidden: Tensor, targets: Tensor, output: nn.Module, pad_id: int) -> Tensor:
    """Sum over real positions of log p(target). hidden: [N, T, H], targets: [N, T] -> [N].

    Only real positions reach the output projection: padding rows never touch the vocabulary-wide softmax.
    """
    mask = targets != pad_id
    logits = output(hidden[mask])  # [M, V]
    token_nll = F.cross_entropy(logits.float(), targets[mask], reduction="none")
    nll = torch.zeros(mask.shape, dtype=token_nll.dtype, device=targets.device)
    nll[mask] = token_nll
    return -nll.sum(1)
