"""Faults: kills, signals, non-finite steps, a full disk, foreign checkpoints."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from textvae import config as config_lib
from textvae.cli import main
from textvae.core.trainer import Trainer
from textvae.errors import TrainingStopped

ROOT = Path(__file__).resolve().parents[1]


def test_sigkill_at_random_moments_resumes_to_identical_parameters():
    options = ["--kills", "3", "--steps", "600", "--window", "0.2", "--json"]
    script = str(ROOT / "scripts/fault_inject.py")
    result = subprocess.run([sys.executable, script, *options], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    assert report["kills"] == 3 and report["resumes"] >= 3
    assert report["final_step"] == 600 and report["positions_equal"]
    assert report["max_abs_param_diff"] == 0.0


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_config_path, corpus_dir, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "textvae", "train", str(tiny_config_path), "--run-dir", str(run),
            "--set", f"data.corpus={corpus_dir}", "--set", "train.max_steps=100000",
            "--set", "train.checkpoint_every=100000", "--set", "train.eval_every=100000"]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while not (run / "tb").is_dir() and time.time() < deadline:  # tb/ appears once the trainer runs
        time.sleep(0.05)
    time.sleep(1.0)  # some training steps
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    state = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert state["position"]["step"] > 0  # written on the signal, not on a schedule


class _Source:
    """A batch source of fixed random batches for a model-agnostic trainer test."""

    def plan(self, epoch, batch_size, max_tokens=0, seed=0):
        return [[i] for i in range(4)]

    def collate(self, indices):
        batch = SimpleNamespace(x=torch.full((2, 3), float(indices[0])), size=2, num_tokens=6)
        batch.to = lambda device: batch
        return batch


class _Exploding(torch.nn.Module):
    """Finite for the first `good` calls, then NaN."""

    latent_dim = 0

    def __init__(self, good):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.calls, self.good = 0, good

    def log_likelihood(self, batch, z):
        self.calls += 1
        value = -(batch.x * self.weight).pow(2).sum(-1, keepdim=True)
        return value if self.calls <= self.good else value * float("nan")


def test_non_finite_steps_are_skipped_then_the_run_stops_with_its_checkpoint(tmp_path):
    config = config_lib.from_dict({"train": {"max_steps": 50, "eval_every": 5, "max_nonfinite_steps": 4,
                                             "log_every": 1, "device": "cpu"}})  # fmt: skip
    model = _Exploding(good=7)
    metrics = {"nelbo": 1.0, "rec": 1.0, "kl": 0.0, "nll": 1.0, "ppl": 1.0, "mi": 0.0, "au": 0}
    trainer = Trainer(model, _Source(), lambda m: metrics, config, tmp_path, torch.device("cpu"))
    with pytest.raises(TrainingStopped, match="non-finite steps in a row") as stopped:
        trainer.fit()
    assert stopped.value.exit_code == 3
    state = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    # steps 8-11 are NaN and skipped (parameters untouched); the checkpoint of step 10 holds the good state
    assert state["position"]["step"] == 10
    assert torch.isfinite(state["model"]["weight"]).all()
    assert trainer.position.skipped == 4


def test_a_resumed_run_moves_the_model_to_its_device_before_loading_the_optimizer_state(tmp_path):
    # torch loads an optimizer's state onto its parameters' device: loaded while they were still on the CPU, a run
    # resumed on CUDA kept Adam's moments there and failed at its first step (tests/test_device.py on a GPU)
    metrics = {"nelbo": 1.0, "rec": 1.0, "kl": 0.0, "nll": 1.0, "ppl": 1.0, "mi": 0.0, "au": 0}

    def trainer(max_steps, model):
        config = config_lib.from_dict({"train": {"max_steps": max_steps, "eval_every": 2, "device": "cpu"}})
        return Trainer(model, _Source(), lambda m: metrics, config, tmp_path, torch.device("cpu"))

    trainer(2, _Exploding(good=100)).fit()
    model, events = _Exploding(good=100), []
    resumed = trainer(4, model)
    move, load = model.to, resumed.optimizer.load_state_dict
    model.to = lambda *args, **kwargs: events.append("to") or move(*args, **kwargs)
    resumed.optimizer.load_state_dict = lambda state: events.append("load") or load(state)
    resumed.fit()
    assert "load" in events and events.index("to") < events.index("load")


def test_training_tokens_per_s_leaves_out_the_evaluations(tmp_path):
    # an evaluation of 0.3 s at every step, steps of a few ms: train/tokens_per_s is the steps' rate, not the
    # rate of steps and evaluations together (12 tokens a window of 2 steps, over 0.6 s: 20 tokens/s)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = {"nelbo": 1.0, "rec": 1.0, "kl": 0.0, "nll": 1.0, "ppl": 1.0, "mi": 0.0, "au": 0}
    config = config_lib.from_dict({"train": {"max_steps": 4, "eval_every": 1, "log_every": 2, "device": "cpu"}})
    slow = lambda m: time.sleep(0.3) or metrics  # noqa: E731
    Trainer(_Exploding(good=100), _Source(), slow, config, tmp_path, torch.device("cpu")).fit()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    rates = [event.value for event in events.Scalars("train/tokens_per_s")]
    assert len(rates) == 2 and min(rates) > 200


def test_full_disk_keeps_the_last_checkpoint_and_prints_one_line(
    tiny_config_path, corpus_dir, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    base = ["train", str(tiny_config_path), "--set", f"data.corpus={corpus_dir}", "--run-dir", str(run)]
    assert main(base + ["--set", "train.max_steps=10"]) == 0
    capsys.readouterr()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("textvae.core.checkpoint.torch.save", no_space)
    assert main(base + ["--set", "train.max_steps=30"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("textvae: error: No space left on device") and "\n" not in err
    monkeypatch.undo()
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["position"]["step"] == 10
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_run_dir_that_cannot_be_created_is_one_line(tiny_config_path, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["train", str(tiny_config_path), "--run-dir", str(blocker / "run")]) == 2
    assert capsys.readouterr().err.startswith("textvae: error:")


def test_checkpoint_of_another_model_is_refused(tiny_config_path, corpus_dir, tmp_path, capsys):
    common = ["--set", f"data.corpus={corpus_dir}", "--set", "train.max_steps=3"]
    assert main(["train", str(tiny_config_path), "--run-dir", str(tmp_path / "vae"), *common]) == 0
    assert main(["train", str(tiny_config_path), "--run-dir", str(tmp_path / "lm"), *common,
                 "--set", "model.name=lstm_lm"]) == 0  # fmt: skip
    capsys.readouterr()
    for name in ("best.pt", "last.pt"):
        (tmp_path / "vae/checkpoints" / name).write_bytes((tmp_path / "lm/checkpoints/last.pt").read_bytes())
    assert main(["evaluate", str(tmp_path / "vae"), "--iw-samples", "2"]) == 2
    assert "another model config" in capsys.readouterr().err
    (tmp_path / "vae/checkpoints/last.pt").write_bytes(b"not a checkpoint")
    assert main(["train", str(tiny_config_path), "--run-dir", str(tmp_path / "vae"), *common]) == 2
    assert "not a readable textvae checkpoint" in capsys.readouterr().err


def test_learning_rate_warmup_scales_the_first_steps(tmp_path):
    config = config_lib.from_dict({"optim": {"name": "sgd", "lr": 0.01, "warmup_steps": 4, "grad_clip": 0.0},
                                   "train": {"max_steps": 6, "eval_every": 100, "device": "cpu"}})  # fmt: skip
    model = _Exploding(good=10**9)
    trainer = Trainer(model, _Source(), lambda m: {}, config, tmp_path, torch.device("cpu"))
    steps = []
    for step in range(6):
        trainer.position.step = step
        batch = _Source().collate([1])
        before = model.weight.detach().clone()
        trainer.train_step(batch)
        gradient = model.weight.grad.detach().clone()
        steps.append(float(((before - model.weight.detach()) / gradient).mean()))  # the LR actually used
    assert steps == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01], rel=1e-4)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.01  # the scheduler's LR is left as it was
