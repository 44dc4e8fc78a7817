"""optim.average: the average of the weights along training against its closed forms, what validation, best.pt and
a rebuilt model see, and a resumed run against a straight one."""

import pytest
import torch
from test_remedies import _Source, _TinyVAE
from torch import nn

from textvae import config as config_lib
from textvae.config import OptimConfig
from textvae.core.average import WeightAverage
from textvae.core.run import load_trained
from textvae.core.trainer import Trainer
from textvae.errors import UserError


def _fold(kind, values, from_step=0, decay=0.9, every=1):
    """Set a one-parameter model to each of `values` in turn, fold each in as a step; -> the average."""
    model = nn.Linear(1, 1, bias=False)
    optim = OptimConfig(average=kind, average_from_step=from_step, average_decay=decay, average_every=every)
    average = WeightAverage(model, optim)
    for step, value in enumerate(values):
        model.weight.data.fill_(value)
        average.update(step)
    return average


def test_the_uniform_average_is_the_mean_of_the_weights_from_average_from_step_on():
    values = [5.0, -3.0, 1.0, 2.0, 7.0]
    average = _fold("uniform", values, from_step=2)
    assert average.count == 3
    assert average.averages[0].item() == pytest.approx(sum(values[2:]) / 3)


def test_with_average_every_the_uniform_average_takes_every_so_many_steps_from_average_from_step():
    values = [5.0, -3.0, 1.0, 2.0, 7.0, 4.0, 11.0]
    average = _fold("uniform", values, from_step=1, every=3)  # steps 1 and 4
    assert average.count == 2
    assert average.averages[0].item() == pytest.approx((-3.0 + 7.0) / 2)


def test_the_ema_is_the_exponentially_weighted_sum_started_at_the_first_weights():
    values, decay = [1.0, 4.0, -2.0, 3.0], 0.9
    expected = values[0]
    for value in values[1:]:
        expected = decay * expected + (1 - decay) * value
    assert _fold("ema", values, decay=decay).averages[0].item() == pytest.approx(expected)


def test_no_average_leaves_the_weights_alone():
    average = _fold("none", [1.0, 2.0])
    assert not average.active
    with average.applied():
        assert average.model.weight.item() == 2.0


def test_the_average_stands_in_only_inside_applied():
    average = _fold("uniform", [1.0, 3.0])
    with average.applied():
        assert average.model.weight.item() == pytest.approx(2.0)
    assert average.model.weight.item() == 3.0


def _averaging_trainer(tmp_path, max_steps, nelbos, seen):
    """The tiny VAE with a uniform average from step 2, validated every 2 steps with `nelbos` in turn; `seen`
    gets the encoder's weight each validation is given."""
    config = config_lib.from_dict({
        "objective": {"kl_schedule": "constant"},
        "train": {"max_steps": max_steps, "eval_every": 2, "device": "cpu", "collapse_patience": 0,
                  "early_stopping": 0, "checkpoint_every": 1},
        "optim": {"name": "sgd", "lr": 0.1, "lr_decay": 1.0, "average": "uniform", "average_from_step": 2},
    })  # fmt: skip

    def evaluate(model):
        seen.append(model.encoder.weight.detach().clone())
        return {"nelbo": next(nelbos), "kl": 1.0}

    return Trainer(_TinyVAE(), _Source(), evaluate, config, tmp_path, torch.device("cpu"))


def test_validation_and_best_pt_see_the_average_while_training_steps_the_weights(tmp_path):
    torch.manual_seed(0)
    seen, after_step = [], []
    trainer = _averaging_trainer(tmp_path, 6, iter([3.0, 1.0, 2.0]), seen)
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        step(*args, **kwargs)
        after_step.append(trainer.model.encoder.weight.detach().clone())

    trainer.optimizer.step = recording_step
    trainer.fit()
    assert len(after_step) == 6
    # step 2's validation comes before any averaged step (steps 2.. are 0-based, so the first is the third)
    torch.testing.assert_close(seen[0], after_step[1])
    torch.testing.assert_close(seen[1], torch.stack(after_step[2:4]).mean(0))
    torch.testing.assert_close(seen[2], torch.stack(after_step[2:6]).mean(0))
    torch.testing.assert_close(trainer.model.encoder.weight, after_step[5])  # training's own weights after it
    best = torch.load(tmp_path / "checkpoints/best.pt", weights_only=True)
    assert best["position"]["step"] == 4
    torch.testing.assert_close(best["model"]["encoder.weight"], seen[1])
    assert best["average"] == {"count": 2, "averages": []}  # the average once, as the weights
    model = _TinyVAE()
    assert load_trained(tmp_path, trainer.config, model) == 4
    torch.testing.assert_close(model.encoder.weight, seen[1])
    # last.pt holds the weights and the average; a model rebuilt from it gets the average
    model = _TinyVAE()
    assert load_trained(tmp_path, trainer.config, model, checkpoint="last") == 6
    torch.testing.assert_close(model.encoder.weight, seen[2])


def test_a_resumed_run_averages_as_the_straight_one(tmp_path):
    torch.manual_seed(0)
    straight = []
    _averaging_trainer(tmp_path / "straight", 6, iter([3.0, 1.0, 2.0]), straight).fit()
    torch.manual_seed(0)
    resumed = []
    _averaging_trainer(tmp_path / "resumed", 3, iter([3.0, 9.0]), resumed).fit()
    _averaging_trainer(tmp_path / "resumed", 6, iter([1.0, 2.0]), resumed).fit()
    # the second run's first validation is step 4's (the extra one at step 3 only reported)
    torch.testing.assert_close(resumed[2], straight[1])
    torch.testing.assert_close(resumed[3], straight[2])


@pytest.mark.parametrize("optim", [{"average": "swa"}, {"average": "ema", "average_decay": 1.0}, {"average_every": 0}])
def test_a_bad_average_setting_is_refused(optim):
    with pytest.raises(UserError, match="optim.average"):
        config_lib.from_dict({"optim": optim})
