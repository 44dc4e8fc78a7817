"""Image models on the shared ELBO: a Bernoulli VAE (MLP or conv), a CVAE (label or quadrants), VaDE.

Each is a textvae.core.latent.LatentModel: `encode(batch)` and `log_likelihood(batch, z)`; the CVAE with a
conditional prior and VaDE's mixture prior override `log_prior(batch, z)` and `kl_divergence(...)`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from image_baselines.data import PIXELS, SIDE, ImageBatch, quadrant_mask
from textvae.config import ModelConfig, hidden_sizes
from textvae.core.flows import attach_flow
from textvae.core.gaussian import bound_logvar, kl_normal, log_normal
from textvae.core.latent import LatentModel

NUM_CLASSES = 10


NARROW_POSTERIOR = 0.01  # initial posterior variance after pretraining, as a fraction of the code's variance


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers of the given widths, each followed by the activation."""
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), act()]
    return nn.Sequential(*layers)


def bernoulli_log_prob(logits: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)) summed over pixels (only where mask is 1). [..., 784] -> [...]."""
    terms = x * logits.float() - F.softplus(logits.float())
    return (terms * mask if mask is not None else terms).sum(-1)


class ConvEncoder(nn.Module):
    """28x28 -> 14x14x32 -> 7x7x64 -> features (a small DCGAN-style encoder)."""

    def __init__(self, extra: int, out: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU())
        self.fc = nn.Sequential(nn.Linear(64 * 7 * 7 + extra, out), nn.ReLU())

    def forward(self, x: Tensor, extra: Tensor | None) -> Tensor:
        h = self.conv(x.reshape(-1, 1, SIDE, SIDE)).flatten(1)
        return self.fc(torch.cat([h, extra], -1) if extra is not None else h)


class ConvDecoder(nn.Module):
    """features -> 7x7x64 -> 14x14x32 -> 28x28 logits."""

    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 64 * 7 * 7), nn.ReLU())
        self.deconv = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(32, 1, 4, 2, 1))

    def forward(self, h: Tensor) -> Tensor:
        lead = h.shape[:-1]
        out = self.deconv(self.fc(h).reshape(-1, 64, 7, 7))
        return out.reshape(*lead, PIXELS)


class ImageVAE(LatentModel):
    """q(z|x, c) = N(mu, diag sigma^2) and a Bernoulli p(x|z, c), with an optional condition c (CVAE).

    Burda et al.'s MNIST model is the MLP 784-200-200-50 with tanh (hidden_size 200, num_layers 2).
    The condition (`cond_dim` > 0) is concatenated to the encoder's input and the decoder's input.
    """

    def __init__(self, config: ModelConfig, cond_dim: int = 0):
        super().__init__()
        self.latent_dim = config.latent_dim
        self.cond_dim = cond_dim
        sizes = hidden_sizes(config)
        if config.architecture == "conv":
            self.encoder_body: nn.Module = ConvEncoder(cond_dim, sizes[-1])
            self.decoder_body: nn.Module = ConvDecoder(config.latent_dim + cond_dim, sizes[-1])
            self.output = nn.Identity()
        else:
            self.encoder_body = mlp([PIXELS + cond_dim, *sizes], config.activation)
            self.decoder_body = mlp([config.latent_dim + cond_dim, *reversed(sizes)], config.activation)
            self.output = nn.Linear(sizes[0], PIXELS)
        self.conv = config.architecture == "conv"
        self.posterior = nn.Linear(sizes[-1], 2 * config.latent_dim)
        self.pretrain_mse = config.pretrain_loss == "mse"
        self.pretrain_dropout = config.pretrain_dropout
        self.xavier = config.init == "xavier"
        self.init_weights()

    def init_weights(self) -> None:
        """model.init xavier: Glorot uniform weights, zero biases (a subclass calls it again for its own layers)."""
        if self.xavier:
            for layer in self.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)

    def condition(self, batch: ImageBatch) -> Tensor | None:
        return None

    def decoder_modules(self) -> list[nn.Module]:
        """p(x|z)'s layers (for the decoder reset and aggressive training)."""
        return [self.decoder_body, self.output]

    def encode(self, batch: ImageBatch) -> tuple[Tensor, Tensor]:
        x, cond = batch.x, self.condition(batch)
        if self.conv:
            h = self.encoder_body(x, cond)
        else:
            h = self.encoder_body(torch.cat([x, cond], -1) if cond is not None else x)
        # fp32 under bf16 autocast, as in the text models: z drawn in bf16 near sigma = 0.01 takes few values
        mu, logvar = self.posterior(h).float().chunk(2, dim=-1)
        return mu, bound_logvar(logvar)

    def decode_logits(self, z: Tensor, cond: Tensor | None) -> Tensor:
        """Pixel logits. z: [B, K, D] -> [B, K, 784] (cond [B, C] is shared by the K samples)."""
        if cond is not None:
            z = torch.cat([z, cond.unsqueeze(1).expand(-1, z.shape[1], -1).to(z.dtype)], -1)
        return self.output(self.decoder_body(z))

    def log_likelihood(self, batch: ImageBatch, z: Tensor) -> Tensor:
        return bernoulli_log_prob(self.decode_logits(z, self.condition(batch)), batch.x.unsqueeze(1))

    @torch.no_grad()
    def output_to_logits(self, scale: float = 10.0) -> None:
        """After squared-error pretraining the output layer predicts grey levels in [0, 1]; turn them into
        Bernoulli logits scale * (level - 1/2) (a grey level 0 -> p = 0.007, 1 -> p = 0.993), so the VAE phase
        starts from a decoder that already reconstructs instead of one whose every pixel reads p >= 0.5."""
        self.output.weight.mul_(scale)
        self.output.bias.sub_(0.5).mul_(scale)

    @torch.no_grad()
    def narrow_posterior(self, code_variance: Tensor, fraction: float = NARROW_POSTERIOR) -> None:
        """After pretraining with z = mu: start q(z|x) at log sigma_d^2 = log(fraction * Var[mu_d]) for every x.

        The log-variance half of the posterior layer gets no gradient while z = mu. Left as initialized, its
        sigma is about 1, twice the spread of the whole pretrained code on MNIST (std about 0.5): the first
        VAE-phase steps then decode noise (reconstruction 8,000 nats instead of 620 from z = mu) and scramble
        the clusters the mixture prior was just fitted on. code_variance: [D], over the training means."""
        d = self.latent_dim
        self.posterior.weight[d:].zero_()
        self.posterior.bias[d:].copy_((fraction * code_variance.to(self.posterior.bias)).clamp_min(1e-8).log())

    def autoencoder_encode(self, batch: ImageBatch) -> tuple[Tensor, Tensor]:
        """The pretraining phase's encoder: a denoising autoencoder's (DEC), which sees the image with
        model.pretrain_dropout of its pixels dropped (and the rest scaled up) while it trains, the clean one in
        evaluation; the reconstruction target stays the clean image."""
        if self.training and self.pretrain_dropout > 0:
            batch = dataclasses.replace(batch, x=F.dropout(batch.x, self.pretrain_dropout))
        return self.encode(batch)

    def autoencoder_log_likelihood(self, batch: ImageBatch, z: Tensor) -> Tensor:
        """The pretraining phase's reconstruction term: with model.pretrain_loss mse, -1/2 the squared error
        between the decoder's output layer (linear, before the sigmoid) and the image, as DEC's autoencoder."""
        if not self.pretrain_mse:
            return self.log_likelihood(batch, z)
        out = self.decode_logits(z, self.condition(batch))
        return -0.5 * (out - batch.x.unsqueeze(1)).pow(2).sum(-1)


