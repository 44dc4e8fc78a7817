"""Decoding from z with a model's cached step function (the LSTM keeps its state between steps)."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def decode(
    decoder, z: Tensor | None, bos_id: int, eos_id: int, max_length: int = 50, method: str = "greedy",
    temperature: float = 1.0, num: int | None = None,
) -> list[list[int]]:  # fmt: skip
    """Decode one sequence per row of z ([N, D]; or `num` rows without a latent code) -> token ids, <eos> cut.

    `decoder.step(token [N], z, state) -> (logits [N, V], state)` advances one token.
    method: "greedy" (argmax) or "sample" (softmax with `temperature`).
    """
    rows = z.shape[0] if z is not None else num
    device = z.device if z is not None else next(decoder.parameters()).device
    token = torch.full((rows,), bos_id, dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    state, out = None, []
    for _ in range(max_length):
        logits, state = decoder.step(token, z, state)
        if method == "sample":
            token = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1)[:, 0]
        else:
            token = logits.argmax(-1)
        token = token.masked_fill(done, eos_id)
        out.append(token)
        done |= token == eos_id
        if bool(done.all()):
            break
    ids = torch.stack(out, 1).tolist() if out else [[] for _ in range(rows)]
    return [row[: row.index(eos_id)] if eos_id in row else row for row in ids]
