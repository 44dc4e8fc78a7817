"""The encoder refit after training (train.refit_encoder_steps, core/refit.py): against a linear Gaussian model,
whose log p(x) and best Gaussian posterior are closed forms, and end to end on the tiny config."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from textvae import config as config_lib
from textvae.cli import main
from textvae.core.checkpoint import save_checkpoint
from textvae.core.gaps import refine
from textvae.core.latent import LatentModel
from textvae.core.objective import elbo
from textvae.core.refit import refit_encoder, refit_modes, refit_step, restore_trained_best
from textvae.core.remedies import split_parameters
from textvae.data.batching import TextBatch
from textvae.dispatch import train
from textvae.errors import UserError
from textvae.models import build_text_model

NOISE = 0.5  # the decoder's fixed standard deviation


class LinearGaussian(LatentModel):
    """p(z) = N(0, I), p(x|z) = N(W z + b, NOISE^2 I); q(z|x) = N(A x + c, diag exp(s)), with dropout on the
    decoder's mean (off when evaluated) and batch norm on the encoder's input."""

    def __init__(self, x_dim: int = 6, z_dim: int = 2):
        super().__init__()
        self.latent_dim = z_dim
        self.to_mu = nn.Sequential(nn.BatchNorm1d(x_dim, affine=False), nn.Linear(x_dim, z_dim))
        self.logvar = nn.Parameter(torch.zeros(z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim, x_dim), nn.Dropout(0.5))

    def encode(self, batch):
        mu = self.to_mu(batch.x)
        return mu, self.logvar.expand_as(mu)

    def log_likelihood(self, batch, z):
        mean = self.decoder(z)  # [B, K, X]
        return (-0.5 * ((batch.x.unsqueeze(1) - mean) / NOISE) ** 2 - math.log(NOISE * math.sqrt(2 * math.pi))).sum(-1)


@dataclass
class Batch:
    x: torch.Tensor

    def to(self, device):
        return self

    @property
    def num_tokens(self) -> int:
        return self.x.shape[0]


class Data:
    """A BatchSource over fixed rows (each epoch shuffled by its own seed)."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def plan(self, epoch, batch_size, max_tokens=0, seed=0):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def collate(self, indices):
        return Batch(self.x[indices])


def exact_log_px(model: LinearGaussian, x: torch.Tensor) -> torch.Tensor:
    """log N(x; b, W W^T + NOISE^2 I), the model's marginal likelihood."""
    weight, bias = model.decoder[0].weight, model.decoder[0].bias
    cov = weight @ weight.T + NOISE**2 * torch.eye(len(bias), dtype=x.dtype)
    return torch.distributions.MultivariateNormal(bias, cov).log_prob(x)


def mean_elbo(model: nn.Module, x: torch.Tensor, samples: int = 200) -> float:
    """The ELBO per row of the model as evaluated, averaged over `samples` draws of z."""
    model.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        return float(sum(-elbo(model, Batch(x)).loss for _ in range(samples)) / samples)


def trained_run(run_dir: Path, model: LinearGaussian, best_nelbo: float, step: int = 40) -> None:
    """A run directory as training leaves it: last.pt and best.pt (position, clock, weights)."""
    state = {"model": model.state_dict(), "position": {"step": step, "epoch": 3, "best": best_nelbo},
             "seconds": 12.5}  # fmt: skip
    save_checkpoint(state, run_dir / "checkpoints" / "last.pt")
    save_checkpoint(state, run_dir / "checkpoints" / "best.pt")


def config(steps: int, lr: float = 0.05, **train_keys) -> config_lib.Config:
    keys = {"refit_encoder_steps": steps, "refit_encoder_lr": lr, "eval_every": 100, "batch_size": 64,
            "log_every": 50, "seed": 0, **train_keys}  # fmt: skip
    return config_lib.from_dict({"train": keys, "optim": {"grad_clip": 0.0}})


@pytest.fixture
def setting(tmp_path):
    torch.manual_seed(0)
    model = LinearGaussian().double()
    with torch.no_grad():
        model.decoder[0].weight.copy_(torch.randn(6, 2, dtype=torch.float64))
        x = (torch.randn(512, 2, dtype=torch.float64) @ model.decoder[0].weight.T + model.decoder[0].bias
             + NOISE * torch.randn(512, 6, dtype=torch.float64))  # fmt: skip
    trained_run(tmp_path, model, best_nelbo=-mean_elbo(model, x))
    return model, x, tmp_path