class LabelCVAE(ImageVAE):
    """Conditional VAE (Sohn et al. 2015) on the digit label: one-hot y into encoder and decoder, p(z) = N(0, I)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config, cond_dim=NUM_CLASSES)

    def condition(self, batch: ImageBatch) -> Tensor:
        return F.one_hot(batch.y, NUM_CLASSES).float()

    @torch.no_grad()
    def sample(self, labels: Tensor) -> Tensor:
        """Pixel probabilities of one image per label. labels: [N] -> [N, 784]."""
        z = torch.randn(labels.shape[0], 1, self.latent_dim, device=labels.device)
        cond = F.one_hot(labels, NUM_CLASSES).float()
        return torch.sigmoid(self.decode_logits(z, cond))[:, 0]


class QuadrantCVAE(ImageVAE):
    """Sohn et al.'s structured-output CVAE: predict the missing quadrants y of a digit from the given ones x.

    Recognition q(z|x, y) reads the whole image; the prior network p(z|x) and the generation network
    p(y|x, z) read only the given quadrants (missing pixels set to -1, as in Pyro's example). The
    likelihood counts the missing pixels only, so the importance-weighted `nll` is -log p(y|x).
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config, cond_dim=PIXELS)
        self.register_buffer("observed", quadrant_mask(config.quadrants_given), persistent=False)
        self.prior_body = mlp([PIXELS, *hidden_sizes(config)], config.activation)
        self.prior_head = nn.Linear(hidden_sizes(config)[-1], 2 * config.latent_dim)
        self.init_weights()  # the prior network too

    def condition(self, batch: ImageBatch) -> Tensor:
        return batch.x * self.observed - (1.0 - self.observed)

    def prior(self, batch: ImageBatch) -> tuple[Tensor, Tensor]:
        mu, logvar = self.prior_head(self.prior_body(self.condition(batch))).chunk(2, dim=-1)
        return mu, bound_logvar(logvar)

    def log_likelihood(self, batch: ImageBatch, z: Tensor) -> Tensor:
        logits = self.decode_logits(z, self.condition(batch))
        return bernoulli_log_prob(logits, batch.x.unsqueeze(1), 1.0 - self.observed)

    def log_prior(self, batch: ImageBatch, z: Tensor) -> Tensor:
        mu_p, logvar_p = self.prior(batch)
        return log_normal(z.float(), mu_p.float().unsqueeze(1), logvar_p.float().unsqueeze(1))

    def kl_divergence(self, batch: ImageBatch, mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
        """KL(N(mu, s^2) || N(mu_p, s_p^2)) per dimension, analytic."""
        mu_p, logvar_p = self.prior(batch)
        return kl_normal(mu, logvar, mu_p.float(), logvar_p.float())

    @torch.no_grad()
    def complete(self, batch: ImageBatch) -> Tensor:
        """The given quadrants with the missing ones predicted from the prior mean. -> [B, 784] in [0, 1]."""
        mu_p, _ = self.prior(batch)
        probs = torch.sigmoid(self.decode_logits(mu_p.unsqueeze(1), self.condition(batch)))[:, 0]
        return batch.x * self.observed + probs * (1.0 - self.observed)


class VaDE(ImageVAE):
    """Variational Deep Embedding (Jiang et al. 2016): a VAE whose prior is a Gaussian mixture.

    p(c) = softmax(pi_logits), p(z|c) = N(mu_c, Sigma_c), Bernoulli p(x|z); q(z|x) is the usual diagonal
    Gaussian and q(c|x) = p(c|z) at a draw z ~ q(z|x), as in the paper. Sigma_c is diagonal, exp(logvar_c),
    as in the paper, or with model.mixture_covariance: full, L_c L_c^T for a lower-triangular L_c whose
    diagonal is exp(log_diag_c / 2) and whose strictly lower part is tril_c. The mixture is initialized by
    `init_mixture` (a GMM of the same kind fitted on the pretrained posterior means).
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        k, d = config.num_clusters, config.latent_dim
        self.full = config.mixture_covariance == "full"
        self.mixture_init = config.mixture_init
        self.pi_logits = nn.Parameter(torch.zeros(k))
        self.mu_c = nn.Parameter(torch.randn(k, d))
        self.logvar_c = nn.Parameter(torch.zeros(k, d))  # full: log of L_c's squared diagonal
        if self.full:
            self.tril_c = nn.Parameter(torch.zeros(k, d, d))  # only the strictly lower triangle is used

    def init_mixture(self, weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        """weights [K], means [K, D], and variances [K, D] (diag) or covariance matrices [K, D, D] (full)."""
        with torch.no_grad():
            self.pi_logits.copy_(weights.clamp_min(1e-8).log())
            self.mu_c.copy_(means)
            if self.full:
                chol = torch.linalg.cholesky(covariances.double()).float()
                self.logvar_c.copy_(2 * chol.diagonal(dim1=-2, dim2=-1).log())
                self.tril_c.copy_(chol.tril(-1))
            else:
                self.logvar_c.copy_(covariances.clamp_min(1e-8).log())

    def _scale_tril(self) -> Tensor:
        """L_c, [K, D, D] (full covariance only)."""
        diagonal = torch.exp(0.5 * bound_logvar(self.logvar_c.float()))
        return self.tril_c.float().tril(-1) + torch.diag_embed(diagonal)

    def _log_joint_c(self, z: Tensor) -> Tensor:
        """log p(c) + log p(z|c). z: [..., D] -> [..., K]."""
        log_pc = torch.log_softmax(self.pi_logits.float(), 0)
        logvar_c = bound_logvar(self.logvar_c.float())
        if not self.full:
            return log_pc + log_normal(z.float().unsqueeze(-2), self.mu_c.float(), logvar_c)
        diff = z.float().unsqueeze(-2) - self.mu_c.float()  # [..., K, D]
        white = torch.linalg.solve_triangular(self._scale_tril(), diff.unsqueeze(-1), upper=False).squeeze(-1)
        d = z.shape[-1]
        return log_pc - 0.5 * (d * math.log(2 * math.pi) + logvar_c.sum(-1) + white.pow(2).sum(-1))

    def responsibilities(self, z: Tensor) -> Tensor:
        """p(c|z). z: [..., D] -> [..., K]."""
        return torch.softmax(self._log_joint_c(z), -1)

    def log_prior(self, batch: ImageBatch, z: Tensor) -> Tensor:
        return torch.logsumexp(self._log_joint_c(z), -1)

    def kl_divergence(self, batch: ImageBatch, mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
        """KL(q(z|x) q(c|x) || p(z, c)) with q(c|x) = p(c|z), as [B, D] terms summing to it.

        Diagonal: per dimension 0.5 sum_c gamma_c (logvar_cd + (s_d^2 + (mu_d - mu_cd)^2) / s_cd^2)
        - 0.5 (1 + log s_d^2). Full: 0.5 sum_c gamma_c (log det Sigma_c + tr(Sigma_c^-1 S) + |L_c^-1 (mu - mu_c)|^2)
        - 0.5 sum_d (1 + log s_d^2), S = diag(s^2), shared equally among the dimensions (no per-dimension
        split exists), as is the categorical part sum_c gamma_c log(gamma_c / pi_c).
        """
        gamma = self.responsibilities(z[:, 0])  # [B, K]
        logvar_c = bound_logvar(self.logvar_c.float())  # [K, D]
        d = mu.shape[-1]
        if self.full:
            inverse = torch.linalg.solve_triangular(self._scale_tril(), torch.eye(d, device=mu.device), upper=False)
            trace = (inverse.pow(2) @ logvar.float().exp().unsqueeze(-1).unsqueeze(1)).squeeze(-1).sum(-1)  # [B, K]
            white = (inverse @ (mu.float().unsqueeze(1) - self.mu_c.float()).unsqueeze(-1)).squeeze(-1)  # [B, K, D]
            per_cluster = logvar_c.sum(-1) + trace + white.pow(2).sum(-1)  # [B, K]
            total = 0.5 * (gamma * per_cluster).sum(-1) - 0.5 * (1.0 + logvar.float()).sum(-1)
            gaussian = total.unsqueeze(-1).expand(-1, d) / d
        else:
            per_cluster = logvar_c + (logvar.exp().unsqueeze(1) + (mu.unsqueeze(1) - self.mu_c.float()).pow(2)) * (
                torch.exp(-logvar_c)
            )  # [B, K, D]
            gaussian = 0.5 * (gamma.unsqueeze(-1) * per_cluster).sum(1) - 0.5 * (1.0 + logvar)
        log_pc = torch.log_softmax(self.pi_logits.float(), 0)
        categorical = (gamma * (torch.log(gamma.clamp_min(1e-12)) - log_pc)).sum(-1)
        return gaussian + categorical.unsqueeze(-1) / d

    @torch.no_grad()
    def cluster(self, batch: ImageBatch) -> Tensor:
        """The most probable component of each image, argmax_c p(c|z = mu). -> [B]."""
        mu, _ = self.encode(batch)
        return self._log_joint_c(mu).argmax(-1)

    @torch.no_grad()
    def sample_cluster(self, c: int, n: int) -> Tensor:
        """Pixel probabilities of n images generated from component c. -> [n, 784]."""
        noise = torch.randn(n, self.latent_dim, device=self.mu_c.device)
        if self.full:
            z = self.mu_c[c] + noise @ self._scale_tril()[c].T
        else:
            z = self.mu_c[c] + torch.exp(0.5 * bound_logvar(self.logvar_c[c])) * noise
        return torch.sigmoid(self.decode_logits(z.unsqueeze(1), None))[:, 0]


def build_image_model(config: ModelConfig) -> nn.Module:
    if config.name == "vade":
        model: nn.Module = VaDE(config)
    elif config.name == "image_cvae":
        model = QuadrantCVAE(config) if config.condition == "quadrants" else LabelCVAE(config)
    else:
        model = ImageVAE(config)
    attach_flow(model, config.flow, config.flow_layers, config.flow_hidden)
    return model
