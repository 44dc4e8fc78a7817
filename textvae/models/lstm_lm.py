"""LSTM decoder (shared by the VAE) and the LSTM language-model baseline: the decoder without z.

`model.rnn` picks the recurrent cell of these models (and of the VAE's encoder): lstm (Bowman et al. 2016) or gru
(Sentence-VAE's default). A GRU has no cell state: z sets its initial hidden state, h0 = tanh(W z), where the
LSTM takes c0 = W z and h0 = tanh(c0); tanh keeps h0 in (-1, 1), where a GRU's state always lies.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textvae.config import ModelConfig
from textvae.core.dropout import Dropout, row_dropout
from textvae.core.word_dropout import WordDropout
from textvae.errors import UserError
from textvae.models.sequence import BLOCK_ROWS, DecoderLM, repeat_for_samples, sequence_log_prob

log = logging.getLogger(__name__)

CELLS = {"lstm": (nn.LSTM, 4), "gru": (nn.GRU, 3)}  # model.rnn -> the torch module and its number of gates
State = tuple[Tensor, Tensor] | Tensor  # an LSTM's (h, c) or a GRU's h, each [layers, N, H]
# oneDNN's bf16 LSTM on a CPU runs batches of a multiple of 16 rows at 750-900 GFLOP/s and many others at
# 240-600 (193 rows: 3.6x slower than 192; docs/performance.md): such batches are padded up to the multiple.
BATCH_MULTIPLE = 16
# oneDNN's bf16 LSTM backward (torch 2.13, AMX CPU) returns wrong gradients for the inputs and the initial state at
# some hidden sizes, 1024 among them (cosine 0.03 to the fp64 input gradient; 960, 1040 and 1072 are right), while
# its forward is right. An LSTM with extra hidden units whose weights are zero computes the same outputs, so a
# training LSTM whose own size fails a check (once per shape) runs with the first of these paddings that passes.
HIDDEN_PADDINGS = (16, 48, 80, 112)
GRADIENT_CHECK_COSINE = 0.99


def _bf16_cpu_lstm(rnn: nn.RNNBase, inputs: Tensor) -> bool:
    bf16 = inputs.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )
    return bf16 and inputs.device.type == "cpu" and isinstance(rnn, nn.LSTM) and not rnn.bidirectional


@functools.cache
def onednn_bf16_lstm() -> bool:
    """Whether this CPU runs a bf16 LSTM at all: oneDNN builds it only with AVX512 (on a 2-core AMD EPYC with AVX2,
    torch 2.13: "could not create a primitive descriptor for the LSTM forward propagation primitive")."""
    with torch.random.fork_rng(devices=[]):  # the check must not move a run's random stream
        lstm = nn.LSTM(4, 4, batch_first=True)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                lstm(torch.zeros(2, 3, 4))
        except RuntimeError:
            log.info("this CPU has no bf16 LSTM (oneDNN needs AVX512): bf16 runs its recurrences in fp32")
            return False
    return True


def run_recurrent(rnn: nn.RNNBase, inputs: Tensor, state: State | None = None,
                  weight_drop: float = 0.0) -> tuple[Tensor, State]:  # fmt: skip
    """rnn(inputs, state) for batch-first inputs [N, T, E], an LSTM's hidden-to-hidden weights under DropConnect with
    probability `weight_drop` while it trains. A bf16 LSTM on a CPU gets its batch padded with zero rows up to a
    multiple of BATCH_MULTIPLE (N >= 32), and, when it is trained at a hidden size whose oneDNN gradients are wrong,
    extra zero hidden units (see padded_lstm); the padding is cut from the outputs and the final state, so the
    result is the plain call's."""
    if not rnn.training:
        weight_drop = 0.0
    if not _bf16_cpu_lstm(rnn, inputs):
        return padded_lstm(rnn, inputs, state, 0, weight_drop)
    if not onednn_bf16_lstm():  # a CPU without AVX512: the recurrence in fp32, the rest of the step as autocast has it
        with torch.autocast("cpu", enabled=False):
            inputs, state = inputs.float(), None if state is None else tuple(part.float() for part in state)
            return padded_lstm(rnn, inputs, state, 0, weight_drop)
    rows = inputs.shape[0]
    pad = -rows % BATCH_MULTIPLE if rows >= 2 * BATCH_MULTIPLE else 0
    extra = bf16_hidden_padding(rnn.input_size, rnn.hidden_size, rnn.num_layers) if torch.is_grad_enabled() else 0
    if not (pad or extra or weight_drop):
        return rnn(inputs, state)
    if pad:
        inputs = F.pad(inputs, (0, 0, 0, 0, 0, pad))
        if state is not None:
            state = tuple(F.pad(part, (0, 0, 0, pad)) for part in state)
    outputs, (h, c) = padded_lstm(rnn, inputs, state, extra, weight_drop)
    return outputs[:rows], (h[:, :rows], c[:, :rows])


