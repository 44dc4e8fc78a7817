"""Normalizing flows on the Gaussian posterior: planar (Rezende & Mohamed 2015) and inverse autoregressive
(Kingma et al. 2016), and the one function every objective and estimator draws posterior samples with.

With a flow f = f_L o ... o f_1 on z_0 ~ N(mu, diag sigma^2):

    z_L = f(z_0),   log q(z_L|x) = log N(z_0; mu, sigma^2) - sum_l log |det df_l/dz_{l-1}|

The flow's parameters are global (shared by all inputs); the base Gaussian stays amortized by the
encoder, so SVI refinement of (mu, log sigma^2) works the same with or without a flow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textvae.core.gaussian import log_normal, reparameterize

PLANAR_MARGIN = 1e-3  # w.u_hat >= -1 + this margin, so that det = 1 + h'(.) w.u_hat >= the margin > 0


class PlanarFlow(nn.Module):
    """z' = z + u_hat tanh(w.z + b), with u_hat such that w.u_hat > -1 (invertible)."""

    def __init__(self, dim: int):
        super().__init__()
        self.u = nn.Parameter(torch.randn(dim) * 0.01)
        self.w = nn.Parameter(torch.randn(dim) * 0.01)
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> Tensor:
        """u moved along w so that w.u_hat = -1 + PLANAR_MARGIN + softplus(w.u) (Rezende & Mohamed 2015, App. A).

        Without the margin, softplus(w.u) underflows to 0 in fp32 once w.u < -17, and w.u_hat lands on -1 or
        just below (rounding): a Jacobian determinant of 0 or less, a map that is no longer invertible. fp32
        rounds w.u_hat by about 1e-7 |w| |u|: the margin holds while |w| |u| stays well under 1e4.
        Elementwise products and sums in the parameters' dtype, not a matmul, which autocast would run in
        bf16 (rounding w.u by 0.4%, more than the margin). -> [D]
        """
        wu = (self.w * self.u).sum()
        return self.u + (F.softplus(wu) - 1.0 + PLANAR_MARGIN - wu) * self.w / self.w.pow(2).sum().clamp_min(1e-12)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z: [..., D] -> z', log |det dz'/dz| [...]."""
        u_hat = self.u_hat()
        activation = torch.tanh(z @ self.w + self.b)  # [...]
        z_new = z + u_hat * activation.unsqueeze(-1)
        # det = 1 + h'(w.z + b) w.u_hat with h' = 1 - tanh^2 in [0, 1]: at least PLANAR_MARGIN, by u_hat's construction
        slope = 1.0 - activation.to(torch.promote_types(activation.dtype, torch.float32)).pow(2)
        return z_new, torch.log((1.0 + slope * (self.w * u_hat).sum()).clamp_min(1e-12))


class MaskedLinear(nn.Linear):
    def __init__(self, n_in: int, n_out: int, mask: Tensor):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class IAFLayer(nn.Module):
    """One inverse autoregressive flow step (Kingma et al. 2016, the numerically stable form):

        [m, s] = MADE(z),  sigma = sigmoid(s),  z' = sigma * z + (1 - sigma) * m,  log det = sum log sigma

    where m_i and s_i depend on z_j only for j before i in `order` (a permutation of the dimensions), so
    the Jacobian is triangular in that order.
    """

    def __init__(self, dim: int, hidden: int, order: Tensor):
        super().__init__()
        self.register_buffer("order", order.clone(), persistent=False)
        degree_in = torch.empty(dim, dtype=torch.long)
        degree_in[order] = torch.arange(dim)  # position of each input dimension in the order
        degree_hidden = torch.arange(hidden) % max(1, dim - 1)  # each hidden unit sees inputs of degree <= its own
        self.hidden = MaskedLinear(dim, hidden, degree_hidden[:, None] >= degree_in[None, :])
        mask_out = degree_in[:, None] > degree_hidden[None, :]  # output i sees hidden units of lower degree
        self.out = MaskedLinear(hidden, 2 * dim, torch.cat([mask_out, mask_out]))
        nn.init.zeros_(self.out.weight)  # start near the identity: m = 0, sigma = sigmoid(2) ~ 0.88
        with torch.no_grad():
            self.out.bias.zero_()
            self.out.bias[dim:] = 2.0

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self.out(F.elu(self.hidden(z))).chunk(2, dim=-1)
        log_sigma = F.logsigmoid(s.to(torch.promote_types(s.dtype, torch.float32)))
        sigma = log_sigma.exp().to(z.dtype)
        return sigma * z + (1.0 - sigma) * m, log_sigma.sum(-1)


class Flow(nn.Module):
    """A stack of flow layers; IAF layers alternate the order of the dimensions (forward, reversed)."""

    def __init__(self, kind: str, dim: int, layers: int, hidden: int):
        super().__init__()
        self.kind = kind
        if kind == "planar":
            self.layers = nn.ModuleList(PlanarFlow(dim) for _ in range(layers))
        elif kind == "iaf":
            forward, reverse = torch.arange(dim), torch.arange(dim).flip(0)
            self.layers = nn.ModuleList(
                IAFLayer(dim, hidden, forward if i % 2 == 0 else reverse) for i in range(layers)
            )
        else:
            raise ValueError(f"unknown flow {kind!r}")

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z_0: [..., D] -> z_L, sum of log |det| [...]."""
        wide = torch.promote_types(z.dtype, torch.float32)  # fp32 at least, also under bf16 autocast
        log_det = z.new_zeros(z.shape[:-1], dtype=wide)
        for layer in self.layers:
            z, step = layer(z)
            log_det = log_det + step.to(wide)
        return z, log_det


def attach_flow(model: nn.Module, kind: str, layers: int, hidden: int) -> None:
    """Give `model` a posterior flow (model.posterior_flow), or none for kind "none"."""
    if kind != "none" and layers > 0 and getattr(model, "latent_dim", 0):
        model.posterior_flow = Flow(kind, model.latent_dim, layers, hidden)


def sample_posterior(model: nn.Module, mu: Tensor, logvar: Tensor, num_samples: int = 1) -> tuple[Tensor, Tensor]:
    """K draws from q(z|x) and their log-density: z [B, K, D], log q(z|x) [B, K] (fp32).

    q is N(mu, diag exp(logvar)) pushed through the model's `posterior_flow` when it has one.
    """
    z = reparameterize(mu, logvar, num_samples)
    log_q = log_normal(z.float(), mu.float().unsqueeze(1), logvar.float().unsqueeze(1))
    flow = getattr(model, "posterior_flow", None)
    if flow is not None:
        z, log_det = flow(z)
        log_q = log_q - log_det
    return z, log_q
