"""Posterior-collapse remedies: aggressive training, decoder reset, bag-of-words loss, collapse monitor."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from textvae import config as config_lib
from textvae.config import DataConfig, ModelConfig
from textvae.core.evaluation import evaluate
from textvae.core.latent import LatentModel
from textvae.core.objective import ElboSettings, elbo
from textvae.core.remedies import AggressiveTraining, CollapseMonitor, reset_decoder, split_parameters
from textvae.core.trainer import Trainer
from textvae.data.batching import TextSplit
from textvae.data.tokenizer import WordTokenizer
from textvae.dispatch import train
from textvae.errors import UserError
from textvae.models import build_text_model

from conftest import make_sentences


class _Source:
    """Eight fixed random batches of 3-dimensional points."""

    def plan(self, epoch, batch_size, max_tokens=0, seed=0):
        return [[i] for i in range(8)]

    def collate(self, indices):
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(indices[0]))
        batch = SimpleNamespace(x=x, size=4, num_tokens=4)
        batch.to = lambda device: batch
        return batch


class _TinyVAE(LatentModel):
    latent_dim = 2

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.decoder = nn.Linear(2, 3)

    def encode(self, batch):
        mu, logvar = self.encoder(batch.x).chunk(2, -1)
        return mu, logvar

    def log_likelihood(self, batch, z):
        return -(self.decoder(z) - batch.x.unsqueeze(1)).pow(2).sum(-1)


def _recording_trainer(tmp_path, mi_values, **objective):
    """A trainer on the tiny model whose optimizer records, per step, which side has gradients."""
    config = config_lib.from_dict({
        "objective": {"kl_schedule": "constant", "aggressive": True, **objective},
        "train": {"max_steps": 6, "eval_every": 2, "log_every": 1, "device": "cpu", "collapse_patience": 0},
        "optim": {"lr_decay": 1.0},
    })  # fmt: skip
    torch.manual_seed(0)
    model = _TinyVAE()
    mis = iter(mi_values)
    trainer = Trainer(model, _Source(), lambda m: {"nelbo": 1.0, "kl": 1.0, "mi": next(mis)}, config, tmp_path,
                      torch.device("cpu"))  # fmt: skip
    sides = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        encoder = all(p.grad is not None for p in model.encoder.parameters())
        decoder = all(p.grad is not None for p in model.decoder.parameters())
        sides.append(("E" if encoder else "") + ("D" if decoder else ""))
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    return trainer, sides


def _aggressive(trainer: Trainer) -> AggressiveTraining:
    return next(hook for hook in trainer.hooks if isinstance(hook, AggressiveTraining))


def test_aggressive_training_takes_encoder_only_steps_before_each_decoder_step_and_stops_when_mi_falls(tmp_path):
    # MI at the evaluations of steps 2 and 4: 1.0 then 0.5 (falls): aggressive training covers steps 1-4 only
    trainer, sides = _recording_trainer(tmp_path, [1.0, 0.5, 0.7], aggressive_window=2, aggressive_max_inner=6)
    trainer.fit()
    inner, i = [], 0
    for _ in range(4):  # steps 1-4: encoder-only steps, then one decoder-only step
        n = 0
        while sides[i] == "E":
            n, i = n + 1, i + 1
        assert sides[i] == "D", sides
        inner.append(n)
        i += 1
    assert all(2 <= n <= 6 and n % 2 == 0 for n in inner), inner  # whole windows, within the cap
    assert sum(inner) == _aggressive(trainer).encoder_steps
    assert sides[i:] == ["ED", "ED"]  # steps 5-6: joint, as without the remedy
    assert _aggressive(trainer).active is False


class _ScriptedVAE(_TinyVAE):
    """-log p(x|z) follows a script, call by call: 99, 98, ..., 91, then 100 for ever."""

    calls = 0

    def log_likelihood(self, batch, z):
        self.calls += 1
        value = 100.0 - self.calls if self.calls <= 9 else 100.0
        return -value + 0.0 * self.decoder(z).sum(-1)


def test_aggressive_inner_loop_stops_at_the_first_window_whose_loss_does_not_fall(tmp_path):
    trainer, sides = _recording_trainer(tmp_path, [1.0], aggressive_window=3, aggressive_max_inner=30)
    trainer.model.__class__ = _ScriptedVAE
    trainer.config = config_lib.replace(trainer.config, train={"max_steps": 1})
    trainer.fit()
    # windows of 3: 99+98+97 > 96+95+94 > 93+92+91 < 100+100+100: the fourth window ends the loop
    assert "".join(sides) == "E" * 12 + "D"
    assert _aggressive(trainer).encoder_steps == 12


def test_aggressive_training_ends_at_its_step_cap(tmp_path):
    trainer, sides = _recording_trainer(tmp_path, [1.0, 2.0, 3.0], aggressive_window=2, aggressive_max_inner=4,
                                        aggressive_until=3)  # fmt: skip
    trainer.fit()
    assert sides.count("D") == 3 and sides[-3:] == ["ED", "ED", "ED"]  # steps 1-3 aggressive, 4-6 joint


def test_without_aggressive_every_step_is_joint(tmp_path):
    trainer, sides = _recording_trainer(tmp_path, [1.0, 2.0, 3.0], aggressive=False)
    trainer.fit()
    assert sides == ["ED"] * 6


@pytest.fixture(scope="module")
def split():
    sentences = make_sentences(40)
    tok = WordTokenizer.build(sentences, DataConfig())
    return TextSplit(sentences, tok, 30)


@pytest.mark.parametrize("name", ["lstm_vae", "transformer_vae"])
def test_decoder_reset_reinitializes_the_decoder_and_nothing_else(split, name):
    torch.manual_seed(0)
    model = build_text_model(ModelConfig(name=name, embedding_dim=8, hidden_size=12, latent_dim=3), split.tokenizer,
                             bag_of_words=True)  # fmt: skip
    encoder, decoder = split_parameters(model)
    assert decoder and encoder and len(encoder) + len(decoder) == len(list(model.parameters()))
    assert all(p is not q for p in encoder for q in decoder)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.123)
    reset_decoder(model)
    assert all(torch.all(p == 0.123) for p in encoder)  # the encoder and the bag-of-words head untouched
    for p in decoder:  # every decoder tensor drawn afresh (or zeroed, as a padding row)
        assert (p != 0.123).float().mean() > 0.5


def test_decoder_reset_after_pretraining_in_a_run(tiny_config_path, corpus_dir, tmp_path, caplog):
    config = config_lib.load(tiny_config_path, [f"data.corpus={corpus_dir}", "objective.pretrain_steps=6",
                                                "objective.reset_decoder=true", "train.max_steps=10"])  # fmt: skip
    with caplog.at_level(logging.INFO):
        train(config, tmp_path / "run")
    assert "decoder re-initialized" in caplog.text
    with pytest.raises(UserError, match="pretrain_steps"):
        config_lib.load(tiny_config_path, ["objective.reset_decoder=true"])


def test_bag_of_words_loss_reaches_the_encoder_and_never_the_decoder(split):
    torch.manual_seed(0)
    model = build_text_model(ModelConfig(embedding_dim=8, hidden_size=12, latent_dim=3), split.tokenizer,
                             bag_of_words=True)  # fmt: skip
    batch = split.collate(list(range(6)))
    torch.manual_seed(1)
    with_bow = elbo(model, batch, ElboSettings(kl_weight=1.0, bow_weight=0.5))
    torch.manual_seed(1)
    without = elbo(model, batch, ElboSettings(kl_weight=1.0))
    assert torch.allclose(with_bow.loss, without.loss + 0.5 * with_bow.bow.mean())
    model.zero_grad()
    with_bow.bow.sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in model.decoder.parameters())
    assert model.encoder.weight_ih_l0.grad.abs().sum() > 0
    assert model.bag_of_words.net[0].weight.grad.abs().sum() > 0


def test_bag_of_words_log_probability_is_exact(split):
    torch.manual_seed(0)
    model = build_text_model(ModelConfig(latent_dim=3), split.tokenizer, bag_of_words=True)
    head = model.bag_of_words
    nn.init.zeros_(head.net[2].weight)
    nn.init.zeros_(head.net[2].bias)  # uniform over the vocabulary: log p = -(words) log V
    batch = split.collate([0, 1, 2])
    words = (batch.lengths - 2).float()  # <bos> and <eos> are not words
    expected = -words * math.log(len(split.tokenizer))
    assert torch.allclose(head(batch.tokens, torch.randn(3, 3)), expected, atol=1e-4)


def _run_with_monitor(tiny_config_path, corpus_dir, run_dir, caplog, *overrides):
    config = config_lib.load(tiny_config_path, [f"data.corpus={corpus_dir}", "train.max_steps=30", "train.eval_every=5",
                                                "train.collapse_patience=3", "train.collapse_kl=0.1",
                                                "objective.kl_schedule=constant", *overrides])  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train(config, run_dir)
    return [r.getMessage() for r in caplog.records if "posterior collapse" in r.getMessage()]


def test_collapse_warning_fires_on_a_collapsed_model_and_not_on_a_healthy_one(
    tiny_config_path, corpus_dir, tmp_path, caplog
):
    collapsed = _run_with_monitor(tiny_config_path, corpus_dir, tmp_path / "beta", caplog,
                                  "objective.kl_weight=20", "objective.free_bits=0")  # fmt: skip
    # free bits hold the KL at 0.16-0.17 nats (over collapse_kl) while validation MI is 0.00 and no unit is
    # active: z says nothing about x. Before MI and AU counted, this run passed for healthy.
    free_bits = _run_with_monitor(tiny_config_path, corpus_dir, tmp_path / "fb", caplog,
                                  "objective.kl_weight=1", "objective.free_bits=1.0")  # fmt: skip
    # the bag-of-words loss at a higher learning rate puts information into z: MI 0.12 at step 15, 1.0 at 60
    healthy = _run_with_monitor(tiny_config_path, corpus_dir, tmp_path / "bow", caplog, "objective.kl_weight=1",
                                "objective.free_bits=1.0", "objective.bow_weight=1.0", "optim.lr=0.01",
                                "train.max_steps=60", "train.eval_every=10")  # fmt: skip
    assert len(collapsed) == 1  # once per streak, not at every evaluation
    assert "signal: KL, MI, AU" in collapsed[0] and "z stays at the prior" in collapsed[0]
    assert len(free_bits) == 1 and "signal: MI, AU" in free_bits[0] and "no information about x" in free_bits[0]
    assert healthy == []


class _Recorder:
    """Stands in for TensorBoard's SummaryWriter: keeps the scalars and texts it is given."""

    def __init__(self):
        self.scalars, self.texts = {}, []

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append(value)

    def add_text(self, tag, text, step):
        self.texts.append((tag, text))