def padded_lstm(rnn: nn.LSTM, inputs: Tensor, state: State | None, extra: int,
                weight_drop: float = 0.0) -> tuple[Tensor, State]:  # fmt: skip
    """rnn(inputs, state) (batch-first, unidirectional) computed by an LSTM of hidden_size + extra units whose extra
    units have zero weights and biases: their gates are 1/2 and their cell input tanh(0) = 0, so their state stays
    0 and adds nothing to the real units. The gradients reach rnn's own parameters through the padding. With
    `weight_drop`, each layer's hidden-to-hidden weights are dropped with one mask for every timestep (Merity et
    al. 2018's WeightDrop, Wan et al. 2013's DropConnect), kept ones scaled by 1 / (1 - weight_drop). With neither,
    the plain call."""
    if not (extra or weight_drop):
        return rnn(inputs, state)
    size, layers = rnn.hidden_size, rnn.num_layers

    def gate_rows(weight: Tensor) -> Tensor:  # [4H, ...] -> [4(H + extra), ...]: zero rows after each gate's block
        if not extra:
            return weight
        return F.pad(weight.view(4, size, -1), (0, 0, 0, extra)).view(4 * (size + extra), *weight.shape[1:])

    def columns(weight: Tensor) -> Tensor:  # [..., H] -> [..., H + extra]: zero columns for the extra units' states
        return F.pad(weight, (0, extra)) if extra else weight

    weights = []
    for layer in range(layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        if weight_drop:  # F.dropout's law; its Bernoulli sampling is ~1.6x as slow on CPU as a uniform draw
            w_hh = w_hh * (torch.rand_like(w_hh) >= weight_drop).to(w_hh.dtype).mul_(1 / (1 - weight_drop))
        w_ih = gate_rows(w_ih) if layer == 0 else columns(gate_rows(w_ih))
        weights += [w_ih, columns(gate_rows(w_hh))]
        if rnn.bias:
            weights += [gate_rows(getattr(rnn, f"bias_{kind}_l{layer}")) for kind in ("ih", "hh")]
    if state is None:
        zeros = inputs.new_zeros(layers, inputs.shape[0], size + extra)
        state = (zeros, zeros)
    else:
        state = tuple(columns(part) for part in state)
    outputs, h, c = torch.lstm(inputs, state, weights, rnn.bias, layers, rnn.dropout, rnn.training, False, True)
    return outputs[..., :size], (h[..., :size], c[..., :size])


@torch.compiler.disable  # a check with its own backward pass, run eagerly once
@functools.cache
def bf16_hidden_padding(input_size: int, hidden_size: int, layers: int) -> int:
    """0 where oneDNN's bf16 LSTM of these sizes gives right gradients on this machine, else the first of
    HIDDEN_PADDINGS with which it does (checked on a small random problem against fp32, once per shape)."""
    for extra in (0, *HIDDEN_PADDINGS):
        if _gradients_agree(input_size, hidden_size, layers, extra):
            if extra:
                log.info("oneDNN's bf16 LSTM gives wrong gradients at hidden size %d: training it with %d extra "
                         "zero units", hidden_size, extra)  # fmt: skip
            return extra
    raise UserError(f"oneDNN's bf16 LSTM gives wrong gradients at hidden size {hidden_size} with every padding "
                       f"tried {HIDDEN_PADDINGS}: train this model with train.precision fp32")  # fmt: skip


def _gradients_agree(input_size: int, hidden_size: int, layers: int, extra: int) -> bool:
    """Whether the bf16 LSTM (padded by `extra` units) gives the fp32 gradients of its inputs and initial state."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # the module's own init must not move a run's random stream
        rnn = nn.LSTM(input_size, hidden_size, layers, batch_first=True)
    with torch.no_grad():
        for parameter in rnn.parameters():
            parameter.uniform_(-(hidden_size**-0.5), hidden_size**-0.5, generator=generator)
    inputs = torch.randn(BATCH_MULTIPLE, 4, input_size, generator=generator)
    cell = torch.randn(layers, BATCH_MULTIPLE, hidden_size, generator=generator)
    weights = torch.randn(BATCH_MULTIPLE, 4, hidden_size, generator=generator)
    grads = []
    for bf16 in (False, True):
        x, c0 = inputs.clone().requires_grad_(), cell.clone().requires_grad_()
        with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            state = (torch.tanh(c0), c0)
            outputs, _ = padded_lstm(rnn, x, state, extra) if extra else rnn(x, state)
            (outputs.float() * weights).sum().backward()
        grads.append(torch.cat([x.grad.flatten(), c0.grad.flatten()]))
    return F.cosine_similarity(grads[0], grads[1], dim=0).item() >= GRADIENT_CHECK_COSINE


def rnn_flops_per_token(inputs: int, hidden: int, layers: int, cell: str = "lstm") -> float:
    """Matmul FLOPs (2 per multiply-add) of one token through `layers` recurrent layers, one direction: four gates
    (LSTM) or three (GRU), each reading the layer's input (the layer below's state above the first) and its state."""
    gates = CELLS[cell][1]
    return 2 * gates * hidden * (inputs + hidden) + (layers - 1) * 2 * gates * hidden * (2 * hidden)


def output_width(config: ModelConfig) -> int:
    """The width the output layer reads: embedding_dim under model.tie_embeddings, else hidden_size."""
    return config.embedding_dim if config.tie_embeddings else config.hidden_size


def output_flops_per_token(config: ModelConfig, vocab: int) -> float:
    """Matmul FLOPs of one prediction: the output layer, and the map of the state to a tied layer's width."""
    width = output_width(config)
    return 2 * width * vocab + (2 * config.hidden_size * width if width != config.hidden_size else 0)


