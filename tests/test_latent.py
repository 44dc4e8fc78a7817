"""The latent models' base class and the one rule for their posterior's KL terms (core/latent.py)."""

from types import SimpleNamespace

import torch
from torch import nn

from textvae.core.flows import attach_flow
from textvae.core.gaussian import kl_normal, kl_standard_normal, reparameterize
from textvae.core.latent import LatentModel, monte_carlo_kl_per_dim, posterior_kl


class _Standard(LatentModel):
    latent_dim = 3

    def __init__(self):
        super().__init__()
        self.decoder = nn.Linear(3, 2)


class _ShiftedPrior(_Standard):
    """p(z) = N(1, I): its own KL, which records the draw it was given."""

    def kl_divergence(self, batch, mu, logvar, z):
        self.seen = z
        return kl_normal(mu, logvar, torch.ones_like(mu), torch.zeros_like(logvar))


def _posterior():
    return torch.randn(4, 3), torch.randn(4, 3) * 0.3


def test_the_defaults_are_the_standard_normal_prior_and_the_decoder_submodule():
    model, (mu, logvar) = _Standard(), _posterior()
    assert not model.own_prior and _ShiftedPrior.own_prior
    assert torch.equal(posterior_kl(model, None, mu, logvar), kl_standard_normal(mu, logvar))
    assert model.decoder_modules() == [model.decoder]
    z = torch.randn(4, 2, 3)
    assert torch.allclose(model.log_prior(None, z), torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_an_own_prior_gets_the_first_draw_or_one_drawn_for_it():
    model, (mu, logvar) = _ShiftedPrior(), _posterior()
    z = torch.randn(4, 5, 3)
    posterior_kl(model, None, mu, logvar, z)
    assert torch.equal(model.seen, z[:, :1])
    torch.manual_seed(7)
    posterior_kl(model, None, mu, logvar)
    torch.manual_seed(7)
    assert torch.equal(model.seen, reparameterize(mu, logvar))  # a mixture's q(c|x) = p(c|z) needs a draw


def test_a_flow_posterior_takes_the_monte_carlo_estimate_when_given_its_draws():
    model, (mu, logvar) = _Standard(), _posterior()
    attach_flow(model, "planar", 2, 8)
    log_ratio = torch.randn(4, 6)
    estimate = posterior_kl(model, None, mu, logvar, torch.randn(4, 6, 3), log_ratio)
    assert torch.equal(estimate, monte_carlo_kl_per_dim(log_ratio, 3))
    assert torch.allclose(estimate.sum(-1), -log_ratio.mean(1))
    # without draws (z = mu in autoencoder pretraining) the base Gaussian's analytic KL
    assert torch.equal(posterior_kl(model, SimpleNamespace(), mu, logvar), kl_standard_normal(mu, logvar))
