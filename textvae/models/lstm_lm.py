"""LSTM decoder (shared by the VAE) and the LSTM language-model baseline: the decoder without z.

`model.rnn` picks the recurrent cell of these models (and of the VAE's encoder): lstm (Bowman et al. 2016) or gru
(Sentence-VAE's default). A GRU has no cell state: z sets its initial hidden state, h0 = tanh(W z), where the
LSTM takes c0 = W z and h0 = tanh(c0); tanh keeps h0 in (-1, 1), where a GRU's state always lies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textvae.config import ModelConfig
from textvae.core.dropout import Dropout
from textvae.core.word_dropout import WordDropout
from textvae.models.sequence import BLOCK_ROWS, DecoderLM, repeat_for_samples, sequence_log_prob

CELLS = {"lstm": (nn.LSTM, 4), "gru": (nn.GRU, 3)}  # model.rnn -> the torch module and its number of gates
State = tuple[Tensor, Tensor] | Tensor  # an LSTM's (h, c) or a GRU's h, each [layers, N, H]
# oneDNN's bf16 LSTM on a CPU runs batches of a multiple of 16 rows at 750-900 GFLOP/s and many others at
# 240-600 (193 rows: 3.6x slower than 192; docs/performance.md): such batches are padded up to the multiple.
BATCH_MULTIPLE = 16


def run_recurrent(rnn: nn.RNNBase, inputs: Tensor, state: State | None = None) -> tuple[Tensor, State]:
    """rnn(inputs, state) for batch-first inputs [N, T, E]. A bf16 LSTM on a CPU gets its batch padded with zero
    rows up to a multiple of BATCH_MULTIPLE (N >= 32); the rows are independent, and the padding is cut from
    the outputs and the final state, so the result is the plain call's."""
    rows = inputs.shape[0]
    pad = -rows % BATCH_MULTIPLE
    bf16 = inputs.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )
    if not (pad and bf16 and rows >= 2 * BATCH_MULTIPLE and inputs.device.type == "cpu" and isinstance(rnn, nn.LSTM)):
        return rnn(inputs, state)
    inputs = F.pad(inputs, (0, 0, 0, 0, 0, pad))
    if state is not None:
        state = tuple(F.pad(part, (0, 0, 0, pad)) for part in state)
    outputs, (h, c) = rnn(inputs, state)
    return outputs[:rows], (h[:, :rows], c[:, :rows])


def rnn_flops_per_token(inputs: int, hidden: int, layers: int, cell: str = "lstm") -> float:
    """Matmul FLOPs (2 per multiply-add) of one token through `layers` recurrent layers, one direction: four gates
    (LSTM) or three (GRU), each reading the layer's input (the layer below's state above the first) and its state."""
    gates = CELLS[cell][1]
    return 2 * gates * hidden * (inputs + hidden) + (layers - 1) * 2 * gates * hidden * (2 * hidden)


Shape = tuple[int, int, int]  # a GEMM [m, k] @ [k, n]


