"""Transformer sentence VAE and its LM baseline: pre-norm blocks, causal decoder with a key/value cache.

z reaches the decoder in the ways DELLA / Optimus compare (config `model.z_injection`):
"embedding" adds a projection of z to every input embedding; "memory" prepends z as one extra
position that every token attends to; "both" does both. For a Transformer, `embedding_dim` is the
model width and `hidden_size` the feed-forward width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textvae.config import ModelConfig
from textvae.core.latent import LatentModel
from textvae.core.posterior import PosteriorHead
from textvae.core.word_dropout import WordDropout
from textvae.models.sequence import BLOCK_ROWS, DecoderLM, repeat_for_samples, sequence_log_prob

Cache = list[tuple[Tensor, Tensor]]  # per layer: keys, values [N, heads, t, head_dim]
Shape = tuple[int, int, int]  # a GEMM [m, k] @ [k, n]

# GPT-2's initialization: weights and embeddings N(0, 0.02^2), biases 0, the projections that end a residual branch
# scaled by 1/sqrt(2 * layers). torch's defaults (N(0, 1) embeddings) with a tied output layer gave logits of
# standard deviation ~sqrt(width): 176 nats per token at initialization for 9.2 of a uniform guess, and a PTB
# Transformer LM stuck at perplexity 275 after 6,000 steps.
INIT_STD = 0.02


def init_weights(module: nn.Module, layers: int) -> None:
    """GPT-2's initialization of every Linear and Embedding under `module`; an embedding's padding row is zeroed, and
    drawn again where the output layer shares it and comes later (tie_embeddings: harmless, as no position reads
    <pad> and it is never a target)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Embedding)):
            std = INIT_STD / (2 * layers) ** 0.5 if getattr(layer, "ends_residual", False) else INIT_STD
            nn.init.normal_(layer.weight, std=std)
            if isinstance(layer, nn.Linear) and layer.bias is not None:
                nn.init.zeros_(layer.bias)
            if isinstance(layer, nn.Embedding) and layer.padding_idx is not None:
                with torch.no_grad():
                    layer.weight[layer.padding_idx].zero_()


def block_flops_per_token(config: ModelConfig, length: float) -> float:
    """Matmul FLOPs (2 per multiply-add) of one token through one block attending to `length` positions: qkv, the
    output projection, the MLP, QK^T and AV."""
    width, ff = config.embedding_dim, config.hidden_size
    return 2 * width * 3 * width + 2 * width * width + 2 * 2 * width * ff + 2 * 2 * length * width


def stack_gemm_shapes(config: ModelConfig, vocab: int, tokens: float, stacks: int) -> list[tuple[Shape, float]]:
    """The main GEMMs of a training step of `stacks` stacks of blocks (decoder, encoder), each with its forward
    FLOPs per token: qkv and the output projection, the MLP, the output layer (in BLOCK_ROWS-row blocks)."""
    width, rows, blocks = config.embedding_dim, max(1, round(tokens)), config.num_layers * stacks
    return [((rows, width, 3 * width), blocks * 2 * width * 4 * width),
            ((rows, width, config.hidden_size), blocks * 2 * 2 * width * config.hidden_size),
            ((min(rows, BLOCK_ROWS), width, vocab), 2 * width * vocab)]  # fmt: skip


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.out.ends_residual = True

    def forward(self, x: Tensor, mask: Tensor | None, past: tuple[Tensor, Tensor] | None = None):
        """x: [N, T, C]; mask: bool [N or 1, 1, T, S] (True = may attend) or None; past: cached k, v.

        Returns the output [N, T, C] and the keys and values of all S positions (past + new).
        """
        n, t, c = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # [N, heads, T, hd]
        return self.out(y.transpose(1, 2).reshape(n, t, c)), (k, v)


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int, ff_size: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, ff_size), nn.GELU(), nn.Linear(ff_size, width))
        self.mlp[2].ends_residual = True
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None, past=None):
        attended, present = self.attention(self.norm1(x), mask, past)
        x = x + self.dropout(attended)
        return x + self.dropout(self.mlp(self.norm2(x))), present


