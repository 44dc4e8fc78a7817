"""LSTM decoder (shared by the VAE) and the LSTM language-model baseline: the decoder without z."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from textvae.config import ModelConfig
from textvae.core.dropout import Dropout
from textvae.core.word_dropout import WordDropout
from textvae.models.sequence import repeat_for_samples, sequence_log_prob


def rnn_flops_per_token(inputs: int, hidden: int, layers: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of one token through `layers` LSTM layers, one direction: four gates,
    each reading the layer's input (the layer below's state above the first) and its own state."""
    return 2 * 4 * hidden * (inputs + hidden) + (layers - 1) * 2 * 4 * hidden * (2 * hidden)


Shape = tuple[int, int, int]  # a GEMM [m, k] @ [k, n]


def rnn_gemm_shapes(config: ModelConfig, vocab: int, sentences: float, tokens: float, latent: int,
                    stacks: int) -> list[tuple[Shape, float]]:  # fmt: skip
    """The main GEMMs of a training step of `stacks` recurrent stacks (decoder, encoder), each with its forward FLOPs
    per token: the recurrence, the input projection, the output layer (in 1,024-row blocks)."""
    hidden, inputs, rows = config.hidden_size, config.embedding_dim + latent, max(1, round(tokens))
    return [
        ((max(1, round(sentences)), hidden, 4 * hidden), stacks * 2 * hidden * 4 * hidden),
        ((rows, inputs, 4 * hidden), stacks * 2 * inputs * 4 * hidden),
        ((min(rows, 1024), hidden, vocab), 2 * hidden * vocab),
    ]


class LSTMDecoder(nn.Module):
    """p(x|z) = prod_t p(x_t | x_<t, z): z sets the initial state and joins every input embedding."""

    def __init__(self, vocab_size: int, config: ModelConfig, latent_dim: int, pad_id: int, unk_id: int, specials):
        super().__init__()
        self.pad_id, self.latent_dim = pad_id, latent_dim
        self.num_layers, self.hidden_size = config.num_layers, config.hidden_size
        self.embedding = nn.Embedding(vocab_size, config.embedding_dim, padding_idx=pad_id)
        self.word_dropout = WordDropout(config.word_dropout, unk_id, specials)
        self.embedding_dropout = Dropout(config.embedding_dropout)
        self.lstm = nn.LSTM(config.embedding_dim + latent_dim, config.hidden_size, config.num_layers, batch_first=True)
        self.output_dropout = Dropout(config.output_dropout)
        self.output = nn.Linear(config.hidden_size, vocab_size)
        # Bowman et al. 2016: z -> initial cell state of every layer; h0 = tanh(c0).
        self.latent_to_state = nn.Linear(latent_dim, config.num_layers * config.hidden_size) if latent_dim else None

    def initial_state(self, z: Tensor | None, batch: int, device: torch.device) -> tuple[Tensor, Tensor] | None:
        """z: [N, D] -> (h0, c0), each [layers, N, H]; None (zeros) without a latent code."""
        if z is None:
            return None
        c0 = self.latent_to_state(z).view(batch, self.num_layers, self.hidden_size).transpose(0, 1).contiguous()
        return torch.tanh(c0), c0

    def hidden(self, inputs: Tensor, z: Tensor | None, state=None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """inputs: [N, T] token ids, z: [N, D] or None -> hidden states [N, T, H] and the final state."""
        emb = self.embedding_dropout(self.embedding(self.word_dropout(inputs)))
        if z is not None:
            emb = torch.cat([emb, z.unsqueeze(1).expand(-1, inputs.shape[1], -1).to(emb.dtype)], dim=-1)
        if state is None:
            state = self.initial_state(z, inputs.shape[0], inputs.device)
        return self.lstm(emb, state)

    def log_likelihood(self, tokens: Tensor, z: Tensor | None) -> Tensor:
        """log p(x|z) summed over tokens (<eos> included). tokens: [B, T], z: [B, K, D] or None -> [B, K]."""
        tokens, flat_z, samples = repeat_for_samples(tokens, z)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        hidden, _ = self.hidden(inputs, flat_z)
        return sequence_log_prob(self.output_dropout(hidden), targets, self.output, self.pad_id).view(-1, samples)

    def step(self, token: Tensor, z: Tensor | None, state) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One decoding step, keeping the LSTM state. token: [N] -> logits [N, V] and the new state."""
        hidden, state = self.hidden(token.unsqueeze(1), z, state)
        return self.output(hidden[:, 0]).float(), state

    @staticmethod
    def reorder_state(state: tuple[Tensor, Tensor], index: Tensor) -> tuple[Tensor, Tensor]:
        """Pick rows of the (h, c) state, for beam search. index: [M] -> each [layers, M, H]."""
        return state[0].index_select(1, index), state[1].index_select(1, index)


class LSTMLM(nn.Module):
    """LSTM language model: the VAE's decoder without a latent code. Its log-likelihood is exact."""

    latent_dim = 0

    def __init__(self, vocab_size: int, config: ModelConfig, pad_id: int, unk_id: int, special_ids: list[int]):
        super().__init__()
        self.decoder = LSTMDecoder(vocab_size, config, 0, pad_id, unk_id, special_ids)

    def encode(self, batch) -> tuple[Tensor, Tensor]:
        raise TypeError("LSTMLM has no latent code to encode")

    def log_likelihood(self, batch, z: Tensor | None) -> Tensor:
        """log p(x) per sentence. -> [B, 1]."""
        return self.decoder.log_likelihood(batch.tokens, None)

    @staticmethod
    def flops(config: ModelConfig, vocab: int, tokens: float, sentences: float, samples: int = 1) -> float:
        """Forward matmul FLOPs over `tokens` predicted tokens in `sentences` sentences (`samples` is for the VAE)."""
        per_token = rnn_flops_per_token(config.embedding_dim, config.hidden_size, config.num_layers)
        return (per_token + 2 * config.hidden_size * vocab) * tokens

    @staticmethod
    def gemm_shapes(config: ModelConfig, vocab: int, sentences: float, tokens: float) -> list[tuple[Shape, float]]:
        return rnn_gemm_shapes(config, vocab, sentences, tokens, latent=0, stacks=1)
