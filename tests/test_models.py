import pytest
import torch
import torch.nn.functional as F

from textvae.config import DataConfig, ModelConfig
from textvae.core.objective import ElboSettings, elbo
from textvae.data.batching import TextSplit
from textvae.data.tokenizer import WordTokenizer
from textvae.models import build_text_model

from conftest import make_sentences, shortest_and_longest


@pytest.fixture(scope="module")
def split():
    sentences = make_sentences(40)
    tok = WordTokenizer.build(sentences, DataConfig())
    return TextSplit(sentences, tok, 30)


def _model(split, **kwargs):
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=8, hidden_size=12, latent_dim=3, **kwargs)
    return build_text_model(config, split.tokenizer)


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (1, True), (3, True)])
@pytest.mark.parametrize("batch_size", [1, 5])
@pytest.mark.parametrize("rnn", ["lstm", "gru"])  # the GRU: tests/test_gru.py
def test_vae_shapes_and_gradients(split, layers, bidirectional, batch_size, rnn):
    model = _model(split, num_layers=layers, bidirectional=bidirectional, rnn=rnn)
    batch = split.collate(list(range(batch_size)))
    mu, logvar = model.encode(batch)
    assert mu.shape == logvar.shape == (batch_size, 3)
    assert model.log_likelihood(batch, torch.randn(batch_size, 4, 3)).shape == (batch_size, 4)
    terms = elbo(model, batch, ElboSettings(kl_weight=1.0))
    assert terms.rec.shape == terms.kl.shape == (batch_size,)
    terms.loss.backward()
    assert model.encoder.weight_ih_l0.grad.abs().sum() > 0  # the encoder learns through z
    assert model.decoder.latent_to_state.weight.grad.abs().sum() > 0


def test_lm_shapes_batch_size_one(split):
    model = _model(split, name="lstm_lm", num_layers=2)
    assert model.latent_dim == 0
    terms = elbo(model, split.collate([3]), ElboSettings(kl_weight=1.0))
    assert terms.rec.shape == (1,) and float(terms.kl) == 0.0
    terms.loss.backward()


def test_padding_free_likelihood_matches_full_softmax(split):
    model = _model(split).eval()
    batch = split.collate(list(range(6)))
    z = torch.randn(6, 1, 3)
    decoder = model.decoder
    hidden, _ = decoder.hidden(batch.tokens[:, :-1], z[:, 0])
    logits = decoder.output(hidden)
    targets = batch.tokens[:, 1:]
    full = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=decoder.pad_id, reduction="none").sum(1)
    assert torch.allclose(model.log_likelihood(batch, z)[:, 0], -full, atol=1e-5)


def test_several_samples_equal_one_at_a_time(split):
    model = _model(split).eval()
    batch = split.collate([0, 1, 2])
    z = torch.randn(3, 4, 3)
    together = model.log_likelihood(batch, z)
    apart = torch.cat([model.log_likelihood(batch, z[:, k : k + 1]) for k in range(4)], 1)
    assert torch.allclose(together, apart, atol=1e-5)


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_change_the_encoding(split, bidirectional, pooling):
    model = _model(split, bidirectional=bidirectional, encoder_pooling=pooling).eval()
    alone, padded = (model.encode(split.collate(rows))[0] for rows in shortest_and_longest(split))
    assert torch.allclose(alone[0], padded[0], atol=1e-6)


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_encoder_pooling_summarizes_the_outputs_over_the_sentence(split, bidirectional, pooling):
    model = _model(split, bidirectional=bidirectional, encoder_pooling=pooling).eval()
    batch = split.collate([4])  # one sentence: no padding; the encoder reads w_1 .. <eos>
    outputs, _ = model.encoder(model.embedding(batch.tokens[:, 1:]))  # [1, T, directions * H]
    hidden = model.encoder.hidden_size
    summary = {
        "mean": outputs[0].mean(0),
        "max": outputs[0].max(0).values,
        # the forward direction's state after <eos>, the backward one's after w_1
        "last": torch.cat([outputs[0, -1, :hidden], outputs[0, 0, hidden:]]),
    }[pooling]
    assert torch.allclose(model.encode(batch)[0], model.to_posterior(summary.unsqueeze(0))[0], atol=1e-6)


