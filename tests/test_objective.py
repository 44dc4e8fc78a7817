from types import SimpleNamespace

import pytest
import torch

from textvae import config as config_lib
from textvae.core.latent import LatentModel
from textvae.core.objective import ElboSettings, Objective, elbo, free_bits_kl


class Toy(LatentModel):
    """A model whose posterior is set directly, to test the objective alone."""

    def __init__(self, mu, logvar):
        super().__init__()
        self.latent_dim = mu.shape[1]
        self.mu = torch.nn.Parameter(mu)
        self.logvar = torch.nn.Parameter(logvar)

    def encode(self, batch):
        return self.mu, self.logvar

    def log_likelihood(self, batch, z):
        return -(z - batch.x.unsqueeze(1)).pow(2).sum(-1)


def _model():
    mu = torch.tensor([[0.1, 2.0], [0.0, -1.0]])
    return Toy(mu, torch.zeros(2, 2)), SimpleNamespace(x=torch.zeros(2, 2))


def test_free_bits_change_the_objective_not_the_reported_kl():
    model, batch = _model()
    torch.manual_seed(0)
    plain = elbo(model, batch, ElboSettings(kl_weight=1.0))
    torch.manual_seed(0)
    clipped = elbo(model, batch, ElboSettings(kl_weight=1.0, free_bits=1.0, free_bits_mode="dim"))
    assert torch.equal(plain.kl, clipped.kl)  # reported KL is the true one
    assert torch.equal(plain.rec, clipped.rec)
    # dim 0 has batch-mean KL 0.0025 < 1, so it is lifted to 1; dim 1 has 1.25 > 1 and stays.
    assert float((clipped.loss - plain.loss).detach()) == pytest.approx(1.0 - 0.0025, abs=1e-5)


def test_free_bits_dim_gives_no_kl_gradient_below_the_threshold():
    mu = torch.tensor([[0.1], [-0.1]], requires_grad=True)
    logvar = torch.zeros(2, 1, requires_grad=True)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)
    free_bits_kl(kl, 1.0, "dim").backward()
    assert torch.equal(mu.grad, torch.zeros_like(mu))


def test_free_bits_example_floors_each_dimension_of_each_sentence():
    # Li et al. 2019's fb=2: a sentence's dimension below the floor counts as the floor and gets no gradient
    kl = torch.tensor([[0.1, 0.5], [0.3, 0.05]], requires_grad=True)
    value = free_bits_kl(kl, 0.2, "example")
    assert value.item() == pytest.approx(((0.2 + 0.5) + (0.3 + 0.2)) / 2)  # 0.6; "dim" gives 0.2 + 0.275
    assert free_bits_kl(kl, 0.2, "dim").item() == pytest.approx(0.2 + 0.275)
    value.backward()
    assert torch.equal(kl.grad, torch.tensor([[0.0, 0.5], [0.5, 0.0]]))


def test_free_bits_vector_is_a_target_on_the_total():
    kl = torch.tensor([[0.2, 0.3], [0.4, 0.1]])  # per-example totals 0.5 and 0.5
    assert float(free_bits_kl(kl, 2.0, "vector")) == pytest.approx(2.0)
    assert float(free_bits_kl(kl, 0.1, "vector")) == pytest.approx(0.5)
    assert float(free_bits_kl(kl, 0.25, "dim")) == pytest.approx(0.3 + 0.25)


def test_kl_weight_scales_only_the_kl_term():
    model, batch = _model()
    torch.manual_seed(0)
    zero = elbo(model, batch, ElboSettings(kl_weight=0.0))
    torch.manual_seed(0)
    half = elbo(model, batch, ElboSettings(kl_weight=0.5))
    assert float((half.loss - zero.loss).detach()) == pytest.approx(0.5 * float(zero.kl.detach().mean()), rel=1e-5)


def test_pretraining_can_draw_z_from_the_posterior_at_kl_weight_zero():
    # Li et al.'s text_beta.py --beta 0: the autoencoder is a VAE with the KL weight at 0, z drawn from q(z|x)
    config = config_lib.from_dict({"objective": {"pretrain_steps": 4, "pretrain_sample": True, "free_bits": 0.5},
                                   "train": {"max_steps": 100}})  # fmt: skip
    model, batch = _model()
    objective = Objective(model, config)
    assert objective.settings(3) == ElboSettings(kl_weight=0.0, free_bits=0.5, sample=True)
    torch.manual_seed(0)
    out = objective(batch, 3)
    torch.manual_seed(0)
    drawn = elbo(model, batch, ElboSettings(kl_weight=0.0, free_bits=0.5, sample=True))
    assert torch.equal(out["loss"], drawn.rec.mean())  # no KL term, the reconstruction of a drawn z
    deterministic = elbo(model, batch, ElboSettings(kl_weight=0.0, sample=False))
    assert not torch.equal(out["rec"], deterministic.rec)


def test_the_deterministic_autoencoder_decodes_mu_through_the_flow():
    # the decoder reads the flow's output after pretraining: pretraining must fit it to that code, not to mu
    model, batch = _model()
    model.posterior_flow = lambda z: (2.0 * z + 1.0, z.new_zeros(z.shape[:2]))
    out = elbo(model, batch, ElboSettings(kl_weight=0.0, sample=False))
    expected = (2.0 * model.mu + 1.0).pow(2).sum(-1)  # -log p(x|z) at z = f(mu), x = 0
    assert torch.allclose(out.rec, expected)


def test_the_objective_asks_its_schedule_for_the_weight_after_pretraining():
    config = config_lib.from_dict({"objective": {"kl_schedule": "linear", "kl_start": 0.0, "warmup_steps": 10,
                                                 "pretrain_steps": 4, "free_bits": 0.5, "bow_weight": 0.0},
                                   "train": {"max_steps": 100}})  # fmt: skip
    model, batch = _model()
    objective = Objective(model, config)
    assert objective.settings(3) == ElboSettings(kl_weight=0.0, free_bits=0.5, sample=False)  # the autoencoder
    # the schedule counts from the end of pretraining: step 4 is its step 0, step 9 its step 5 (half way)
    assert objective.settings(4).kl_weight == 0.0 and objective.settings(4).sample
    assert objective.settings(9).kl_weight == pytest.approx(0.5) and objective.settings(14).kl_weight == 1.0
    torch.manual_seed(0)
    out = objective(batch, 9)
    torch.manual_seed(0)
    assert torch.equal(out["loss"], elbo(model, batch, objective.settings(9)).loss)
    assert set(out) == {"loss", "rec", "kl"}
