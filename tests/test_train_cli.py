"""End to end on the tiny config: train -> save -> resume -> evaluate, and the CLI's errors."""

import json
import logging
import math
import shutil
import subprocess
import sys

import pytest
import torch

from textvae import config as config_lib
from textvae.cli import main
from textvae.core.evaluation import spread
from textvae.core.run import check_resumable
from textvae.data.tokenizer import load_tokenizer
from textvae.dispatch import train
from textvae.errors import UserError
from textvae.pipeline import load_run


def _config(tiny_config_path, corpus_dir, *overrides):
    return config_lib.load(tiny_config_path, [f"data.corpus={corpus_dir}", *overrides])


def test_a_fresh_start_builds_its_tokenizer_over_one_an_unfinished_start_left(tiny_config_path, corpus_dir, tmp_path):
    # a start stopped before its first checkpoint (Ctrl-C while the corpus was encoded) leaves RUN_DIR/tokenizer;
    # the next start, with another vocabulary size and nothing to resume, must not reload it
    run = tmp_path / "run"
    train(_config(tiny_config_path, corpus_dir, "train.max_steps=2", "data.vocab_size=20"), run)
    small = len(load_tokenizer(run / "tokenizer"))
    shutil.rmtree(run / "checkpoints")
    train(_config(tiny_config_path, corpus_dir, "train.max_steps=2", "data.vocab_size=40"), run)
    assert len(load_tokenizer(run / "tokenizer")) == len(load_run(run).tokenizer) > small