Shape = tuple[int, int, int]  # a GEMM [m, k] @ [k, n]


def rnn_gemm_shapes(config: ModelConfig, vocab: int, sentences: float, tokens: float, latent: int,
                    stacks: int) -> list[tuple[Shape, float]]:  # fmt: skip
    """The main GEMMs of a training step of `stacks` recurrent stacks (decoder, encoder), each with its forward FLOPs
    per token: the recurrence, the input projection, the output layer (in BLOCK_ROWS-row blocks) and the map to a
    tied output layer's width."""
    hidden, inputs, rows = config.hidden_size, config.embedding_dim + latent, max(1, round(tokens))
    gates, width = CELLS[config.rnn][1], output_width(config)
    shapes = [
        ((max(1, round(sentences)), hidden, gates * hidden), stacks * 2 * hidden * gates * hidden),
        ((rows, inputs, gates * hidden), stacks * 2 * inputs * gates * hidden),
        ((min(rows, BLOCK_ROWS), width, vocab), 2 * width * vocab),
    ]
    return shapes + ([((rows, hidden, width), 2 * hidden * width)] if width != hidden else [])


def uniform_init_(modules: list[nn.Module]) -> None:
    """He et al. 2019 / Li et al. 2019's initialization (model.init uniform): every weight and bias U(-0.01, 0.01),
    embeddings U(-0.1, 0.1) with the padding row kept at zero (also where an output layer shares them)."""
    with torch.no_grad():
        embeddings = {id(layer.weight) for m in modules for layer in m.modules() if isinstance(layer, nn.Embedding)}
        for module in modules:
            for layer in module.modules():
                if isinstance(layer, nn.Embedding):
                    layer.weight.uniform_(-0.1, 0.1)
                    if layer.padding_idx is not None:
                        layer.weight[layer.padding_idx].zero_()
                else:
                    for parameter in layer.parameters(recurse=False):
                        if id(parameter) not in embeddings:
                            parameter.uniform_(-0.01, 0.01)


