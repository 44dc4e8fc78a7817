"""Token-level word dropout (Bowman et al. 2016): decoder inputs replaced by <unk>, in training mode only."""

import torch
from torch import Tensor, nn


def word_dropout(tokens: Tensor, rate: float, unk_id: int, keep_ids: Tensor) -> Tensor:
    """Replace each token not in `keep_ids` by `unk_id` with probability `rate`. tokens: [B, T] -> [B, T]."""
    if rate <= 0.0:
        return tokens
    drop = torch.rand(tokens.shape, device=tokens.device) < rate
    drop &= ~torch.isin(tokens, keep_ids.to(tokens.device))
    return tokens.masked_fill(drop, unk_id)


class WordDropout(nn.Module):
    """Word dropout as a module, so that `model.train()` / `model.eval()` switch it like nn.Dropout."""

    def __init__(self, rate: float, unk_id: int, special_ids: list[int]):
        super().__init__()
        self.rate = rate
        self.unk_id = unk_id
        self.register_buffer("keep_ids", torch.tensor(sorted(set(special_ids)), dtype=torch.long), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        if not self.training:
            return tokens
        return word_dropout(tokens, self.rate, self.unk_id, self.keep_ids)