def test_resumed_run_reaches_the_same_parameters(tiny_config_path, corpus_dir, tmp_path):
    # word dropout and embedding dropout on, so that the RNG state must be restored exactly too
    extra = ("model.word_dropout=0.3", "model.embedding_dropout=0.2", "train.eval_every=4", "optim.lr_patience=0")
    train(_config(tiny_config_path, corpus_dir, "train.max_steps=12", *extra), tmp_path / "straight")
    train(_config(tiny_config_path, corpus_dir, "train.max_steps=6", *extra), tmp_path / "resumed")
    train(_config(tiny_config_path, corpus_dir, "train.max_steps=12", *extra), tmp_path / "resumed")
    straight = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)
    assert straight["position"] == resumed["position"]
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert straight["scheduler"] == resumed["scheduler"]
    records = [json.loads(line) for line in (tmp_path / "resumed/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 6, 8, 12]  # the first run's report-only evaluation kept, none doubled
    seconds = [r["seconds"] for r in records]
    assert 0 < seconds[0] and seconds == sorted(seconds)  # the training clock goes on across the resume
    exp_avg = [s["exp_avg"] for s in straight["optimizer"]["state"].values()]
    exp_avg_resumed = [s["exp_avg"] for s in resumed["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(exp_avg, exp_avg_resumed))


def test_a_stop_in_the_evaluation_that_ends_pretraining_resumes_as_a_straight_run(
    tiny_config_path, corpus_dir, tmp_path, monkeypatch
):  # fmt: skip
    # last.pt is written where pretraining ends (after the decoder reset), before that step's evaluation and
    # pretrained.pt: a stop in that evaluation resumed past both, and the LR schedule and best.pt missed it
    from textvae.core.trainer import Trainer

    extra = ("objective.pretrain_steps=4", "objective.reset_decoder=true", "train.eval_every=4", "train.max_steps=8",
             "optim.lr_patience=0")  # fmt: skip
    train(_config(tiny_config_path, corpus_dir, *extra), tmp_path / "straight")
    evaluate = Trainer.evaluate

    def stopped_at_the_end_of_pretraining(self, logs, scheduled=True):
        if self.position.step == 4:
            raise KeyboardInterrupt
        return evaluate(self, logs, scheduled)

    monkeypatch.setattr(Trainer, "evaluate", stopped_at_the_end_of_pretraining)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_config_path, corpus_dir, *extra), tmp_path / "resumed")
    assert not (tmp_path / "resumed/checkpoints/pretrained.pt").exists()
    monkeypatch.undo()
    train(_config(tiny_config_path, corpus_dir, *extra), tmp_path / "resumed")
    straight, resumed = (torch.load(tmp_path / f"{name}/checkpoints/last.pt", weights_only=True)
                         for name in ("straight", "resumed"))  # fmt: skip
    assert straight["position"] == resumed["position"] and straight["scheduler"] == resumed["scheduler"]
    assert all(torch.equal(value, resumed["model"][key]) for key, value in straight["model"].items())
    rows = [json.loads(line)["step"] for line in (tmp_path / "resumed/metrics.jsonl").read_text().splitlines()]
    assert rows == [4, 8] and (tmp_path / "resumed/checkpoints/pretrained.pt").is_file()


def test_cli_trains_and_evaluates_the_tiny_config(tiny_config_path, corpus_dir, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="textvae.core.trainer")
    assert main(["train", str(tiny_config_path), "--set", f"data.corpus={corpus_dir}", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    # off a terminal the progress bar is silent: one log line every train.log_every (5) steps instead
    progress = [r.getMessage() for r in caplog.records if "tokens/s, ETA" in r.getMessage()]
    assert [line.split(":")[0] for line in progress] == [f"step {s}/20" for s in (5, 10, 15, 20)]
    assert str(run) in out and "tensorboard --logdir" in out
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt",
                 "tokenizer/vocab.txt", "tokenizer/tokenizer.json"):  # fmt: skip
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20]
    assert 0 < records[0]["seconds"] <= records[1]["seconds"]  # the training clock when each result was known
    assert all(r["split"] == "valid" and "nelbo" in r["metrics"] for r in records)

    assert main(["evaluate", str(run), "--iw-samples", "7", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("nelbo", "rec", "kl", "nll", "ppl", "mi", "au", "sentences", "tokens", "iw_samples"):
        assert key in metrics
    assert metrics["iw_samples"] == 7 and metrics["sentences"] == 40
    assert metrics["checkpoint_step"] in (10, 20)  # best.pt
    assert metrics["nll"] <= metrics["nelbo"] + 0.5  # IW bound is at least as tight as the ELBO (up to noise)

    assert main(["evaluate", str(run), "--iw-samples", "7", "--json", "--max-examples", "9"]) == 0
    part = json.loads(capsys.readouterr().out)
    assert part["sentences"] == 9 and part["max_examples"] == 9
    assert part["mi_over"] == "--max-examples part of the split, N = 9"  # MI over 9 examples: at most log 9
    assert part["mi_ceiling"] == pytest.approx(math.log(9)) and metrics["mi_ceiling"] == pytest.approx(math.log(40))
    assert main(["evaluate", str(run), "--iw-samples", "7", "--json", "--max-examples", "400"]) == 0
    assert json.loads(capsys.readouterr().out)["sentences"] == 40  # more than the split has: all of it


@pytest.mark.parametrize(("count", "limit", "expected"), [(10, 3, [0, 3, 6]), (5, None, [0, 1, 2, 3, 4]),
                                                         (3, 7, [0, 1, 2]), (3761, 500, None)])  # fmt: skip
def test_spread_picks_distinct_evenly_spaced_examples(count, limit, expected):
    picked = spread(count, limit)
    if expected is not None:
        assert picked == expected
    assert picked == sorted(set(picked)) and len(picked) == min(count, limit or count)
    gaps = {b - a for a, b in zip(picked, picked[1:])}
    assert max(gaps) - min(gaps) <= 1  # evenly: neighbouring gaps differ by at most one


def test_lm_baseline_reports_exact_nll_and_no_latent(tiny_config_path, corpus_dir, tmp_path, capsys):
    run = tmp_path / "lm"
    main(["train", str(tiny_config_path), "--set", f"data.corpus={corpus_dir}", "--set", "model.name=lstm_lm",
          "--set", "train.max_steps=5", "--run-dir", str(run)])  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "valid", "--iw-samples", "3", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["kl"] == metrics["mi"] == metrics["au"] == 0
    assert metrics["nll"] == pytest.approx(metrics["nelbo"])


def test_resuming_with_another_model_is_refused(tiny_config_path, corpus_dir, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", str(tiny_config_path), "--set", f"data.corpus={corpus_dir}", "--run-dir", str(run)]
    assert main(base + ["--set", "train.max_steps=3"]) == 0
    capsys.readouterr()
    assert main(base + ["--set", "model.hidden_size=32"]) == 2
    assert "model.hidden_size" in capsys.readouterr().err


def test_resuming_a_cyclical_schedule_with_other_max_steps_keeps_its_cycles(tmp_path):
    # cycle_total_steps 0 spans train.max_steps: a larger max_steps on resume (allowed, a train.* key) would
    # stretch the cycles, an objective change; refused, unless the span is named (then it is the run's own)
    def config(max_steps, *more):
        settings = ["objective.kl_schedule=cyclical", "objective.pretrain_steps=1000", f"train.max_steps={max_steps}"]
        return config_lib.from_dict(config_lib.apply_overrides({}, [*settings, *more]))

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints/last.pt").write_bytes(b"")
    config_lib.save(config(9000), tmp_path / "config.yaml")
    with pytest.raises(UserError, match="add --set objective.cycle_total_steps=8000"):
        check_resumable(config(17000), tmp_path)
    check_resumable(config(17000, "objective.cycle_total_steps=8000"), tmp_path)
    with pytest.raises(UserError, match="KL cycles span 8000"):
        check_resumable(config(9000, "objective.cycle_total_steps=4000"), tmp_path)
    config_lib.save(config(9000, "objective.kl_schedule=linear"), tmp_path / "config.yaml")
    check_resumable(config(17000, "objective.kl_schedule=linear"), tmp_path)  # no cycles to move


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("textvae: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_gives_one_clear_line(tiny_config_path, corpus_dir, tmp_path, capsys):
    tiny, run = str(tiny_config_path), str(tmp_path / "r")
    assert "config file not found" in _error(capsys, ["train", str(tmp_path / "none.yaml")])
    assert "unknown config key train.max_stepz" in _error(capsys, ["train", tiny, "--set", "train.max_stepz=3"])
    assert "expected int" in _error(capsys, ["train", tiny, "--set", "train.max_steps=abc"])
    assert "corpus not found" in _error(
        capsys, ["train", tiny, "--set", f"data.corpus={tmp_path / 'missing.txt'}", "--run-dir", run]
    )
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok line\n\xc3\x28 broken\n")
    assert "line 2 is not valid UTF-8" in _error(
        capsys, ["train", tiny, "--set", f"data.corpus={bad}", "--run-dir", run]
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    assert "empty" in _error(capsys, ["train", tiny, "--set", f"data.corpus={empty}", "--run-dir", run])
    assert "run directory not found" in _error(capsys, ["evaluate", str(tmp_path / "nope")])
    assert "--max-examples must be at least 1" in _error(capsys, ["evaluate", run, "--max-examples", "0"])
    (tmp_path / "notrun").mkdir()
    assert "not a textvae run directory" in _error(capsys, ["evaluate", str(tmp_path / "notrun")])


def test_console_script_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "textvae", "train", str(tmp_path / "missing.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"textvae: error: config file not found: {tmp_path / 'missing.yaml'}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_run_on_cuda(tiny_config_path, corpus_dir, tmp_path):
    config = _config(tiny_config_path, corpus_dir, "train.device=cuda", "train.precision=bf16")
    metrics = train(config, tmp_path / "cuda")
    assert metrics is not None and metrics["nelbo"] > 0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])  # fmt: skip
def test_a_run_with_weight_drop_and_averaged_weights_resumes_and_evaluates(tiny_config_path, corpus_dir, tmp_path,
                                                                            device, capsys):  # fmt: skip
    sets = ("model.weight_drop=0.3", "optim.average=uniform", "optim.average_from_step=2", "train.eval_every=4",
            f"train.device={device}")  # fmt: skip
    run = tmp_path / "run"
    train(_config(tiny_config_path, corpus_dir, "train.max_steps=6", *sets), run)
    train(_config(tiny_config_path, corpus_dir, "train.max_steps=8", *sets), run)  # the average loaded, then moved
    last = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert last["average"]["count"] == 6  # steps 2..7
    best = torch.load(run / "checkpoints/best.pt", weights_only=True)
    assert best["average"] == {"count": best["position"]["step"] - 2, "averages": []}  # its weights are the average
    model = load_run(run).model
    for name, param in model.named_parameters():
        assert torch.equal(param.cpu(), best["model"][name].cpu()), name
    capsys.readouterr()
    assert main(["evaluate", str(run), "--iw-samples", "2", "--json"]) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)["nll"])


def test_subword_run_reports_perplexity_per_word(tiny_config_path, corpus_dir, tmp_path, capsys):
    import math

    run = tmp_path / "spm"
    overrides = ["data.tokenizer=sentencepiece", "data.vocab_size=30", "model.name=transformer_vae",
                 "model.max_positions=64", "train.max_steps=4", f"data.corpus={corpus_dir}"]  # fmt: skip
    argv = ["train", str(tiny_config_path), "--run-dir", str(run)]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--iw-samples", "3", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["ppl_per"] == "word"
    tokenizer = load_tokenizer(run / "tokenizer")

    def words_encoded(line):  # words whose first piece is among the first 20 (tiny.yaml's data.max_length)
        pieces = [len(tokenizer.encode(word)) for word in line.split()]
        return sum(1 for j in range(len(pieces)) if sum(pieces[:j]) < 20)

    lines = (corpus_dir / "test.txt").read_text().splitlines()
    words = sum(words_encoded(line) + 1 for line in lines)
    assert metrics["words"] == words < sum(len(line.split()) + 1 for line in lines)  # some lines are cut
    assert metrics["tokens"] != words
    assert metrics["ppl"] == pytest.approx(math.exp(metrics["nll"] * metrics["sentences"] / words), rel=1e-6)


def test_max_minutes_stops_a_run_evaluated_and_resumes_with_the_time_spent(tiny_config_path, corpus_dir, tmp_path,
                                                                           monkeypatch):  # fmt: skip
    """A clock that moves a minute per reading: read when the trainer is built, at the loop's start, once per
    step and once after each evaluation (whose minute counts: the checkpoint after it keeps it)."""
    from textvae.core import trainer as trainer_module

    ticks = iter(range(0, 10**6, 60))
    monkeypatch.setattr(trainer_module, "monotonic", lambda: next(ticks))
    run = tmp_path / "run"
    train(_config(tiny_config_path, corpus_dir, "train.max_minutes=3.5", "train.eval_every=10"), run)
    state = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert state["position"]["step"] == 4 and state["seconds"] == 300  # 4 minutes >= 3.5 after step 4, + the eval
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["seconds"]) for r in records] == [(4, 300)]  # evaluated where it stopped
    ticks = iter(range(0, 10**6, 60))  # a new session's clock starts anywhere; only differences count
    monkeypatch.setattr(trainer_module, "monotonic", lambda: next(ticks))
    train(_config(tiny_config_path, corpus_dir, "train.max_minutes=6.5", "train.eval_every=10"), run)
    state = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert state["position"]["step"] == 6 and state["seconds"] == 480  # 5 + 2 steps' minutes >= 6.5, + the eval
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["seconds"]) for r in records] == [(4, 300), (6, 480)]
    # the same command again: its budget is spent, so it trains no further step (nor evaluates, nor refits)
    train(_config(tiny_config_path, corpus_dir, "train.max_minutes=6.5", "train.eval_every=10"), run)
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["position"]["step"] == 6
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
