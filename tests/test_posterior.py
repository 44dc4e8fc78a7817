"""The shared posterior head and BN-VAE (Zhu et al. 2020): the batch-normalized mean bounds the KL from below."""

import pytest
import torch

from textvae.config import DataConfig, ModelConfig
from textvae.core.gaussian import kl_standard_normal
from textvae.core.posterior import PosteriorHead
from textvae.data.batching import TextSplit
from textvae.data.tokenizer import WordTokenizer
from textvae.models import build_text_model

from conftest import make_sentences


@pytest.mark.parametrize("gamma", [0.3, 0.6, 1.0])
def test_bn_vae_batch_kl_has_the_closed_form_lower_bound(gamma):
    torch.manual_seed(0)
    head = PosteriorHead(16, 8, bn_gamma=gamma).train()
    with torch.no_grad():
        head.mean_shift.copy_(torch.randn(8) * 0.5)
        head.weight.mul_(0.01)  # a nearly collapsed encoder: the raw means barely depend on x
    features = torch.randn(256, 16)
    mu, logvar = head(features)
    # Each mu_d over the batch: mean beta_d, (biased) variance gamma^2 var / (var + eps).
    var = (head.weight[:8] @ features.t() + head.bias[:8, None]).var(1, unbiased=False).detach()
    expected_second_moment = gamma**2 * var / (var + head.mean_norm.eps) + head.mean_shift.detach() ** 2
    torch.testing.assert_close(mu.pow(2).mean(0).detach(), expected_second_moment, rtol=1e-4, atol=1e-6)
    bound = 0.5 * (gamma**2 * var / (var + head.mean_norm.eps) + head.mean_shift.detach() ** 2).sum()
    batch_kl = kl_standard_normal(mu, logvar).sum(-1).mean()
    assert batch_kl >= bound - 1e-5
    # The rest of the KL, E[sigma^2 - log sigma^2 - 1] / 2 >= 0, is what the bound drops: equality at sigma = 1.
    with torch.no_grad():
        head.weight[8:].zero_()
        head.bias[8:].zero_()
    mu, logvar = head(features)
    torch.testing.assert_close(kl_standard_normal(mu, logvar).sum(-1).mean(), bound, rtol=1e-4, atol=1e-5)


def test_bn_vae_evaluates_with_running_statistics_and_takes_a_batch_of_one():
    torch.manual_seed(1)
    head = PosteriorHead(4, 3, bn_gamma=0.5).train()
    for _ in range(50):
        head(torch.randn(64, 4) * 3 + 1)
    head.eval()
    x = torch.randn(5, 4)
    single = torch.cat([head(x[i : i + 1])[0] for i in range(5)])
    torch.testing.assert_close(head(x)[0], single)  # no dependence on the rest of the batch in evaluation
    head.train()
    assert head(x[:1])[0].shape == (1, 3)  # batch statistics need two examples: the running ones stand in


def test_posterior_head_without_bn_keeps_the_linear_layers_parameter_names():
    head = PosteriorHead(6, 2)
    assert sorted(head.state_dict()) == ["bias", "weight"]  # checkpoints of earlier runs still load


def test_bn_vae_config_trains_an_lstm_vae():
    sentences = make_sentences(20)
    split = TextSplit(sentences, WordTokenizer.build(sentences, DataConfig()), 30)
    torch.manual_seed(2)
    model = build_text_model(ModelConfig(embedding_dim=8, hidden_size=12, latent_dim=4, bn_gamma=0.7),
                             split.tokenizer)  # fmt: skip
    with torch.no_grad():
        model.to_posterior.weight.mul_(100.0)  # raw means spread far beyond batch norm's eps
    mu, _ = model.encode(split.collate(list(range(10))))
    torch.testing.assert_close(mu.var(0, unbiased=False).detach(), torch.full((4,), 0.49), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(mu.mean(0).detach(), torch.zeros(4), rtol=0, atol=1e-5)  # the shift starts at 0