class _IgnoresX(LatentModel):
    """q(z|x) = N(1.5, 1) in each of 4 dimensions for every x: a KL of 4.5 nats, no information about x."""

    latent_dim = 4

    def encode(self, batch):
        return torch.full((batch.size, 4), 1.5), torch.zeros(batch.size, 4)

    def log_likelihood(self, batch, z):
        return -z.pow(2).sum(-1)


def test_collapse_alarm_fires_on_an_x_independent_posterior_with_a_high_kl(caplog):
    batches = [SimpleNamespace(size=20, num_tokens=20, footprint=20, to=lambda device, i=i: batches[i])
               for i in range(3)]  # fmt: skip
    torch.manual_seed(0)
    metrics = evaluate(_IgnoresX(), batches, 4, torch.device("cpu"))
    assert metrics["kl"] == pytest.approx(4.5) and abs(metrics["mi"]) < 1e-5 and metrics["au"] == 0
    config = config_lib.from_dict({"train": {"collapse_patience": 3}})  # collapse_kl 0.1: the KL alone is fine
    monitor = CollapseMonitor(config.train, pretrain_steps=0)
    writer = _Recorder()
    with caplog.at_level(logging.WARNING):
        for step in range(100, 104):
            monitor.after_evaluation(step, metrics, writer)
    warnings = [r.getMessage() for r in caplog.records if "posterior collapse" in r.getMessage()]
    assert len(warnings) == 1 and "signal: MI, AU" in warnings[0]
    assert writer.texts == [("val/collapse_warning", warnings[0])]
    assert writer.scalars["val/collapse_kl"] == [0.0] * 4  # which signal: TensorBoard says it too
    assert writer.scalars["val/collapse_mi"] == writer.scalars["val/collapse_au"] == [1.0] * 4
    assert writer.scalars["val/collapsed"] == [0.0, 0.0, 1.0, 1.0]
    # the thresholds are the config's: off, the information signals are silent
    quiet = config_lib.from_dict({"train": {"collapse_patience": 3, "collapse_mi": 0.0, "collapse_au": 0}})
    monitor = CollapseMonitor(quiet.train, pretrain_steps=0)
    writer = _Recorder()
    for step in range(100, 104):
        monitor.after_evaluation(step, metrics, writer)
    assert writer.texts == [] and writer.scalars["val/collapsed"] == [0.0] * 4


