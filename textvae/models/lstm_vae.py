"""Bowman et al. 2016 LSTM sentence VAE: LSTM encoder -> diagonal Gaussian q(z|x) -> LSTM decoder (GRUs with
model.rnn gru: see lstm_lm.py)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from textvae.config import ModelConfig
from textvae.core.dropout import Dropout
from textvae.core.latent import LatentModel
from textvae.core.posterior import PosteriorHead
from textvae.models.lstm_lm import (
    CELLS,
    LSTMDecoder,
    Shape,
    output_flops_per_token,
    rnn_flops_per_token,
    rnn_gemm_shapes,
    run_recurrent,
    uniform_init_,
)


def pool(outputs: Tensor, counts: Tensor, how: str) -> Tensor:
    """The mean or max over time of outputs [B, T, H] at each row's first counts[b] positions. -> [B, H]."""
    valid = (torch.arange(outputs.shape[1], device=outputs.device) < counts.unsqueeze(1)).unsqueeze(-1)  # [B, T, 1]
    if how == "mean":
        return (outputs * valid).sum(1) / counts.unsqueeze(1).to(outputs.dtype)
    return outputs.masked_fill(~valid, float("-inf")).amax(1)


class LSTMVAE(LatentModel):
    def __init__(self, vocab_size: int, config: ModelConfig, pad_id: int, unk_id: int, special_ids: list[int]):
        super().__init__()
        self.latent_dim = config.latent_dim
        directions = 2 if config.bidirectional else 1
        self.embedding = nn.Embedding(vocab_size, config.embedding_dim, padding_idx=pad_id)
        self.embedding_dropout = Dropout(config.embedding_dropout if config.encoder_dropout else 0.0)
        self.encoder = CELLS[config.rnn][0](
            config.embedding_dim,
            config.hidden_size,
            config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
        )
        self.pooling = config.encoder_pooling
        self.to_posterior = PosteriorHead(directions * config.hidden_size, config.latent_dim, config.bn_gamma)
        self.decoder = LSTMDecoder(vocab_size, config, config.latent_dim, pad_id, unk_id, special_ids)
        if config.init == "uniform":  # the decoder initialized itself
            uniform_init_([self.embedding, self.encoder, self.to_posterior])

    def encode(self, batch) -> tuple[Tensor, Tensor]:
        """q(z|x) from the encoder's summary of the sentence (model.encoder_pooling: its final top-layer
        state(s), or the mean or max of its outputs over the sentence). -> mu, logvar: [B, D] each."""
        words = batch.tokens[:, 1:]  # w_1 .. w_n <eos>: the encoder does not need <bos>
        embedded = self.embedding_dropout(self.embedding(words))
        counts = batch.lengths - 1  # w_1 .. w_n <eos> of each sentence
        if self.encoder.bidirectional:  # the backward direction must start at each sentence's own end
            packed = nn.utils.rnn.pack_padded_sequence(embedded, counts, batch_first=True, enforce_sorted=False)
            packed_outputs, state = self.encoder(packed)  # an LSTM's (h_n, c_n), a GRU's h_n: [layers * 2, B, H]
            if self.pooling == "last":
                h_n = state[0] if isinstance(state, tuple) else state
                return self.to_posterior(torch.cat([h_n[-2], h_n[-1]], dim=-1))
            outputs, _ = nn.utils.rnn.pad_packed_sequence(packed_outputs, batch_first=True,
                                                          total_length=words.shape[1])  # fmt: skip
        else:
            # Unpacked, so that oneDNN's fused LSTM runs (a packed sequence takes a per-step path, 3x slower at
            # 1024 units); the outputs up to a sentence's <eos> do not depend on the padding after it.
            outputs, _ = run_recurrent(self.encoder, embedded)  # [B, T, H]
            if self.pooling == "last":
                last = (counts - 1).to(outputs.device)  # position of <eos> among w_1 .. w_n <eos>
                return self.to_posterior(outputs[torch.arange(outputs.shape[0], device=outputs.device), last])
        return self.to_posterior(pool(outputs, counts.to(outputs.device), self.pooling))

    def log_likelihood(self, batch, z: Tensor) -> Tensor:
        """log p(x|z) per sentence and sample. z: [B, K, D] -> [B, K]."""
        return self.decoder.log_likelihood(batch.tokens, z)

    @staticmethod
    def flops(config: ModelConfig, vocab: int, tokens: float, sentences: float, samples: int = 1) -> float:
        """Forward matmul FLOPs over `tokens` predicted tokens in `sentences` sentences, the decoder run for
        `samples` draws of z each: encoder once, posterior, z -> initial state and decoder per draw."""
        hidden, latent, layers = config.hidden_size, config.latent_dim, config.num_layers
        directions = 2 if config.bidirectional else 1
        encoder = directions * rnn_flops_per_token(config.embedding_dim, hidden, layers, config.rnn) * tokens
        recurrence = rnn_flops_per_token(config.embedding_dim + latent, hidden, layers, config.rnn)
        decoder = (recurrence + output_flops_per_token(config, vocab)) * tokens
        posterior = 2 * directions * hidden * 2 * latent * sentences
        latent_maps = 2 * latent * (layers + config.latent_skip) * hidden * sentences  # initial state (and skip)
        return encoder + posterior + samples * (decoder + latent_maps)

    @staticmethod
    def gemm_shapes(config: ModelConfig, vocab: int, sentences: float, tokens: float) -> list[tuple[Shape, float]]:
        return rnn_gemm_shapes(config, vocab, sentences, tokens, latent=config.latent_dim, stacks=2)
