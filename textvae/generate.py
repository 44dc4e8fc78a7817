"""Decoding (greedy, beam, sampling with temperature / top-k / top-p), interpolation and the user-facing API.

A decoder plugs in with two methods, so that generation never re-runs a prefix:

    step(token [N], z [N, D] | None, state) -> (logits [N, V], state)   # state None at the start
    reorder_state(state, index [M]) -> state                               # rows picked by index
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Decoding:
    strategy: str = "greedy"  # greedy | beam | sample
    max_length: int = 60  # generated tokens, <eos> included
    beam_size: int = 5
    length_penalty: float = 1.0  # beam: score / length**length_penalty (0: raw log-probability)
    temperature: float = 1.0  # sample
    top_k: int = 0  # sample: keep the k most likely tokens (and any tied with the k-th); 0 keeps all
    top_p: float = 1.0  # sample: keep the smallest set with probability >= top_p (nucleus; ties kept, filter_logits)

    def __post_init__(self):
        if self.strategy not in ("greedy", "beam", "sample"):
            raise ValueError(f"decoding strategy must be greedy, beam or sample, not {self.strategy!r}")
        if self.max_length < 1 or self.beam_size < 1 or self.top_k < 0:
            raise ValueError("max_length and beam_size must be at least 1, top_k not negative")
        if not 0.0 < self.top_p <= 1.0 or self.temperature <= 0.0:
            raise ValueError("top_p must be in (0, 1] and temperature positive")


def _never(logits: Tensor, banned: list[int]) -> Tensor:
    """Tokens a sentence can never contain (<pad>, <bos>) get -inf."""
    logits[:, banned] = -math.inf
    return logits


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Keep the top-k tokens and the nucleus of mass top_p; the rest get -inf. [N, V] -> [N, V].

    Ties at the edge are all kept, so that the result never depends on the order of the vocabulary: top-k
    keeps every token whose logit is at least the k-th largest (top_k = 1 on [1, 1, 0] keeps two tokens);
    top-p takes the smallest most-likely-first prefix whose mass reaches top_p, then every token tied with the
    last one taken (top_p = 0.5 on probabilities [0.3, 0.3, 0.4] keeps all three). With both, top-k goes first.
    """
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits = torch.sort(logits, dim=-1, descending=True).values
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(-1) - probs
        taken = (mass_before < top_p).sum(-1, keepdim=True)  # at least 1: the first token's mass_before is 0
        last = sorted_logits.gather(-1, taken - 1)  # [N, 1], the logit of the last token taken
        logits = logits.masked_fill(logits < last, -math.inf)
    return logits


def _cut(rows: list[list[int]], eos_id: int) -> list[list[int]]:
    return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]


