"""The LR plateau schedule and the stopping rules of the trainer: decays, best-weight reloads, optim.lr_decay_from_step,
optim.max_decays, early stopping, and how autoencoder pretraining changes each."""

import pytest
import torch
from test_remedies import _Source, _TinyVAE

from textvae import config as config_lib
from textvae.core.trainer import Trainer, decays_in


def test_early_stopping_waits_for_the_end_of_autoencoder_pretraining(tmp_path):
    # The validation nelbo worsens at every evaluation of the pretraining phase (steps 2, 4, 6), as an
    # autoencoder's does while its code sharpens; with early_stopping 1 the run must still reach the VAE phase.
    config = config_lib.from_dict({
        "objective": {"kl_schedule": "constant", "pretrain_steps": 8},
        "train": {"max_steps": 20, "eval_every": 2, "early_stopping": 1, "device": "cpu", "collapse_patience": 0},
        "optim": {"lr_decay": 1.0},
    })  # fmt: skip
    torch.manual_seed(0)
    nelbos = iter([1.0, 2.0, 3.0, 4.0, 3.5, 3.8, 3.0, 3.0, 3.0, 3.0])
    trainer = Trainer(_TinyVAE(), _Source(), lambda m: {"nelbo": (nelbo := next(nelbos)), "rec": nelbo, "kl": 1.0},
                      config, tmp_path, torch.device("cpu"))  # fmt: skip
    trainer.fit()
    # from step 8 on, the VAE phase: 4.0, 3.5 (step 10, a new best), 3.8 (step 12, one bad evaluation: stop)
    assert trainer.position.step == 12


@pytest.mark.parametrize("reload_best", [True, False])
def test_a_plateau_decay_can_go_back_to_the_best_weights(tmp_path, reload_best):
    # He et al. / Li et al. 2019 reload the best checkpoint at each LR halving: validation at step 2 is the best
    # (best.pt), at step 4 worse, which halves the LR (patience 0) and, with optim.reload_best, restores step 2's
    # weights and optimizer state with the new LR
    config = config_lib.from_dict({
        "objective": {"kl_schedule": "constant"},
        "train": {"max_steps": 4, "eval_every": 2, "device": "cpu", "collapse_patience": 0, "early_stopping": 0},
        "optim": {"name": "sgd", "lr": 0.1, "lr_decay": 0.5, "lr_patience": 0, "reload_best": reload_best},
    })  # fmt: skip
    torch.manual_seed(0)
    nelbos = iter([1.0, 2.0])
    trainer = Trainer(_TinyVAE(), _Source(), lambda m: {"nelbo": next(nelbos), "kl": 1.0}, config, tmp_path,
                      torch.device("cpu"))  # fmt: skip
    trainer.fit()
    best = torch.load(tmp_path / "checkpoints/best.pt", weights_only=True)
    assert best["position"]["step"] == 2 and trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    same = [torch.equal(value, best["model"][key]) for key, value in trainer.model.state_dict().items()]
    assert all(same) if reload_best else not any(same)


def _lrs_after_fit(tmp_path, optim, objective, metrics):
    """Train the tiny VAE for 8 steps with a validation every step that returns `metrics` in turn; -> the LR after
    each evaluation and the trainer."""
    config = config_lib.from_dict({
        "objective": {"kl_schedule": "constant", **objective},
        "train": {"max_steps": 8, "eval_every": 1, "device": "cpu", "collapse_patience": 0, "early_stopping": 0},
        "optim": {"name": "sgd", "lr": 0.1, "lr_decay": 0.5, "lr_patience": 0, **optim},
    })  # fmt: skip
    lrs, values = [], iter(metrics)

    def evaluate(model):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])  # the LR the step before this evaluation trained with
        return next(values)

    trainer = Trainer(_TinyVAE(), _Source(), evaluate, config, tmp_path, torch.device("cpu"))
    trainer.fit()
    return lrs[1:] + [trainer.optimizer.param_groups[0]["lr"]], trainer


def test_no_plateau_decay_before_optim_lr_decay_from_step(tmp_path):
    # validation worsens at every evaluation: with patience 0 each evaluation halves the LR, but not those before
    # step 5 (Li et al. 2019 halve nothing before epoch 15): the first to count is step 5's, the first halving
    # step 6's (against step 5's best)
    worse = [{"nelbo": float(i), "rec": float(i), "kl": 1.0} for i in range(1, 9)]
    lrs, _ = _lrs_after_fit(tmp_path / "from5", {"lr_decay_from_step": 5}, {}, worse)
    assert lrs == pytest.approx([0.1] * 5 + [0.05, 0.025, 0.0125])
    lrs, _ = _lrs_after_fit(tmp_path / "from0", {}, {}, worse)
    assert lrs == pytest.approx([0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125, 0.0015625, 0.00078125])


def test_the_plateau_decay_follows_the_reconstruction_while_the_autoencoder_is_pretrained(tmp_path):
    # autoencoder pretraining trains the reconstruction alone (KL weight 0): its KL grows while rec falls, so the
    # -ELBO worsens at each validation; the LR must not halve, and best.pt is the best autoencoder
    metrics = [{"nelbo": 10.0 + i, "rec": 10.0 - i, "kl": 2.0 * i} for i in range(8)]
    lrs, trainer = _lrs_after_fit(tmp_path, {}, {"pretrain_steps": 20}, metrics)
    assert lrs == pytest.approx([0.1] * 8)
    best = torch.load(tmp_path / "checkpoints/best.pt", weights_only=True)
    assert best["position"]["step"] == 8 and trainer.position.best == pytest.approx(3.0)