def test_the_refit_closes_the_gap_to_the_closed_form_and_leaves_the_decoder(setting):
    model, x, run_dir = setting
    decoder = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    with torch.no_grad():
        log_px = float(exact_log_px(model, x).mean())
    before = mean_elbo(model, x)  # an untrained encoder: a loose bound

    def evaluate(m):
        return {"nelbo": -mean_elbo(m, x), "nll": -log_px}

    metrics = refit_encoder(model, Data(x), evaluate, config(1500, lr=0.02), run_dir, torch.device("cpu"))
    after = mean_elbo(model, x)
    # The exact posterior is N(m(x), L^-1) with precision L = I + W^T W / NOISE^2 for every x, and m affine in x; the
    # best diagonal q (the encoder's family) has that mean and variances 1 / L_ii, and its ELBO falls short of
    # log p(x) by KL(q || posterior) = (sum_i log L_ii - log det L) / 2 (up to the Monte-Carlo noise of 200 draws)
    weight = model.decoder[0].weight.detach()
    precision = torch.eye(2, dtype=torch.float64) + weight.T @ weight / NOISE**2
    optimum = log_px - 0.5 * float(torch.log(torch.diagonal(precision)).sum() - torch.logdet(precision))
    assert log_px - before > 100 and after == pytest.approx(optimum, abs=0.03)
    assert metrics["nelbo"] == pytest.approx(-mean_elbo(model, x))
    for key, value in model.decoder.state_dict().items():  # p(x|z) untouched, so log p(x) is too
        assert torch.equal(value, decoder[key]), key
    assert all(p.requires_grad for p in model.parameters())
    best = torch.load(run_dir / "checkpoints/best.pt", weights_only=True)
    trained = torch.load(run_dir / "checkpoints/trained.pt", weights_only=True)
    assert best["refit"]["trained_step"] == 40 and best["position"]["step"] == 40
    assert not torch.equal(best["model"]["to_mu.1.weight"], trained["model"]["to_mu.1.weight"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(140, 1541, 100))  # after training's last step (40)
    assert rows[0]["seconds"] > 12.5 and [r["seconds"] for r in rows] == sorted(r["seconds"] for r in rows)
    mark = json.loads((run_dir / "checkpoints/refit.json").read_text())
    assert mark["after_step"] == 40 and mark["steps"] == 1500 and mark["best_nelbo"] == pytest.approx(-after, abs=0.1)


def test_a_done_refit_is_not_run_again_and_a_new_one_starts_from_the_trained_weights(setting):
    model, x, run_dir = setting
    trained = {k: v.clone() for k, v in model.state_dict().items()}

    def evaluate(m):
        return {"nelbo": -mean_elbo(m, x, samples=20)}

    refit_encoder(model, Data(x), evaluate, config(200), run_dir, torch.device("cpu"))
    once = (run_dir / "metrics.jsonl").read_text()
    assert refit_encoder(model, Data(x), evaluate, config(200), run_dir, torch.device("cpu")) is None
    assert (run_dir / "metrics.jsonl").read_text() == once  # nothing doubled
    # other settings: refit again, from trained.pt (not from the refit best.pt), its rows replacing the old ones
    model.load_state_dict({k: torch.zeros_like(v) for k, v in trained.items()})  # whatever the model held
    seen = []
    refit_encoder(model, Data(x), lambda m: seen.append(m.to_mu[1].weight.clone()) or evaluate(m), config(100, lr=1e-9),
                  run_dir, torch.device("cpu"))  # fmt: skip
    assert torch.allclose(seen[0], trained["to_mu.1.weight"], atol=1e-6)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [140]


def test_training_on_past_a_refit_puts_trainings_best_back(setting):
    # the trainer compares its evaluations with training's best, and optim.reload_best reloads best.pt: neither
    # may meet the refit's weights once training goes on (the refit runs again after it)
    model, x, run_dir = setting
    refit_encoder(model, Data(x), lambda m: {"nelbo": -mean_elbo(m, x, samples=20)}, config(100), run_dir,
                  torch.device("cpu"))  # fmt: skip
    checkpoints = run_dir / "checkpoints"
    assert "refit" in torch.load(checkpoints / "best.pt", weights_only=True)
    restore_trained_best(checkpoints)
    best, trained = (torch.load(checkpoints / name, weights_only=True) for name in ("best.pt", "trained.pt"))
    assert "refit" not in best and all(torch.equal(best["model"][k], v) for k, v in trained["model"].items())
    restore_trained_best(checkpoints)  # training's own best.pt is left alone
    assert torch.equal(torch.load(checkpoints / "best.pt", weights_only=True)["model"]["to_mu.1.weight"],
                       trained["model"]["to_mu.1.weight"])  # fmt: skip


def test_refit_modes_keep_bn_vae_floor_and_turn_every_dropout_off():
    keys = {"name": "lstm_vae", "embedding_dim": 8, "hidden_size": 8, "latent_dim": 4, "bn_gamma": 0.6,
            "embedding_dropout": 0.5, "output_dropout": 0.5}  # fmt: skip
    cfg = config_lib.from_dict({"model": keys})
    vocab = type("Vocab", (), {"__len__": lambda self: 20, "pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3,
                               "special_ids": [0, 1, 2, 3], "kind": "word"})()  # fmt: skip
    model = build_text_model(cfg.model, vocab)
    tokens = torch.randint(4, 20, (16, 7))
    tokens[:, 0], tokens[:, -1] = 2, 3
    batch = TextBatch(tokens, torch.full((16,), 7), 16 * 6, 16 * 6)
    refit_modes(model)
    assert not any(m.training for m in model.decoder.modules())
    assert not any(m.training for m in model.modules() if isinstance(m, nn.Dropout))
    mu, _ = model.encode(batch)
    # BN-VAE's floor: over the batch each mean has standard deviation gamma (as in training), not whatever the
    # running statistics of a fresh model give
    assert torch.allclose(mu.std(0, unbiased=False), torch.full((4,), 0.6), atol=5e-3)
    model.eval()
    assert not torch.allclose(model.encode(batch)[0].std(0, unbiased=False), torch.full((4,), 0.6), atol=0.05)


def test_the_tiny_run_refits_its_encoder_after_training(tiny_config_path, corpus_dir, tmp_path):
    overrides = [f"data.corpus={corpus_dir}", "train.refit_encoder_steps=30", "train.refit_encoder_lr=0.01",
                 "model.output_dropout=0.3"]  # fmt: skip
    run_dir = tmp_path / "run"
    train(config_lib.load(tiny_config_path, overrides), run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50]  # training's two, then the refit's (eval_every 10)
    mark = json.loads((run_dir / "checkpoints/refit.json").read_text())
    assert mark["after_step"] == 20 and mark["best_nelbo"] == min(r["metrics"]["nelbo"] for r in rows[1:])
    train(config_lib.load(tiny_config_path, overrides), run_dir)  # a finished run: nothing trains, nothing refits
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 5
    # trained on: the old refit's rows go, training's step 30 follows step 20, and the new refit follows it
    train(config_lib.load(tiny_config_path, [*overrides, "train.max_steps=30"]), run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("phase")) for r in rows] == [(10, None), (20, None), (30, None), (40, "refit"),
                                                           (50, "refit"), (60, "refit")]  # fmt: skip
    assert json.loads((run_dir / "checkpoints/refit.json").read_text())["after_step"] == 30
    assert main(["evaluate", str(run_dir), "--split", "test", "--json"]) == 0


