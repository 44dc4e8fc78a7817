"""model.weight_drop: DropConnect on the LSTM decoder's hidden-to-hidden weights (Merity et al. 2018) against an
LSTM given the dropped weights by hand (fp64), its gradients, the padded bf16 path's form of it, and the config."""

import pytest
import torch
from torch import nn

from textvae import config as config_lib
from textvae.config import DataConfig, ModelConfig
from textvae.data.batching import TextSplit
from textvae.data.tokenizer import WordTokenizer
from textvae.errors import UserError
from textvae.models import build_text_model
from textvae.models.lstm_lm import padded_lstm, run_recurrent

from conftest import make_sentences

P = 0.4


@pytest.fixture(scope="module")
def split():
    sentences = make_sentences(40)
    return TextSplit(sentences, WordTokenizer.build(sentences, DataConfig()), 30)


def _lstm(layers=2):
    torch.manual_seed(0)
    return nn.LSTM(5, 6, layers, batch_first=True).double()


def _inputs():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(3, 7, 5, generator=generator, dtype=torch.float64)
    state = tuple(torch.randn(2, 3, 6, generator=generator, dtype=torch.float64) for _ in range(2))
    return inputs, state


def _by_hand(rnn, seed):
    """A copy of `rnn` whose hidden-to-hidden weights are those the dropped call draws under `seed`, and the
    masks (kept / (1 - P)) it used."""
    torch.manual_seed(seed)
    masks = [(torch.rand_like(getattr(rnn, f"weight_hh_l{k}")) >= P) / (1 - P) for k in range(rnn.num_layers)]
    reference = nn.LSTM(5, 6, rnn.num_layers, batch_first=True).double()
    reference.load_state_dict(rnn.state_dict())
    with torch.no_grad():
        for k, mask in enumerate(masks):
            getattr(reference, f"weight_hh_l{k}").mul_(mask)
    return reference, masks


def test_in_evaluation_weight_drop_changes_nothing():
    rnn, (inputs, state) = _lstm().eval(), _inputs()
    expected, _ = rnn(inputs, state)
    got, _ = run_recurrent(rnn, inputs, state, weight_drop=P)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("extra", [0, 3])
def test_a_dropped_call_is_the_lstm_with_its_hidden_weights_masked_and_so_are_the_gradients(extra):
    rnn, (inputs, state) = _lstm(), _inputs()
    reference, masks = _by_hand(rnn, seed=5)
    torch.manual_seed(5)
    if extra:  # the padded path that bf16 training takes at hidden sizes whose oneDNN gradients are wrong
        got, (h, c) = padded_lstm(rnn, inputs, state, extra, P)
    else:
        got, (h, c) = run_recurrent(rnn, inputs, state, weight_drop=P)
    expected, (h_ref, c_ref) = reference(inputs, state)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(c, c_ref)
    assert not torch.allclose(got, rnn(inputs, state)[0])  # the masks did change the result
    weights = torch.randn_like(got)
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    for k, mask in enumerate(masks):
        # d loss / d raw weight = d loss / d dropped weight * mask / (1 - P): zero where a weight was dropped
        raw, dropped = getattr(rnn, f"weight_hh_l{k}"), getattr(reference, f"weight_hh_l{k}")
        torch.testing.assert_close(raw.grad, dropped.grad * mask)
    torch.testing.assert_close(rnn.weight_ih_l0.grad, reference.weight_ih_l0.grad)


def test_weight_drop_needs_an_lstm_decoder():
    with pytest.raises(UserError, match="model.weight_drop"):
        config_lib.from_dict({"model": {"name": "lstm_vae", "rnn": "gru", "weight_drop": 0.3}})
    with pytest.raises(UserError, match="model.weight_drop"):
        config_lib.from_dict({"model": {"name": "transformer_vae", "weight_drop": 0.3}})
    with pytest.raises(UserError, match="model.weight_drop"):
        config_lib.from_dict({"model": {"name": "lstm_vae", "weight_drop": 1.0}})


def test_the_decoder_drops_its_hidden_weights_in_training_only(split):
    batch = split.collate(list(range(6)))
    z = torch.randn(6, 1, 3)
    torch.manual_seed(0)
    plain = build_text_model(ModelConfig(name="lstm_vae", embedding_dim=8, hidden_size=12, latent_dim=3),
                             split.tokenizer)  # fmt: skip
    torch.manual_seed(0)
    dropped = build_text_model(ModelConfig(name="lstm_vae", embedding_dim=8, hidden_size=12, latent_dim=3,
                                           weight_drop=0.5), split.tokenizer)  # fmt: skip
    for model in (plain, dropped):
        model.train()
    draws = [dropped.decoder.log_likelihood(batch.tokens, z) for _ in range(2)]
    assert not torch.allclose(draws[0], draws[1])  # a new mask each batch (no other dropout is on)
    torch.testing.assert_close(plain.decoder.log_likelihood(batch.tokens, z),
                               plain.decoder.log_likelihood(batch.tokens, z))  # fmt: skip
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped.decoder.log_likelihood(batch.tokens, z),
                               plain.decoder.log_likelihood(batch.tokens, z))  # fmt: skip
