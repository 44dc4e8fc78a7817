"""Benchmark scripts run and print their figures (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_eval_prints_its_figures(tiny_config_path, corpus_dir):
    command = [sys.executable, str(ROOT / "scripts/bench_eval.py"), str(tiny_config_path), "--set",
               f"data.corpus={corpus_dir}", "--iw-samples", "4", "--sentences", "10", "--json"]  # fmt: skip
    result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    for key in ("tokens_per_s", "achieved_gflops", "matmul_gflops", "ratio", "peak_mem_mb"):
        assert result[key] >= 0, key
    assert result["sentences"] == 10 and result["iw_samples"] == 4 and result["nll"] > 0


def test_bench_train_prints_its_figures(tiny_config_path, corpus_dir):
    command = [sys.executable, str(ROOT / "scripts/bench_train.py"), str(tiny_config_path), "--set",
               f"data.corpus={corpus_dir}", "--steps", "3", "--json"]  # fmt: skip
    result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    for key in ("tokens_per_s", "achieved_gflops", "matmul_gflops", "ratio", "step_shapes_gflops", "peak_mem_mb"):
        assert result[key] > 0, key
    assert result["steps"] == 3 and result["sentences_per_batch"] > 0


def _bench_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts/bench_train.py"), *args], capture_output=True, text=True)


def test_time_to_quality_is_read_off_a_runs_log(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    curve = [(200, 1, 12.5, 120.0), (400, 2, 25.0, 101.0), (600, 3, 37.5, 99.5), (800, 5, 50.0, 98.0),
             (1000, 6, 62.5, 98.4)]  # fmt: skip
    run.joinpath("metrics.jsonl").write_text("".join(
        json.dumps({"step": step, "epoch": epoch, "seconds": seconds, "split": "valid",
                    "metrics": {"nll": nll, "iw_samples": 5}}) + "\n"
        for step, epoch, seconds, nll in curve))  # fmt: skip
    reached = json.loads(_bench_train("--to-quality", "100", "--from-run", str(run), "--json").stdout)
    assert reached["reached"] and (reached["step"], reached["epoch"], reached["wall_s"]) == (600, 3, 37.5)
    assert reached["val_nll"] == 99.5 and reached["iw_samples"] == 5 and reached["tokens_per_s"] is None
    assert (reached["best_nll"], reached["best_step"]) == (99.5, 600)  # the best up to the first reaching
    missed = json.loads(_bench_train("--to-quality", "90", "--from-run", str(run), "--json").stdout)
    assert not missed["reached"] and (missed["step"], missed["val_nll"]) == (1000, 98.4)  # where the run ended
    assert (missed["best_nll"], missed["best_step"]) == (98.0, 800)  # and how close it came
    assert reached["phase"] == missed["phase"] == "train"
    with run.joinpath("metrics.jsonl").open("a") as handle:  # an encoder refit's row after training (core/refit.py)
        handle.write(json.dumps({"step": 1100, "epoch": 7, "seconds": 70.0, "split": "valid", "phase": "refit",
                                 "metrics": {"nll": 97.5, "iw_samples": 5}}) + "\n")  # fmt: skip
    refit = json.loads(_bench_train("--to-quality", "97.9", "--from-run", str(run), "--json").stdout)
    assert refit["reached"] and (refit["step"], refit["wall_s"], refit["phase"]) == (1100, 70.0, "refit")

    empty = _bench_train("--to-quality", "100", "--from-run", str(tmp_path))
    assert empty.returncode != 0 and empty.stderr.strip().splitlines() == [
        f"bench_train: {tmp_path} has no metrics.jsonl (not a run directory, or never evaluated)"
    ]
    assert _bench_train("--from-run", str(run)).returncode == 2  # --from-run needs --to-quality
    assert "warning" not in _bench_train("--to-quality", "100", "--from-run", str(run)).stderr
    other = tmp_path / "iw10"
    other.mkdir()
    row = {"step": 200, "epoch": 1, "seconds": 1.0, "split": "valid", "metrics": {"nll": 99.0, "iw_samples": 10}}
    other.joinpath("metrics.jsonl").write_text(json.dumps(row) + "\n")
    assert "validates with IW-10, not the IW-5" in _bench_train("--to-quality", "100", "--from-run", str(other)).stderr


def test_training_flops_count_the_decoder_once_per_importance_sample():
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_train import step_flops

    from textvae import config as config_lib
    from textvae.models.lstm_vae import LSTMVAE

    iwae = config_lib.from_dict({"objective": {"iw_samples": 10, "free_bits": 0.0}})
    expected = 3.0 * LSTMVAE.flops(iwae.model, 10000, 2300, 100, samples=10)
    assert step_flops(iwae, 10000, 2300, 100) == expected > 5 * step_flops(config_lib.from_dict({}), 10000, 2300, 100)
    pretraining = config_lib.from_dict({"objective": {"iw_samples": 10, "free_bits": 0.0, "pretrain_steps": 100}})
    assert step_flops(pretraining, 10000, 2300, 100) == step_flops(config_lib.from_dict({}), 10000, 2300, 100)


def test_the_own_lstm_of_the_lstm_bench_gives_the_fp64_gradients():
    """bench_lstm.py's LSTM of our own (the prototype docs/performance.md times against oneDNN's): its bf16
    gradients of the inputs, both initial states, the weights and the bias point where the fp64 LSTM's do."""
    command = [sys.executable, str(ROOT / "scripts/bench_lstm.py"), "--hidden", "24", "--inputs", "10", "--shapes",
               "5x4", "--own", "eager", "--repeats", "1"]  # fmt: skip
    if "bf16" not in subprocess.run([sys.executable, "-c", _HAS_BF16_LSTM], capture_output=True, text=True).stdout:
        command += ["--skip-onednn"]
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
    own = next(line for line in lines if line.startswith("eager"))
    cosines = [float(value) for value in own.split("fp64:")[1].split()[1::2]]
    assert len(cosines) == 6 and min(cosines) > 0.999, own


_HAS_BF16_LSTM = "from textvae.models.lstm_lm import onednn_bf16_lstm; print('bf16' if onednn_bf16_lstm() else '')"
