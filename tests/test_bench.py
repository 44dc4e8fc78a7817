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
