import pytest
import torch

from textvae.config import DataConfig, ModelConfig
from textvae.core.objective import ElboSettings, elbo
from textvae.data.batching import TextSplit
from textvae.data.tokenizer import WordTokenizer
from textvae.generate import Decoding, decode
from textvae.models import build_text_model

from conftest import make_sentences, shortest_and_longest


@pytest.fixture(scope="module")
def split():
    sentences = make_sentences(40)
    return TextSplit(sentences, WordTokenizer.build(sentences, DataConfig()), 30)


def _model(split, name="transformer_vae", **kwargs):
    torch.manual_seed(0)
    options = dict(embedding_dim=16, hidden_size=32, latent_dim=3, num_layers=2, num_heads=4, max_positions=64)
    options.update(kwargs)
    return build_text_model(ModelConfig(name=name, **options), split.tokenizer).eval()


@pytest.mark.parametrize("injection", ["embedding", "memory", "both"])
def test_changing_token_t_never_changes_outputs_before_t(split, injection):
    decoder = _model(split, z_injection=injection).decoder
    inputs = split.collate([0]).tokens[:, :-1]
    z = torch.randn(1, 3)
    t = inputs.shape[1] // 2
    changed = inputs.clone()
    changed[0, t] = (changed[0, t] + 1) % 40 + 4
    before, after = decoder.hidden(inputs, z), decoder.hidden(changed, z)
    assert torch.allclose(before[:, :t], after[:, :t], atol=1e-6)
    assert not torch.allclose(before[:, t:], after[:, t:])


@pytest.mark.parametrize("injection", ["embedding", "memory", "both"])
def test_cached_decoding_gives_the_uncached_logits(split, injection):
    decoder = _model(split, z_injection=injection).decoder
    tokens = split.collate([0, 1, 2]).tokens[:, :-1]
    z = torch.randn(3, 3)
    full = decoder.output(decoder.hidden(tokens, z))  # [N, T, V]
    state = None
    for t in range(tokens.shape[1]):
        logits, state = decoder.step(tokens[:, t], z, state)
        assert torch.allclose(logits, full[:, t], atol=1e-4), t


@pytest.mark.parametrize("injection", ["embedding", "memory"])
def test_each_injection_mode_carries_z(split, injection):
    model = _model(split, z_injection=injection)
    batch = split.collate([0])
    first = model.log_likelihood(batch, torch.zeros(1, 1, 3))
    second = model.log_likelihood(batch, torch.full((1, 1, 3), 2.0))
    assert not torch.allclose(first, second)


def test_padding_does_not_change_the_encoding(split):
    model = _model(split)
    alone, padded = (model.encode(split.collate(rows))[0] for rows in shortest_and_longest(split))
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_padding_does_not_change_the_likelihood(split):
    model = _model(split, z_injection="both")
    short = min(range(len(split)), key=split.lengths.__getitem__)
    longest = max(range(len(split)), key=split.lengths.__getitem__)
    z = torch.randn(2, 1, 3)
    alone = model.log_likelihood(split.collate([short]), z[:1])
    padded = model.log_likelihood(split.collate([short, longest]), z)
    assert torch.allclose(alone[0], padded[0], atol=1e-4)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_shapes_gradients_and_tied_weights(split, batch_size):
    model = _model(split, tie_embeddings=True, z_injection="both").train()
    assert model.decoder.output.weight is model.decoder.embedding.weight
    terms = elbo(model, split.collate(list(range(batch_size))), ElboSettings(kl_weight=1.0))
    assert terms.rec.shape == (batch_size,)
    terms.loss.backward()
    assert model.to_posterior.weight.grad.abs().sum() > 0
    lm = _model(split, name="transformer_lm").train()
    elbo(lm, split.collate([0]), ElboSettings(kl_weight=1.0)).loss.backward()


def test_generation_uses_the_cache_for_every_strategy(split):
    decoder = _model(split, z_injection="memory").decoder
    z = torch.randn(4, 3)
    greedy = decode(decoder, z, 2, 3, Decoding(max_length=10))
    assert decode(decoder, z, 2, 3, Decoding(strategy="beam", beam_size=1, max_length=10)) == greedy
    beams = decode(decoder, z, 2, 3, Decoding(strategy="beam", beam_size=3, max_length=10))
    assert beams == [decode(decoder, z[i : i + 1], 2, 3, Decoding(strategy="beam", beam_size=3, max_length=10))[0]
                     for i in range(4)]  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    assert len(decode(decoder, z, 2, 3, Decoding(strategy="sample", top_p=0.9), generator=generator)) == 4


@pytest.mark.parametrize("name", ["transformer_lm", "transformer_vae"])
def test_an_untrained_transformer_predicts_near_the_uniform_guess(name):
    """GPT-2's initialization: at the PTB config's sizes (width 256, tied output layer) the first loss is within a
    nat of log V per token (torch's N(0, 1) embeddings gave 176 nats for 9.2)."""
    torch.manual_seed(0)
    vocab = 2000
    sentences = [" ".join(f"w{(7 * i + 3 * j) % vocab}" for j in range(12)) for i in range(8)]
    split = TextSplit(sentences, WordTokenizer.build(sentences, DataConfig(vocab_size=vocab)), 30)
    config = ModelConfig(name=name, embedding_dim=256, hidden_size=1024, latent_dim=32, num_layers=2, num_heads=4,
                         max_positions=64, tie_embeddings=True, z_injection="both")  # fmt: skip
    model = build_text_model(config, split.tokenizer).eval()
    batch = split.collate(list(range(8)))
    z = torch.randn(8, 1, 32) if model.latent_dim else None
    per_token = -model.log_likelihood(batch, z).sum() / batch.num_tokens
    assert abs(per_token.item() - torch.log(torch.tensor(float(len(split.tokenizer)))).item()) < 1.0


def test_a_decoder_reset_restores_the_transformers_own_initialization(split):
    from textvae.core.remedies import reset_decoder

    model = _model(split, embedding_dim=64, hidden_size=64)
    with torch.no_grad():
        model.decoder.embedding.weight.mul_(50.0)
    reset_decoder(model)
    weight = model.decoder.embedding.weight
    assert abs(weight[4:].std().item() - 0.02) < 0.005  # torch's default would be N(0, 1)
    assert weight[split.tokenizer.pad_id].abs().max().item() == 0.0
