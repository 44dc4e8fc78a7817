"""scripts/device_check.sh, the one-call GPU check, rehearsed on a CPU at tiny sizes (slow: ~3 minutes), so that
the script a 15-minute device window depends on does not rot between the windows."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_device_check_runs_every_stage_on_a_cpu(corpus_dir, tmp_path):
    out = tmp_path / "out"
    tiny = ("--set model.hidden_size=32 --set model.embedding_dim=16 --set train.num_threads=1 "
            "--set train.max_tokens=400 --set train.batch_size=16 --set train.eval_every=20 "
            f"--set data.corpus={corpus_dir}")  # fmt: skip
    env = dict(os.environ, OUT=str(out), DEVICE="cpu", PRECISION="fp32", STEPS="3", MINUTES="0.2", IW="3",
               EXTRA=tiny, PY="python")  # fmt: skip
    subprocess.run(["bash", "scripts/device_check.sh"], cwd=ROOT, env=env, check=True, capture_output=True)
    lines = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    benches, evaluation, quality = lines[:4], lines[4], lines[5]
    assert len(lines) == 6
    assert [b["precision"] for b in benches] == ["fp32"] * 4 and all(b["tokens_per_s"] > 0 for b in benches)
    assert evaluation["iw_samples"] == 3 and evaluation["sentences"] == 40  # the whole tiny test split
    assert quality["target_nll"] == 100.0 and quality["step"] > 0
    test = json.loads((out / "test_eval.json").read_text())
    assert test["split"] == "test" and test["iw_samples"] == 3 and test["sentences"] == 40
    assert (out / "train_metrics.jsonl").is_file() and "done" in (out / "device_check.log").read_text()