def _greedy_or_sample(decoder, z, rows, bos_id, eos_id, banned, options: Decoding, generator) -> list[list[int]]:
    device = z.device if z is not None else next(decoder.parameters()).device
    token = torch.full((rows,), bos_id, dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    state, out = None, []
    for _ in range(options.max_length):
        logits, state = decoder.step(token, z, state)
        logits = _never(logits.float(), banned)
        if options.strategy == "sample":
            logits = filter_logits(logits / options.temperature, options.top_k, options.top_p)
            token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
        else:
            token = logits.argmax(-1)
        token = token.masked_fill(done, eos_id)
        out.append(token)
        done |= token == eos_id
        if bool(done.all()):
            break
    return _cut(torch.stack(out, 1).tolist(), eos_id)


def _beam(decoder, z, rows, bos_id, eos_id, banned, options: Decoding) -> list[list[int]]:
    """Beam search over `rows` independent inputs at once; the LSTM state is reordered, never recomputed."""
    beams = options.beam_size
    device = z.device if z is not None else next(decoder.parameters()).device
    flat_z = z.repeat_interleave(beams, 0) if z is not None else None  # [N*B, D]
    scores = torch.full((rows, beams), -math.inf, device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step does not pick duplicates
    token = torch.full((rows * beams,), bos_id, dtype=torch.long, device=device)
    finished = torch.zeros(rows, beams, dtype=torch.bool, device=device)
    lengths = torch.zeros(rows, beams, device=device)
    history = torch.zeros(rows, beams, 0, dtype=torch.long, device=device)
    state = None
    for _ in range(options.max_length):
        logits, state = decoder.step(token, flat_z, state)
        logp = torch.log_softmax(_never(logits.float(), banned), -1).view(rows, beams, -1)
        vocab = logp.shape[-1]
        # A finished hypothesis may only continue with <eos> at no cost, so its score stays put.
        stay = torch.full((vocab,), -math.inf, device=device)
        stay[eos_id] = 0.0
        logp = torch.where(finished.unsqueeze(-1), stay, logp)
        top, index = (scores.unsqueeze(-1) + logp).view(rows, -1).topk(beams, dim=-1)
        origin, token_2d = index // vocab, index % vocab
        scores = top
        finished, lengths = finished.gather(1, origin), lengths.gather(1, origin)
        lengths = lengths + (~finished).float()
        finished = finished | (token_2d == eos_id)
        history = torch.cat([history.gather(1, origin.unsqueeze(-1).expand_as(history)), token_2d.unsqueeze(-1)], -1)
        flat_origin = (origin + torch.arange(rows, device=device).unsqueeze(1) * beams).view(-1)
        state = decoder.reorder_state(state, flat_origin)
        token = token_2d.view(-1)
        if bool(finished.all()):
            break
    normalized = scores / lengths.clamp(min=1).pow(options.length_penalty)
    best = normalized.argmax(-1)
    chosen = history[torch.arange(rows, device=device), best]
    return _cut(chosen.tolist(), eos_id)


@torch.no_grad()
def decode(
    decoder,
    z: Tensor | None,
    bos_id: int,
    eos_id: int,
    options: Decoding = Decoding(),
    num: int | None = None,
    banned: list[int] | None = None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Decode one sequence per row of z ([N, D]; or `num` rows without a latent code) -> ids without <eos>."""
    rows = z.shape[0] if z is not None else num
    limit = getattr(decoder, "max_steps", None)  # a decoder with a table of positions decodes at most that many
    if limit is not None and options.max_length > limit:
        raise ValueError(f"max_length {options.max_length} is more than the {limit} positions of this model "
                         "(model.max_positions)")  # fmt: skip
    banned = banned if banned is not None else [0, bos_id]
    if options.strategy == "beam":
        return _beam(decoder, z, rows, bos_id, eos_id, banned, options)
    return _greedy_or_sample(decoder, z, rows, bos_id, eos_id, banned, options, generator)


def lerp(a: Tensor, b: Tensor, weights: Tensor) -> Tensor:
    """Linear interpolation. a, b: [D], weights: [K] -> [K, D]."""
    return a.unsqueeze(0) + weights.unsqueeze(1) * (b - a).unsqueeze(0)


def slerp(a: Tensor, b: Tensor, weights: Tensor) -> Tensor:
    """Spherical interpolation (Shoemake 1985; White 2016 for latent spaces). a, b: [D], weights: [K] -> [K, D].

    Moves along the great circle between the directions of a and b while the norm goes linearly from
    |a| to |b|; equal norms stay equal all the way. Falls back to lerp for (anti)parallel vectors.
    Computed in float64 and cast back: near antipodal ends, arccos of a cosine close to -1 loses most of
    its digits in fp32 and the path's norm sags (by up to 1.0 of 2.29 for ends 0.001 rad from antipodal).
    """
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b, weights = a.double(), b.double(), weights.double()
    norm_a, norm_b = a.norm(), b.norm()
    if norm_a < 1e-8 or norm_b < 1e-8:
        return lerp(a, b, weights).to(dtype)
    unit_a, unit_b = a / norm_a, b / norm_b
    omega = torch.arccos((unit_a @ unit_b).clamp(-1.0, 1.0))
    if float(torch.sin(omega)) < 1e-6:
        return lerp(a, b, weights).to(dtype)
    w = weights.unsqueeze(1)
    direction = (torch.sin((1 - w) * omega) * unit_a + torch.sin(w * omega) * unit_b) / torch.sin(omega)
    return (direction * ((1 - w) * norm_a + w * norm_b)).to(dtype)


def interpolation_path(a: Tensor, b: Tensor, steps: int, method: str = "lerp") -> Tensor:
    """K points from a to b, both ends included. -> [K, D]."""
    if steps < 2:
        raise ValueError("an interpolation needs at least 2 steps (both ends)")
    weights = torch.linspace(0.0, 1.0, steps, device=a.device, dtype=a.dtype)
    path = slerp(a, b, weights) if method == "slerp" else lerp(a, b, weights)
    path[0], path[-1] = a, b  # exactly the endpoints, whatever the rounding
    return path


def dedupe_consecutive(sentences: list[str]) -> list[str]:
    """Drop a sentence equal to the one before it."""
    return [s for i, s in enumerate(sentences) if i == 0 or s != sentences[i - 1]]