def test_training_stops_at_the_evaluation_that_makes_optim_max_decays_decays(tmp_path):
    # validation worsens after step 1: with patience 0 steps 2, 3, 4 ... each halve the LR. He et al. / Li et al.
    # 2019's released code stops at the fifth halving (max_decay = 5); here at the third, step 4
    worse = [{"nelbo": float(i), "rec": float(i), "kl": 1.0} for i in range(1, 9)]
    lrs, trainer = _lrs_after_fit(tmp_path / "three", {"max_decays": 3}, {}, worse)
    assert trainer.position.step == 4 and trainer.position.decays == 3
    assert lrs == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    _, unlimited = _lrs_after_fit(tmp_path / "none", {}, {}, worse)
    assert unlimited.position.step == 8 and unlimited.position.decays == 7


def test_the_decays_of_autoencoder_pretraining_do_not_count_towards_max_decays(tmp_path):
    # the autoencoder's evaluations (steps 1-3) worsen twice (two decays); the VAE phase, from step 4's evaluation,
    # starts its count afresh: best at step 4, its first decay at step 5 stops a max_decays = 1 run there (the
    # autoencoder's decays counted would stop it at step 4)
    metrics = [{"nelbo": 10.0, "rec": float(i), "kl": 1.0} for i in range(1, 4)] + [
        {"nelbo": 20.0 + i, "rec": 1.0, "kl": 1.0} for i in range(5)
    ]
    _, trainer = _lrs_after_fit(tmp_path, {"max_decays": 1}, {"pretrain_steps": 4}, metrics)
    assert trainer.position.step == 5 and trainer.position.decays == 1


def test_a_checkpoint_without_the_decay_count_resumes_with_the_count_its_lr_implies(tmp_path):
    worse = [{"nelbo": float(i), "rec": float(i), "kl": 1.0} for i in range(1, 9)]
    _, trainer = _lrs_after_fit(tmp_path, {}, {}, worse)  # 8 steps, 7 halvings: LR 0.1 / 2^7
    assert decays_in(0.1 / 2**7, trainer.config.optim) == 7 and decays_in(0.1, trainer.config.optim) == 0
    assert decays_in(0.001, config_lib.from_dict({"optim": {"lr": 0.1, "lr_decay": 1.0}}).optim) == 0
    last = tmp_path / "checkpoints/last.pt"
    state = torch.load(last, weights_only=False)
    del state["position"]["decays"]  # as saved before optim.max_decays existed
    torch.save(state, last)
    # resumed with max_decays 7 and a larger budget: the count (7) is reached already, so it trains no further
    config = config_lib.from_dict({
        "objective": {"kl_schedule": "constant"},
        "train": {"max_steps": 12, "eval_every": 1, "device": "cpu", "collapse_patience": 0, "early_stopping": 0},
        "optim": {"name": "sgd", "lr": 0.1, "lr_decay": 0.5, "lr_patience": 0, "max_decays": 7},
    })  # fmt: skip
    again = Trainer(_TinyVAE(), _Source(), lambda m: worse[0], config, tmp_path, torch.device("cpu"))
    again.fit()
    assert again.position.step == 8 and again.position.decays == 7


def test_the_state_at_the_end_of_pretraining_is_kept_and_a_run_started_from_it_matches_the_straight_run(tmp_path):
    # pretrained.pt holds the state after step P (its evaluation included): a run given it as its last.pt trains
    # the VAE phase exactly as the run that wrote it
    config = config_lib.from_dict({
        "objective": {"kl_schedule": "constant", "pretrain_steps": 4},
        "train": {"max_steps": 8, "eval_every": 2, "device": "cpu", "collapse_patience": 0, "early_stopping": 0},
        "optim": {"name": "sgd", "lr": 0.1},
    })  # fmt: skip

    def evaluate(model):
        return {"nelbo": model.decoder.weight.detach().sum().item(), "rec": 1.0, "kl": 1.0}

    torch.manual_seed(0)
    straight = Trainer(_TinyVAE(), _Source(), evaluate, config, tmp_path / "straight", torch.device("cpu"))
    straight.fit()
    pretrained = torch.load(tmp_path / "straight/checkpoints/pretrained.pt", weights_only=False)
    assert pretrained["position"]["step"] == 4 and pretrained["position"]["best"] < float("inf")  # evaluated
    (tmp_path / "shared/checkpoints").mkdir(parents=True)
    (tmp_path / "shared/checkpoints/last.pt").write_bytes(
        (tmp_path / "straight/checkpoints/pretrained.pt").read_bytes()
    )
    torch.manual_seed(1)  # another initialization: everything must come from the checkpoint
    shared = Trainer(_TinyVAE(), _Source(), evaluate, config, tmp_path / "shared", torch.device("cpu"))
    shared.fit()
    assert shared.position.step == 8
    for ours, theirs in zip(shared.model.parameters(), straight.model.parameters()):
        assert torch.equal(ours, theirs)
    assert not (tmp_path / "shared/checkpoints/pretrained.pt").exists()  # its pretraining was not its own
