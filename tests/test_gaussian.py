import math

import torch
from torch.distributions import Normal, kl_divergence

from textvae.core.gaussian import (
    bound_logvar,
    gaussian_entropy,
    kl_normal,
    kl_standard_normal,
    log_normal,
    log_standard_normal,
    reparameterize,
)


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7) * 2, torch.randn(5, 7)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    assert torch.allclose(kl_standard_normal(mu, logvar), expected, atol=1e-5)


def test_kl_between_two_gaussians_matches_torch_distributions():
    torch.manual_seed(1)
    mu, logvar, mu_p, logvar_p = (torch.randn(4, 3) for _ in range(4))
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(mu_p, (0.5 * logvar_p).exp()))
    assert torch.allclose(kl_normal(mu, logvar, mu_p, logvar_p), expected, atol=1e-5)


def test_kl_is_zero_at_the_prior():
    assert torch.allclose(kl_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2, 3))


def test_log_densities_match_torch_distributions():
    torch.manual_seed(1)
    z, mu, logvar = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    expected = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    assert torch.allclose(log_normal(z, mu, logvar), expected, atol=1e-5)
    assert torch.allclose(log_standard_normal(z), Normal(0.0, 1.0).log_prob(z).sum(-1), atol=1e-5)
    entropy = Normal(mu, torch.exp(0.5 * logvar)).entropy().sum(-1)
    assert torch.allclose(gaussian_entropy(logvar), entropy, atol=1e-5)


def test_reparameterize_has_the_right_moments_and_gradients():
    torch.manual_seed(2)
    mu = torch.tensor([[1.0, -2.0]], requires_grad=True)
    logvar = torch.tensor([[0.0, math.log(4.0)]], requires_grad=True)
    z = reparameterize(mu, logvar, 20000)
    assert z.shape == (1, 20000, 2)
    assert torch.allclose(z.mean(1), mu.detach(), atol=0.05)
    assert torch.allclose(z.std(1), torch.tensor([[1.0, 2.0]]), atol=0.05)
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None


def test_bounded_logvar_keeps_kl_finite():
    logvar = bound_logvar(torch.tensor([[1e4, -1e4]]))
    assert torch.isfinite(kl_standard_normal(torch.zeros(1, 2), logvar)).all()
