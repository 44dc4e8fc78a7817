"""The importance-weighted estimator against a linear-Gaussian model whose log p(x) is known."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch.distributions import MultivariateNormal

from textvae.core.estimators import active_units, iw_log_likelihood, iw_log_weights, mutual_information
from textvae.core.gaussian import log_normal
from textvae.core.latent import LatentModel


class LinearGaussian(LatentModel):
    """z ~ N(0, I_D), x | z ~ N(W z + b, s^2 I_P); q(z|x) = the exact posterior, shifted and widened."""

    def __init__(self, latent_dim=2, data_dim=3, noise=0.5, shift=0.0, widen=0.0):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.latent_dim = latent_dim
        self.W = torch.randn(data_dim, latent_dim, generator=generator, dtype=torch.float64)
        self.b = torch.randn(data_dim, generator=generator, dtype=torch.float64)
        self.noise, self.shift, self.widen = noise, shift, widen

    def log_marginal(self, x):
        cov = self.W @ self.W.T + self.noise**2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        return MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def encode(self, batch):
        # Exact posterior: precision A = I + W^T W / s^2, mean A^-1 W^T (x - b) / s^2. Diagonal only if
        # W^T W is diagonal, so we use its diagonal part: an approximate q, as in a real VAE.
        precision = torch.eye(self.latent_dim, dtype=torch.float64) + self.W.T @ self.W / self.noise**2
        cov = torch.linalg.inv(precision)
        mu = (batch.x - self.b) @ self.W @ cov.T / self.noise**2 + self.shift
        logvar = torch.log(torch.diagonal(cov)).expand_as(mu) + self.widen
        return mu, logvar

    def log_likelihood(self, batch, z):
        mean = z @ self.W.T + self.b  # [B, K, P]
        logvar = torch.full_like(mean, 2 * math.log(self.noise))
        return log_normal(batch.x.unsqueeze(1), mean, logvar)


def _estimate(model, x, samples, chunk=64):
    batch = SimpleNamespace(x=x)
    mu, logvar = model.encode(batch)
    log_w, _, _ = iw_log_weights(model, batch, mu, logvar, samples, chunk)
    return iw_log_likelihood(log_w)


def test_iw_bound_approaches_exact_log_likelihood_and_stays_below():
    torch.manual_seed(0)
    model = LinearGaussian(shift=0.5, widen=0.7)
    x = torch.randn(6, 3, dtype=torch.float64) * 2
    exact = model.log_marginal(x)
    gaps = []
    for samples in (1, 10, 100, 5000):
        repeats = torch.stack([_estimate(model, x, samples) for _ in range(30 if samples < 5000 else 3)])
        mean = repeats.mean(0)
        # In expectation the estimate is a lower bound (Burda et al. 2015, Theorem 1).
        assert (mean <= exact + 3 * repeats.std(0) / math.sqrt(repeats.shape[0]) + 1e-6).all()
        gaps.append(float((exact - mean).mean()))
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] >= -0.01  # the bound tightens monotonically as K grows
    assert gaps[0] > 0.05  # the K=1 ELBO is visibly loose for this q
    assert gaps[3] < 0.02  # and K=5000 is close


def test_iw_estimate_is_exact_with_the_true_posterior():
    torch.manual_seed(1)
    model = LinearGaussian(latent_dim=1, data_dim=1)  # a 1-d posterior is diagonal, hence exact
    x = torch.randn(4, 1, dtype=torch.float64)
    assert torch.allclose(_estimate(model, x, 3), model.log_marginal(x).float(), atol=1e-4)


def test_chunking_draws_every_sample_and_does_not_change_the_estimate():
    model = LinearGaussian(shift=0.3)
    x = torch.randn(3, 3, dtype=torch.float64)
    batch = SimpleNamespace(x=x)
    mu, logvar = model.encode(batch)
    for chunk in (1, 7, 49, 50, 64):  # 50 = 7 * 7 + 1: a last chunk of one sample
        torch.manual_seed(5)
        terms = iw_log_weights(model, batch, mu, logvar, 50, chunk)
        assert all(t.shape == (3, 50) for t in terms), chunk  # none dropped, none repeated
        assert all(len(set(row.tolist())) == 50 for row in terms[0]), chunk  # 50 distinct draws per example
        assert torch.allclose(terms[0], terms[1] + terms[2])
    # the same distribution of weights in chunks of 7 as in one pass: means within 4 standard errors
    torch.manual_seed(6)
    chunked = iw_log_weights(model, batch, mu, logvar, 4000, 7)[0]
    whole = iw_log_weights(model, batch, mu, logvar, 4000, 4000)[0]
    error = (chunked.var(1) / 4000 + whole.var(1) / 4000).sqrt()
    assert ((chunked.mean(1) - whole.mean(1)).abs() < 4 * error).all()


@pytest.mark.parametrize("ratio, spread", [(0.02, 0.004), (0.2, 0.012), (3.0, 0.024)])
def test_mutual_information_of_a_gaussian_channel_matches_the_closed_form(ratio, spread):
    # x ~ N(0, ratio I_2), q(z|x) = N(x, I_2): I(x; z) = 2 * log(1 + ratio) / 2 nats (0.020, 0.18, 1.39), far
    # under log N = 8.0, where the estimator is unbiased. `spread`: its standard deviation over 20 seeds at this N;
    # three of them still tell 0.020 nats from nothing.
    torch.manual_seed(0)
    x = torch.randn(3000, 2) * math.sqrt(ratio)
    assert mutual_information(x, torch.zeros(3000, 2)) == pytest.approx(math.log1p(ratio), abs=3 * spread)


def test_mutual_information_of_well_separated_posteriors_is_log_n():
    # N points far apart with tiny variance: q(z) is a mixture of N spikes, so I = log N.
    torch.manual_seed(0)
    mu = torch.arange(50, dtype=torch.float32).unsqueeze(1) * 10
    logvar = torch.full((50, 1), -10.0)
    assert mutual_information(mu, logvar, chunk=7) == pytest.approx(math.log(50), abs=1e-3)


def test_active_units_counts_dimensions_with_varying_means():
    torch.manual_seed(0)
    mu = torch.randn(500, 4) * torch.tensor([1.0, 0.5, 0.05, 0.0])
    assert active_units(mu) == 2
    assert active_units(mu, threshold=0.001) == 3