def test_latent_skip_adds_a_map_of_z_to_every_state_the_output_layer_reads(split):
    model = _model(split, latent_skip=True).eval()
    decoder = model.decoder
    batch = split.collate([0, 1, 2])
    z = torch.randn(3, 3)
    with_skip, _ = decoder.hidden(batch.tokens[:, :-1], z)
    skip, decoder.latent_to_output = decoder.latent_to_output, None
    without, _ = decoder.hidden(batch.tokens[:, :-1], z)
    decoder.latent_to_output = skip
    assert torch.allclose(with_skip - without, (z @ skip.weight.T).unsqueeze(1).expand_as(without), atol=1e-6)
    # decoding step by step reads the same states: its log-probabilities sum to log p(x|z)
    tokens = batch.tokens[:1]
    state, total = None, 0.0
    for t in range(int(batch.lengths[0]) - 1):
        logits, state = decoder.step(tokens[:, t], z[:1], state)
        total += logits.log_softmax(-1)[0, tokens[0, t + 1]]
    assert torch.allclose(total, model.log_likelihood(split.collate([0]), z[:1, None])[0, 0], atol=1e-5)
    model.train()
    elbo(model, batch, ElboSettings(kl_weight=1.0)).loss.backward()
    assert skip.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["lstm_vae", "lstm_lm"])
def test_uniform_init_bounds_every_weight_and_survives_a_decoder_reset(split, name):
    # He et al. / Li et al. 2019: weights U(-0.01, 0.01), embeddings U(-0.1, 0.1); torch's LSTM default at 12
    # units is U(-0.29, 0.29) and its embeddings N(0, 1)
    from textvae.core.remedies import reset_decoder

    def bounds(model):
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        return [(p.abs().max().item(), 0.1 if id(p) in embeddings else 0.01) for p in model.parameters()]

    model = _model(split, name=name, init="uniform")
    assert all(largest <= bound for largest, bound in bounds(model))
    assert max(largest for largest, bound in bounds(model) if bound == 0.01) > 0.009  # drawn, not zeroed
    pad = split.tokenizer.pad_id
    assert torch.equal(model.decoder.embedding.weight[pad], torch.zeros(8))
    assert any(largest > 0.1 for largest, _ in bounds(_model(split, name=name)))  # the default differs
    if name == "lstm_vae":
        encoder = model.encoder.weight_hh_l0.clone()
        reset_decoder(model)  # Li et al.: the decoder re-initialized as at construction, the encoder kept
        assert all(largest <= bound for largest, bound in bounds(model))
        assert torch.equal(model.encoder.weight_hh_l0, encoder)


@pytest.mark.parametrize("encoder_dropout", [True, False])
def test_encoder_dropout_decides_whether_the_encoder_sees_dropped_embeddings(split, encoder_dropout):
    model = _model(split, embedding_dropout=0.5, encoder_dropout=encoder_dropout).train()
    batch = split.collate([0, 1, 2])
    first, second = model.encode(batch)[0], model.encode(batch)[0]
    assert torch.equal(first, second) != encoder_dropout  # training mode: dropout draws differ between calls
    z = torch.zeros(3, 1, 3)
    assert not torch.equal(model.log_likelihood(batch, z), model.log_likelihood(batch, z))  # the decoder's stays


def test_uniform_decoder_init_leaves_the_encoder_at_torchs_default(split):
    model = _model(split, init="uniform_decoder")
    assert all(p.abs().max() <= 0.1 for p in model.decoder.parameters())
    assert model.encoder.weight_hh_l0.abs().max() > 0.1  # torch's U(-1/sqrt(12), 1/sqrt(12))


@pytest.mark.parametrize(
    "name,init",
    [("lstm_vae", "xavier"), ("lstm_lm", "xavier"), ("image_vae", "uniform"), ("image_vae", "uniform_decoder")],
)
def test_an_initialization_of_the_other_family_is_refused(name, init):
    from textvae import config as config_lib

    with pytest.raises(Exception, match=f"model.init: {init} is for the .* models, not {name}"):
        config_lib.from_dict({"model": {"name": name, "init": init}})
    config_lib.from_dict({"model": {"name": name, "init": "default"}})  # the default is every family's


def test_z_changes_the_decoder_output(split):
    model = _model(split).eval()
    batch = split.collate([0])
    first = model.log_likelihood(batch, torch.zeros(1, 1, 3))
    second = model.log_likelihood(batch, torch.full((1, 1, 3), 2.0))
    assert not torch.allclose(first, second)


def test_word_dropout_is_off_in_eval_mode(split):
    model = _model(split, word_dropout=0.9)
    batch = split.collate([0, 1])
    z = torch.randn(2, 1, 3)
    model.eval()
    assert torch.equal(model.log_likelihood(batch, z), model.log_likelihood(batch, z))
    model.train()
    torch.manual_seed(0)
    noisy = model.log_likelihood(batch, z)
    model.eval()
    assert not torch.allclose(noisy, model.log_likelihood(batch, z))
