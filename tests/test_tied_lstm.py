"""model.tie_embeddings for the LSTM models: the output layer shares the decoder's input embedding, reading the
state through a linear map to embedding_dim where hidden_size differs (Press & Wolf 2017; Inan et al. 2017)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from textvae import config as config_lib
from textvae.config import DataConfig, ModelConfig
from textvae.core.remedies import reset_decoder
from textvae.data.batching import TextSplit
from textvae.data.tokenizer import WordTokenizer
from textvae.models import build_text_model

from conftest import make_sentences


@pytest.fixture(scope="module")
def split():
    sentences = make_sentences(40)
    return TextSplit(sentences, WordTokenizer.build(sentences, DataConfig()), 30)


def _model(split, name="lstm_vae", **kwargs):
    torch.manual_seed(0)
    latent = {"latent_dim": 3} if name == "lstm_vae" else {}
    config = ModelConfig(name=name, embedding_dim=8, hidden_size=12, tie_embeddings=True, **latent, **kwargs)
    return build_text_model(config, split.tokenizer)


def test_the_output_layer_is_the_embedding_read_through_a_map_to_its_width(split):
    model = _model(split).double().eval()
    decoder = model.decoder
    assert decoder.output.weight is decoder.embedding.weight
    assert decoder.output_projection.weight.shape == (8, 12)
    batch = split.collate(list(range(6)))
    z = torch.randn(6, 1, 3, dtype=torch.float64)
    hidden, _ = decoder.hidden(batch.tokens[:, :-1], z[:, 0])
    logits = hidden @ decoder.output_projection.weight.T @ decoder.embedding.weight.T + decoder.output.bias
    targets = batch.tokens[:, 1:]
    full = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=decoder.pad_id, reduction="none").sum(1)
    assert torch.allclose(model.log_likelihood(batch, z)[:, 0].double(), -full, atol=1e-4)
    # decoding reads the same layer
    step_logits, _ = decoder.step(batch.tokens[:, 0], z[:, 0], None)
    assert torch.allclose(step_logits.double(), logits[:, 0], atol=1e-6)


def test_the_shared_weight_gets_the_embeddings_and_the_output_layers_gradients(split):
    model = _model(split).double().eval()
    batch = split.collate(list(range(6)))
    z = torch.randn(6, 1, 3, dtype=torch.float64)
    model.log_likelihood(batch, z).sum().backward()
    tied = model.decoder.embedding.weight.grad.clone()
    model.zero_grad()
    decoder = model.decoder
    decoder.output.weight = nn.Parameter(decoder.embedding.weight.detach().clone())  # untied, same values
    model.log_likelihood(batch, z).sum().backward()
    as_embedding, as_output = decoder.embedding.weight.grad, decoder.output.weight.grad
    assert as_embedding.abs().sum() > 0 and as_output.abs().sum() > 0
    assert torch.allclose(tied, as_embedding + as_output, atol=1e-6)


@pytest.mark.parametrize("init", ["default", "uniform"])
def test_a_tied_embedding_starts_small_with_a_zero_padding_row_and_again_after_a_decoder_reset(split, init):
    model = _model(split, init=init)
    for _ in range(2):
        weight = model.decoder.embedding.weight
        assert weight is model.decoder.output.weight
        assert 0.05 < weight.abs().max() <= 0.1  # U(-0.1, 0.1), not torch's N(0, 1) nor the Linear's bound
        assert weight[model.decoder.pad_id].abs().sum() == 0
        reset_decoder(model)


@pytest.mark.parametrize("name", ["lstm_lm", "lstm_vae"])
def test_flops_count_the_narrower_output_layer_and_the_map(split, name):
    """The FLOPs a tied model saves, counted by torch on a forward pass, are the ones its flops() says it saves
    (everything but the output layer is the same in both models and cancels)."""
    batch = split.collate(list(range(8)))
    tokens, vocab = int((batch.tokens[:, 1:] != split.tokenizer.pad_id).sum()), len(split.tokenizer)
    latent = {"latent_dim": 3} if name == "lstm_vae" else {}
    counted, claimed = {}, {}
    for tie in (False, True):
        config = ModelConfig(name=name, embedding_dim=16, hidden_size=48, tie_embeddings=tie, **latent)
        model = build_text_model(config, split.tokenizer).eval()
        z = torch.zeros(8, 1, 3) if latent else None
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.log_likelihood(batch, z)
        counted[tie], claimed[tie] = counter.get_total_flops(), type(model).flops(config, vocab, tokens, 8)
    assert counted[False] - counted[True] == claimed[False] - claimed[True] > 0


@pytest.mark.parametrize("name", ["lstm_vae", "lstm_lm"])
def test_the_key_is_read_by_the_lstm_models(tiny_config_path, name):
    config = config_lib.load(tiny_config_path, [f"model.name={name}", "model.tie_embeddings=true"])
    assert config.model.tie_embeddings
