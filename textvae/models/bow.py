"""The bag-of-words loss of Zhao et al. (2017): z alone must predict the sentence's words, order ignored.

An MLP maps z to one distribution over the vocabulary; the loss is -sum over the sentence's words of
their log-probability. It reaches the encoder through z and never touches the decoder, so it pushes
information into the latent code without making the decoder weaker.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BagOfWords(nn.Module):
    def __init__(self, latent_dim: int, hidden_size: int, vocab_size: int, ignore_ids: list[int]):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden_size), nn.Tanh(), nn.Linear(hidden_size, vocab_size))
        ignored = torch.zeros(vocab_size, dtype=torch.bool)
        ignored[ignore_ids] = True
        self.register_buffer("ignored", ignored, persistent=False)

    def forward(self, tokens: Tensor, z: Tensor) -> Tensor:
        """log p(bag of words | z), summed over the words. tokens: [B, T] (specials and padding are
        skipped), z: [B, D] -> [B]."""
        log_probs = torch.log_softmax(self.net(z).float(), -1)  # [B, V]
        words = ~self.ignored[tokens]  # [B, T]
        return (log_probs.gather(1, tokens) * words).sum(1)