def rnn_gemm_shapes(config: ModelConfig, vocab: int, sentences: float, tokens: float, latent: int,
                    stacks: int) -> list[tuple[Shape, float]]:  # fmt: skip
    """The main GEMMs of a training step of `stacks` recurrent stacks (decoder, encoder), each with its forward FLOPs
    per token: the recurrence, the input projection, the output layer (in BLOCK_ROWS-row blocks)."""
    hidden, inputs, rows = config.hidden_size, config.embedding_dim + latent, max(1, round(tokens))
    gates = CELLS[config.rnn][1]
    return [
        ((max(1, round(sentences)), hidden, gates * hidden), stacks * 2 * hidden * gates * hidden),
        ((rows, inputs, gates * hidden), stacks * 2 * inputs * gates * hidden),
        ((min(rows, BLOCK_ROWS), hidden, vocab), 2 * hidden * vocab),
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
        # the recurrent layers, named after their cell: decoder.lstm.* (the name checkpoints have) or decoder.gru.*
        self.cell = config.rnn
        cell = CELLS[config.rnn][0]
        self.add_module(self.cell, cell(config.embedding_dim + latent_dim, config.hidden_size, config.num_layers,
                                        batch_first=True))  # fmt: skip
        self.output_dropout = Dropout(config.output_dropout)
        self.output = nn.Linear(config.hidden_size, vocab_size)
        # Bowman et al. 2016: z -> initial cell state of every layer; h0 = tanh(c0) (a GRU: h0 = tanh(W z)).
        self.latent_to_state = nn.Linear(latent_dim, config.num_layers * config.hidden_size) if latent_dim else None

    @property
    def recurrent(self) -> nn.RNNBase:
        return self._modules[self.cell]

    def initial_state(self, z: Tensor | None, batch: int, device: torch.device) -> State | None:
        """z: [N, D] -> (h0, c0) for an LSTM, h0 for a GRU, each [layers, N, H]; None (zeros) without a latent code."""
        if z is None:
            return None
        c0 = self.latent_to_state(z).view(batch, self.num_layers, self.hidden_size).transpose(0, 1).contiguous()
        return (torch.tanh(c0), c0) if self.cell == "lstm" else torch.tanh(c0)

    def hidden(self, inputs: Tensor, z: Tensor | None, state=None) -> tuple[Tensor, State]:
        """inputs: [N, T] token ids, z: [N, D] or None -> hidden states [N, T, H] and the final state."""
        emb = self.embedding_dropout(self.embedding(self.word_dropout(inputs)))
        if z is not None:
            emb = torch.cat([emb, z.unsqueeze(1).expand(-1, inputs.shape[1], -1).to(emb.dtype)], dim=-1)
        if state is None:
            state = self.initial_state(z, inputs.shape[0], inputs.device)
        return run_recurrent(self.recurrent, emb, state)

    def log_likelihood(self, tokens: Tensor, z: Tensor | None) -> Tensor:
        """log p(x|z) summed over tokens (<eos> included). tokens: [B, T], z: [B, K, D] or None -> [B, K]."""
        tokens, flat_z, samples = repeat_for_samples(tokens, z)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        hidden, _ = self.hidden(inputs, flat_z)
        return sequence_log_prob(self.output_dropout(hidden), targets, self.output, self.pad_id).view(-1, samples)

    def step(self, token: Tensor, z: Tensor | None, state) -> tuple[Tensor, State]:
        """One decoding step, keeping the recurrent state. token: [N] -> logits [N, V] and the new state."""
        hidden, state = self.hidden(token.unsqueeze(1), z, state)
        return self.output(hidden[:, 0]).float(), state

    @staticmethod
    def reorder_state(state: State, index: Tensor) -> State:
        """Pick rows of the (h, c) or h state, for beam search. index: [M] -> each [layers, M, H]."""
        if isinstance(state, tuple):
            return state[0].index_select(1, index), state[1].index_select(1, index)
        return state.index_select(1, index)


class LSTMLM(DecoderLM):
    """LSTM language model: the VAE's decoder without a latent code. Its log-likelihood is exact."""

    decoder_class = LSTMDecoder

    @staticmethod
    def flops(config: ModelConfig, vocab: int, tokens: float, sentences: float, samples: int = 1) -> float:
        """Forward matmul FLOPs over `tokens` predicted tokens in `sentences` sentences (`samples` is for the VAE)."""
        per_token = rnn_flops_per_token(config.embedding_dim, config.hidden_size, config.num_layers, config.rnn)
        return (per_token + 2 * config.hidden_size * vocab) * tokens

    @staticmethod
    def gemm_shapes(config: ModelConfig, vocab: int, sentences: float, tokens: float) -> list[tuple[Shape, float]]:
        return rnn_gemm_shapes(config, vocab, sentences, tokens, latent=0, stacks=1)
