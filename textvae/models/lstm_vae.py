"""Bowman et al. 2016 LSTM sentence VAE: LSTM encoder -> diagonal Gaussian q(z|x) -> LSTM decoder (GRUs with
model.rnn gru: see lstm_lm.py)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from textvae.config import ModelConfig
from textvae.core.dropout import Dropout
from textvae.core.latent import LatentModel
from textvae.core.posterior import PosteriorHead
from textvae.models.lstm_lm import CELLS, LSTMDecoder, Shape, rnn_flops_per_token, rnn_gemm_shapes, run_recurrent


class LSTMVAE(LatentModel):
    def __init__(self, vocab_size: int, config: ModelConfig, pad_id: int, unk_id: int, special_ids: list[int]):
        super().__init__()
        self.latent_dim = config.latent_dim
        directions = 2 if config.bidirectional else 1
        self.embedding = nn.Embedding(vocab_size, config.embedding_dim, padding_idx=pad_id)
        self.embedding_dropout = Dropout(config.embedding_dropout)
        self.encoder = CELLS[config.rnn][0](
            config.embedding_dim,
            config.hidden_size,
            config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
        )
        self.to_posterior = PosteriorHead(directions * config.hidden_size, config.latent_dim, config.bn_gamma)
        self.decoder = LSTMDecoder(vocab_size, config, config.latent_dim, pad_id, unk_id, special_ids)

    def encode(self, batch) -> tuple[Tensor, Tensor]:
        """q(z|x) from the encoder's final top-layer state(s). -> mu, logvar: [B, D] each."""
        words = batch.tokens[:, 1:]  # w_1 .. w_n <eos>: the encoder does not need <bos>
        embedded = self.embedding_dropout(self.embedding(words))
        if self.encoder.bidirectional:  # the backward direction must start at each sentence's own end
            packed = nn.utils.rnn.pack_padded_sequence(embedded, batch.lengths - 1, batch_first=True,
                                                       enforce_sorted=False)  # fmt: skip
            _, state = self.encoder(packed)  # an LSTM's (h_n, c_n), a GRU's h_n: [layers * directions, B, H]
            h_n = state[0] if isinstance(state, tuple) else state
            summary = torch.cat([h_n[-2], h_n[-1]], dim=-1)
        else:
            # Unpacked, so that oneDNN's fused LSTM runs (a packed sequence takes a per-step path, 3x slower at
            # 1024 units); the state after a sentence's <eos> does not depend on the padding after it.
            outputs, _ = run_recurrent(self.encoder, embedded)  # [B, T, H]
            last = (batch.lengths - 2).to(outputs.device)  # position of <eos> among w_1 .. w_n <eos>
            summary = outputs[torch.arange(outputs.shape[0], device=outputs.device), last]
        return self.to_posterior(summary)

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
        decoder = (recurrence + 2 * hidden * vocab) * tokens
        posterior = 2 * directions * hidden * 2 * latent * sentences
        return encoder + posterior + samples * (decoder + 2 * latent * layers * hidden * sentences)

    @staticmethod
    def gemm_shapes(config: ModelConfig, vocab: int, sentences: float, tokens: float) -> list[tuple[Shape, float]]:
        return rnn_gemm_shapes(config, vocab, sentences, tokens, latent=config.latent_dim, stacks=2)