def test_aggressive_run_with_bag_of_words_resumes_to_the_same_parameters(tiny_config_path, corpus_dir, tmp_path):
    extra = [f"data.corpus={corpus_dir}", "objective.aggressive=true", "objective.aggressive_window=2",
             "objective.aggressive_max_inner=6", "objective.bow_weight=0.5", "train.eval_every=3",
             "model.word_dropout=0.2"]  # fmt: skip
    train(config_lib.load(tiny_config_path, [*extra, "train.max_steps=8"]), tmp_path / "straight")
    train(config_lib.load(tiny_config_path, [*extra, "train.max_steps=4"]), tmp_path / "resumed")
    train(config_lib.load(tiny_config_path, [*extra, "train.max_steps=8"]), tmp_path / "resumed")
    straight = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)
    assert straight["position"] == resumed["position"] and straight["hooks"] == resumed["hooks"]
    assert straight["hooks"]["aggressive"]["encoder_steps"] > 8
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_a_checkpoint_from_before_the_hooks_resumes_with_the_remedies_state(tmp_path):
    # Before issue 21 the remedies' state sat in the checkpoint's position (and collapse_evals was low_kl_evals)
    trainer, _ = _recording_trainer(tmp_path, [1.0, 2.0, 3.0], aggressive_window=2, aggressive_max_inner=4)
    trainer.fit()
    state = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    legacy = {**state["position"], "aggressive": False, "last_mi": 0.25, "encoder_steps": 7, "low_kl_evals": 2}
    torch.save({**{k: v for k, v in state.items() if k != "hooks"}, "position": legacy},
               tmp_path / "checkpoints/last.pt")  # fmt: skip
    config = config_lib.replace(trainer.config, train={"collapse_patience": 3})
    resumed = Trainer(_TinyVAE(), _Source(), lambda m: {}, config, tmp_path, torch.device("cpu"))
    assert resumed.resume() and resumed.position == trainer.position
    assert {hook.name: hook.state_dict() for hook in resumed.hooks} == {
        "aggressive": {"active": False, "last_mi": 0.25, "encoder_steps": 7},
        "collapse_monitor": {"evals": 2},
    }
    resumed.save(tmp_path / "again.pt")  # written back in the new layout
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert again["hooks"]["aggressive"]["encoder_steps"] == 7 and "encoder_steps" not in again["position"]