class TransformerDecoder(nn.Module):
    """p(x|z) with causal self-attention; `step` decodes with a key/value cache (O(1) new work per token)."""

    def __init__(self, vocab_size: int, config: ModelConfig, latent_dim: int, pad_id: int, unk_id: int, specials):
        super().__init__()
        width = config.embedding_dim
        self.pad_id, self.latent_dim, self.injection = pad_id, latent_dim, config.z_injection
        self.embedding = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.positions = nn.Embedding(config.max_positions, width)
        self.max_steps = config.max_positions  # tokens `step` can decode after <bos> (generate.decode checks)
        self.word_dropout = WordDropout(config.word_dropout, unk_id, specials)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.blocks = nn.ModuleList(
            Block(width, config.num_heads, config.hidden_size, config.output_dropout) for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, vocab_size)
        if config.tie_embeddings:
            self.output.weight = self.embedding.weight
        uses = {"embedding", "memory"} if config.z_injection == "both" else {config.z_injection}
        self.z_to_embedding = nn.Linear(latent_dim, width) if latent_dim and "embedding" in uses else None
        self.z_to_memory = nn.Linear(latent_dim, width) if latent_dim and "memory" in uses else None
        self.layers = config.num_layers
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2's initialization (also after a decoder reset, which first restores torch's defaults)."""
        init_weights(self, self.layers)

    def _embed(self, inputs: Tensor, z: Tensor | None, start: int) -> Tensor:
        positions = torch.arange(start, start + inputs.shape[1], device=inputs.device)
        x = self.embedding(self.word_dropout(inputs)) + self.positions(positions)
        if self.z_to_embedding is not None:
            x = x + self.z_to_embedding(z).unsqueeze(1)
        return self.embedding_dropout(x)

    def _run(self, x: Tensor, mask: Tensor | None, cache: Cache | None) -> tuple[Tensor, Cache]:
        present = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, mask, cache[i] if cache else None)
            present.append(kv)
        return self.norm(x), present

    def _memory(self, z: Tensor) -> Tensor:
        return self.z_to_memory(z).unsqueeze(1)  # [N, 1, C]: one extra position before <bos>

    def hidden(self, inputs: Tensor, z: Tensor | None) -> Tensor:
        """Teacher-forced hidden states. inputs: [N, T], z: [N, D] or None -> [N, T, C]."""
        x = self._embed(inputs, z, 0)
        prefix = 0
        if self.z_to_memory is not None:
            x = torch.cat([self._memory(z), x], 1)
            prefix = 1
        size = x.shape[1]
        causal = torch.ones(size, size, dtype=torch.bool, device=x.device).tril()
        # padding sits after <eos> and only ever follows real tokens, so a causal mask alone keeps every
        # real position from seeing padding; padded outputs are dropped before the softmax.
        hidden, _ = self._run(x, causal.view(1, 1, size, size), None)
        return hidden[:, prefix:]

    def log_likelihood(self, tokens: Tensor, z: Tensor | None) -> Tensor:
        """log p(x|z) summed over tokens (<eos> included). tokens: [B, T], z: [B, K, D] or None -> [B, K]."""
        tokens, flat_z, samples = repeat_for_samples(tokens, z)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        hidden = self.hidden(inputs, flat_z)
        return sequence_log_prob(hidden, targets, self.output, self.pad_id).view(-1, samples)

    def step(self, token: Tensor, z: Tensor | None, state: dict | None) -> tuple[Tensor, dict]:
        """One decoding step with the key/value cache. token: [N] -> logits [N, V] and the new state."""
        if state is None:
            state = {"cache": None, "length": 0}
            if self.z_to_memory is not None:  # the z position enters the cache once
                _, state["cache"] = self._run(self._memory(z), None, None)
        x = self._embed(token.unsqueeze(1), z, state["length"])
        hidden, cache = self._run(x, None, state["cache"])  # one new query may attend to every cached key
        return self.output(hidden[:, -1]).float(), {"cache": cache, "length": state["length"] + 1}

    @staticmethod
    def reorder_state(state: dict, index: Tensor) -> dict:
        """Pick rows of the cache, for beam search. index: [M]."""
        cache = [(k.index_select(0, index), v.index_select(0, index)) for k, v in state["cache"]]
        return {"cache": cache, "length": state["length"]}


class TransformerVAE(LatentModel):
    """Transformer encoder, mean-pooled over real tokens, -> q(z|x) -> causal Transformer decoder.

    Mean pooling rather than a summary token: every position contributes to the posterior, with no
    extra position that the encoder has to learn to fill (as in DELLA's and Optimus's ablations, where
    both work similarly), and it is independent of padding by construction.
    """

    def __init__(self, vocab_size: int, config: ModelConfig, pad_id: int, unk_id: int, special_ids: list[int]):
        super().__init__()
        width = config.embedding_dim
        self.latent_dim, self.pad_id = config.latent_dim, pad_id
        self.embedding = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.positions = nn.Embedding(config.max_positions, width)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.blocks = nn.ModuleList(
            Block(width, config.num_heads, config.hidden_size, config.output_dropout) for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(width)
        init_weights(self, config.num_layers)  # the encoder's layers; the posterior head keeps its own
        self.to_posterior = PosteriorHead(width, config.latent_dim, config.bn_gamma)
        self.decoder = TransformerDecoder(vocab_size, config, config.latent_dim, pad_id, unk_id, special_ids)

    def encode(self, batch) -> tuple[Tensor, Tensor]:
        """q(z|x) from the mean of the top layer over real tokens. -> mu, logvar: [B, D] each."""
        words = batch.tokens[:, 1:]  # w_1 .. w_n <eos>
        real = words != self.pad_id  # [B, T]
        positions = torch.arange(words.shape[1], device=words.device)
        x = self.embedding_dropout(self.embedding(words) + self.positions(positions))
        mask = (real[:, None, None, :]).expand(-1, 1, words.shape[1], -1)  # keys: real tokens only
        for block in self.blocks:
            x, _ = block(x, mask)
        x = self.norm(x)
        pooled = (x * real.unsqueeze(-1)).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
        return self.to_posterior(pooled)

    def log_likelihood(self, batch, z: Tensor) -> Tensor:
        """log p(x|z) per sentence and sample. z: [B, K, D] -> [B, K]."""
        return self.decoder.log_likelihood(batch.tokens, z)

    @staticmethod
    def flops(config: ModelConfig, vocab: int, tokens: float, sentences: float, samples: int = 1) -> float:
        """Forward matmul FLOPs over `tokens` predicted tokens in `sentences` sentences, the decoder run for
        `samples` draws of z each (the encoder once)."""
        stack = config.num_layers * block_flops_per_token(config, tokens / max(1, sentences)) * tokens
        return stack + samples * (stack + 2 * config.embedding_dim * vocab * tokens)

    @staticmethod
    def gemm_shapes(config: ModelConfig, vocab: int, sentences: float, tokens: float) -> list[tuple[Shape, float]]:
        return stack_gemm_shapes(config, vocab, tokens, stacks=2)


class TransformerLM(DecoderLM):
    """The Transformer VAE's decoder without z: the baseline of the same size. Exact log-likelihood."""

    decoder_class = TransformerDecoder

    @staticmethod
    def flops(config: ModelConfig, vocab: int, tokens: float, sentences: float, samples: int = 1) -> float:
        """Forward matmul FLOPs over `tokens` predicted tokens in `sentences` sentences (`samples` is for the VAE)."""
        per_token = config.num_layers * block_flops_per_token(config, tokens / max(1, sentences))
        return (per_token + 2 * config.embedding_dim * vocab) * tokens

    @staticmethod
    def gemm_shapes(config: ModelConfig, vocab: int, sentences: float, tokens: float) -> list[tuple[Shape, float]]:
        return stack_gemm_shapes(config, vocab, tokens, stacks=1)