@pytest.mark.parametrize("keys, message", [
    (["model.name=lstm_lm", "train.refit_encoder_steps=10"], "no latent code"),
    (["train.refit_encoder_lr=0"], "must be positive"),
    (["train.refit_encoder_steps=-1"], "must not be negative"),
])  # fmt: skip
def test_refit_keys_are_checked(tiny_config_path, keys, message):
    with pytest.raises(UserError, match=message):
        config_lib.load(tiny_config_path, keys)


def test_sigterm_in_the_refit_stops_it_cleanly_and_the_same_command_does_it_again(tiny_config_path, corpus_dir,
                                                                                  tmp_path):  # fmt: skip
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "textvae", "train", str(tiny_config_path), "--run-dir", str(run_dir),
               "--set", f"data.corpus={corpus_dir}", "--set", "train.refit_encoder_steps=100000"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))  # fmt: skip
    deadline = time.time() + 120
    while not (run_dir / "checkpoints/trained.pt").is_file() and time.time() < deadline:  # the refit has begun
        time.sleep(0.05)
    time.sleep(1.0)  # some refit steps
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert "stopped by SIGTERM in the encoder refit" in err and "trained.pt" in err
    assert not (run_dir / "checkpoints/refit.json").exists()
    train(config_lib.load(tiny_config_path, [f"data.corpus={corpus_dir}", "train.refit_encoder_steps=20"]), run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("phase")) for r in rows] == [(10, None), (20, None), (30, "refit"), (40, "refit")]


def test_a_refit_step_keeps_the_runs_free_bits(setting):
    model, x, _ = setting
    cfg = config_lib.from_dict({"objective": {"free_bits": 2.0, "free_bits_mode": "dim"}})
    batch = Batch(x[:64])
    refit_modes(model)
    torch.manual_seed(3)
    with torch.no_grad():
        terms = elbo(model, batch)
    free_bits = float(terms.rec.mean() + terms.kl_per_dim.mean(0).clamp(min=2.0).sum())  # max(KL_d, 2) per dim
    assert abs(free_bits - float(terms.loss)) > 0.1  # the floor binds on this encoder, so the test can tell
    inference, _ = split_parameters(model)
    torch.manual_seed(3)
    stats = refit_step(model, batch, inference, torch.optim.SGD(inference, lr=0.0), cfg, torch.device("cpu"))
    assert stats["loss"] == pytest.approx(free_bits, rel=1e-9)


def test_gradients_through_a_model_in_eval_mode_run_without_cudnn(setting, monkeypatch):
    # cuDNN's RNN backward refuses eval mode: the refit's step and SVI's refinement (models in eval mode, so without
    # dropout) must run with cuDNN off on a GPU; its setting is what the decoder sees, restored afterwards
    model, x, _ = setting
    seen, decode = [], model.log_likelihood
    spy = lambda *args: seen.append(torch.backends.cudnn.enabled) or decode(*args)  # noqa: E731
    monkeypatch.setattr(model, "log_likelihood", spy)
    refit_modes(model)
    inference, _ = split_parameters(model)
    refit_step(model, Batch(x[:8]), inference, torch.optim.SGD(inference, lr=0.0), config(1), torch.device("cpu"))
    model.float()  # refine works in fp32
    mu, logvar = model.encode(Batch(x[:8].float()))
    refine(model, Batch(x[:8].float()), mu, logvar, steps=2)
    assert seen and not any(seen) and torch.backends.cudnn.enabled