def test_the_collapse_warning_of_a_bn_vae_whose_means_fell_below_eps_names_the_cause(caplog):
    # BN-VAE's floor of D gamma^2 / 2 holds while the means' batch variance is well above batch norm's eps; from
    # a U(-0.01, 0.01) encoder the KL pressure took it to ~2e-8 on PTB, where the floor is gone: the warning says so
    from textvae.core.posterior import PosteriorHead

    head = PosteriorHead(8, 4, bn_gamma=0.6)
    assert head.floor_lost() is None and PosteriorHead(8, 4).floor_lost() is None
    head.mean_norm.running_var.fill_(2e-8)
    collapsed = {"kl": 0.19, "mi": 0.01, "au": 0}
    config = config_lib.from_dict({"train": {"collapse_patience": 2}})
    messages = []
    for posterior in (head, PosteriorHead(8, 4, bn_gamma=0.6), None):
        monitor = CollapseMonitor(config.train, pretrain_steps=0, posterior=posterior)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            for step in (1, 2):
                monitor.after_evaluation(step, collapsed, _Recorder())
        messages.append([r.getMessage() for r in caplog.records if "posterior collapse" in r.getMessage()])
    assert all(len(m) == 1 for m in messages)
    assert "batch variance (2.0e-08) is down at batch norm's eps (1e-05)" in messages[0][0]
    assert "Remedies: KL annealing" in messages[1][0] and "Remedies: KL annealing" in messages[2][0]