class LSTMDecoder(nn.Module):
    """p(x|z) = prod_t p(x_t | x_<t, z): z sets the initial state and joins every input embedding (with
    model.latent_skip, a linear map of z is also added to every state the output layer reads)."""

    def __init__(self, vocab_size: int, config: ModelConfig, latent_dim: int, pad_id: int, unk_id: int, specials):
        super().__init__()
        self.pad_id, self.latent_dim = pad_id, latent_dim
        self.num_layers, self.hidden_size = config.num_layers, config.hidden_size
        self.embedding = nn.Embedding(vocab_size, config.embedding_dim, padding_idx=pad_id)
        self.word_dropout = WordDropout(config.word_dropout, unk_id, specials)
        self.embedding_dropout = Dropout(config.embedding_dropout)
        self.type_dropout = config.embedding_type_dropout
        # the recurrent layers, named after their cell: decoder.lstm.* (the name checkpoints have) or decoder.gru.*
        self.cell = config.rnn
        cell = CELLS[config.rnn][0]
        self.add_module(self.cell, cell(config.embedding_dim + latent_dim, config.hidden_size, config.num_layers,
                                        batch_first=True))  # fmt: skip
        self.output_dropout = Dropout(config.output_dropout)
        self.weight_drop = config.weight_drop  # DropConnect on the recurrence's hidden-to-hidden weights (training)
        # model.tie_embeddings (Press & Wolf 2017, Inan et al. 2017): the output layer shares the input embedding and
        # reads the state through a linear map to embedding_dim where the sizes differ
        width = output_width(config)
        tied_projection = config.tie_embeddings and width != config.hidden_size
        self.output_projection = nn.Linear(config.hidden_size, width, bias=False) if tied_projection else None
        self.output = nn.Linear(width, vocab_size)
        if config.tie_embeddings:
            self.output.weight = self.embedding.weight
        # Bowman et al. 2016: z -> initial cell state of every layer; h0 = tanh(c0) (a GRU: h0 = tanh(W z)).
        self.latent_to_state = nn.Linear(latent_dim, config.num_layers * config.hidden_size) if latent_dim else None
        # skip-VAE (Dieng et al. 2019): z reaches every prediction without passing through the recurrence
        skip = latent_dim and config.latent_skip
        self.latent_to_output = nn.Linear(latent_dim, config.hidden_size, bias=False) if skip else None
        self.uniform_init = config.init in ("uniform", "uniform_decoder")
        self.init_weights()

    def init_weights(self) -> None:
        """model.init uniform over torch's defaults; again after a decoder reset (core/remedies.py). A tied output
        layer's embedding starts U(-0.1, 0.1) under any init: torch's N(0, 1) rows would give logits of std
        ~sqrt(embedding_dim)."""
        if self.uniform_init:
            uniform_init_([self])
        elif self.output.weight is self.embedding.weight:
            uniform_init_([self.embedding])

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
        weight = row_dropout(self.embedding.weight, self.type_dropout, self.training)
        emb = self.embedding_dropout(F.embedding(self.word_dropout(inputs), weight, self.pad_id))
        if z is not None:
            emb = torch.cat([emb, z.unsqueeze(1).expand(-1, inputs.shape[1], -1).to(emb.dtype)], dim=-1)
        if state is None:
            state = self.initial_state(z, inputs.shape[0], inputs.device)
        hidden, state = run_recurrent(self.recurrent, emb, state, self.weight_drop)
        if self.latent_to_output is not None:
            hidden = hidden + self.latent_to_output(z.to(hidden.dtype)).unsqueeze(1)
        return hidden, state

    def log_likelihood(self, tokens: Tensor, z: Tensor | None) -> Tensor:
        """log p(x|z) summed over tokens (<eos> included). tokens: [B, T], z: [B, K, D] or None -> [B, K]."""
        tokens, flat_z, samples = repeat_for_samples(tokens, z)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        hidden, _ = self.hidden(inputs, flat_z)
        log_probs = sequence_log_prob(self.output_dropout(hidden), targets, self.output, self.pad_id, self.readout)
        return log_probs.view(-1, samples)

    def readout(self, hidden: Tensor) -> Tensor:
        """What the output layer reads: the states, or their map to embedding_dim under a tied output layer."""
        return hidden if self.output_projection is None else self.output_projection(hidden)

    def step(self, token: Tensor, z: Tensor | None, state) -> tuple[Tensor, State]:
        """One decoding step, keeping the recurrent state. token: [N] -> logits [N, V] and the new state."""
        hidden, state = self.hidden(token.unsqueeze(1), z, state)
        return self.output(self.readout(hidden[:, 0])).float(), state

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
        return (per_token + output_flops_per_token(config, vocab)) * tokens

    @staticmethod
    def gemm_shapes(config: ModelConfig, vocab: int, sentences: float, tokens: float) -> list[tuple[Shape, float]]:
        return rnn_gemm_shapes(config, vocab, sentences, tokens, latent=0, stacks=1)
