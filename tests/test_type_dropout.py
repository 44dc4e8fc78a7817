"""model.embedding_type_dropout: whole rows of the RNN decoder's input embedding dropped, one mask a batch (Gal &
Ghahramani 2016; AWD-LSTM's embedding dropout), against the decoder given the masked embedding by hand (fp64)."""

import math

import pytest
import torch

from textvae import config as config_lib
from textvae.config import DataConfig, ModelConfig
from textvae.core.dropout import keep_mask, row_dropout
from textvae.data.batching import TextSplit
from textvae.data.tokenizer import WordTokenizer
from textvae.errors import UserError
from textvae.models import build_text_model

from conftest import make_sentences

P = 0.3


@pytest.fixture(scope="module")
def split():
    sentences = make_sentences(40)
    return TextSplit(sentences, WordTokenizer.build(sentences, DataConfig()), 30)


def test_rows_are_dropped_whole_at_the_rate_and_the_rest_scaled():
    torch.manual_seed(0)
    weight = torch.randn(20000, 4, dtype=torch.float64)
    dropped = row_dropout(weight, P, training=True)
    zero_rows = (dropped == 0).all(1)
    kept = ~zero_rows
    assert ((dropped == 0).any(1) == zero_rows).all()  # a row goes whole or not at all
    torch.testing.assert_close(dropped[kept], weight[kept] / (1 - P), rtol=1e-4, atol=0)  # 16-bit rate, to 1/65536
    sigma = math.sqrt(P * (1 - P) / weight.shape[0])
    assert abs(zero_rows.double().mean().item() - P) < 5 * sigma
    assert row_dropout(weight, P, training=False) is weight
    assert row_dropout(weight, 0.0, training=True) is weight


def _model(rate, split):
    torch.manual_seed(0)
    config = ModelConfig(name="lstm_vae", embedding_dim=8, hidden_size=12, latent_dim=3, embedding_type_dropout=rate)
    return build_text_model(config, split.tokenizer).double()


def test_the_decoder_sees_the_masked_embedding_in_training_and_its_gradient_is_masked(split):
    """The training decoder against an evaluating one whose embedding is the one the dropped call drew (the same
    seed): the same likelihood, and the gradient of each embedding row the masked one (zero for dropped types)."""
    batch = split.collate(list(range(8)))
    z = torch.randn(8, 2, 3, dtype=torch.float64)
    dropped, reference = _model(P, split), _model(0.0, split)
    dropped.train(), reference.eval()
    torch.manual_seed(5)
    got = dropped.decoder.log_likelihood(batch.tokens, z)
    torch.manual_seed(5)
    keep, scale = keep_mask(torch.Size((dropped.decoder.embedding.weight.shape[0], 1)), P, torch.device("cpu"))
    mask = keep.double() * scale
    with torch.no_grad():
        reference.decoder.embedding.weight.mul_(mask)
    want = reference.decoder.log_likelihood(batch.tokens, z)
    torch.testing.assert_close(got, want)
    inputs = batch.tokens[:, :-1].unique()
    assert 0 < (keep[inputs, 0]).sum() < len(inputs)  # this batch drops some of its word types and keeps others
    got.sum().backward()
    want.sum().backward()
    # d/dW of f(W * m) = m * f'(W * m): the masked reference's row gradient times the mask
    expected = reference.decoder.embedding.weight.grad * mask
    torch.testing.assert_close(dropped.decoder.embedding.weight.grad, expected)
    assert (dropped.decoder.embedding.weight.grad[inputs][~keep[inputs, 0]] == 0).all()


def test_a_gru_decoder_drops_word_types_too(split):
    torch.manual_seed(0)
    config = ModelConfig(name="lstm_vae", rnn="gru", embedding_dim=8, hidden_size=12, latent_dim=3,
                         embedding_type_dropout=0.5)  # fmt: skip
    model = build_text_model(config, split.tokenizer).train()
    batch = split.collate(list(range(6)))
    z = torch.randn(6, 1, 3)
    draws = [model.decoder.log_likelihood(batch.tokens, z) for _ in range(2)]
    assert not torch.allclose(draws[0], draws[1])  # a new mask each batch; no other dropout is on
    model.eval()
    torch.testing.assert_close(
        model.decoder.log_likelihood(batch.tokens, z), model.decoder.log_likelihood(batch.tokens, z)
    )


def test_in_evaluation_nothing_is_dropped(split):
    batch = split.collate(list(range(6)))
    z = torch.randn(6, 1, 3, dtype=torch.float64)
    dropped, plain = _model(P, split), _model(0.0, split)
    dropped.eval(), plain.eval()
    torch.testing.assert_close(
        dropped.decoder.log_likelihood(batch.tokens, z), plain.decoder.log_likelihood(batch.tokens, z)
    )


def test_embedding_type_dropout_is_a_recurrent_decoders_probability():
    gru = config_lib.from_dict({"model": {"name": "lstm_vae", "rnn": "gru", "embedding_type_dropout": 0.1}})
    assert gru.model.embedding_type_dropout == 0.1  # the lookup before the recurrence: any cell
    with pytest.raises(UserError, match="model.embedding_type_dropout"):
        config_lib.from_dict({"model": {"name": "transformer_vae", "embedding_type_dropout": 0.1}})
    with pytest.raises(UserError, match="model.embedding_type_dropout"):
        config_lib.from_dict({"model": {"name": "lstm_vae", "embedding_type_dropout": 1.0}})
