"""DistributedDataParallel under torchrun on CPU (gloo): same parameters on every rank, same as one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

HERE = Path(__file__).resolve().parent


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _worker(launcher: list[str], command: list[str], run_dir) -> None:
    """ddp_worker.py (`textvae train` dumping each rank's parameters) under `launcher`, one thread a process."""
    result = subprocess.run(
        [*launcher, str(HERE / "ddp_worker.py"), *command, "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _losses(run):
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return [e.value for e in events.Scalars("train/loss")]


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_config_path, corpus_dir, tmp_path):
    # The LM without dropout is deterministic, so one process and two must agree up to float rounding.
    common = ["train", str(tiny_config_path), "--set", f"data.corpus={corpus_dir}", "--set", "model.name=lstm_lm",
              "--set", "train.max_steps=6", "--set", "train.log_every=1", "--set", "train.eval_every=3",
              "--set", "train.num_threads=1"]  # fmt: skip
    _worker(TORCHRUN, common, tmp_path / "ddp")
    _worker([sys.executable], common, tmp_path / "one")

    rank0 = torch.load(tmp_path / "ddp/params_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp/params_rank1.pt", weights_only=True)
    alone = torch.load(tmp_path / "one/params_rank0.pt", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key  # DDP keeps the ranks identical
        assert torch.allclose(rank0[key], alone[key], atol=1e-5), key
    assert not (tmp_path / "ddp/params_rank0.pt").samefile(tmp_path / "one/params_rank0.pt")

    ddp_losses, single_losses = _losses(tmp_path / "ddp"), _losses(tmp_path / "one")
    assert len(ddp_losses) == len(single_losses) == 6
    assert all(abs(a - b) < 1e-4 * abs(b) for a, b in zip(ddp_losses, single_losses))
    # rank 0 alone wrote the run: one metrics line per evaluation, validation reduced over both ranks
    ddp_metrics = (tmp_path / "ddp/metrics.jsonl").read_text().splitlines()
    one_metrics = (tmp_path / "one/metrics.jsonl").read_text().splitlines()
    assert len(ddp_metrics) == len(one_metrics) == 2

    a, b = json.loads(ddp_metrics[-1])["metrics"], json.loads(one_metrics[-1])["metrics"]
    assert a["sentences"] == b["sentences"] and a["tokens"] == b["tokens"]
    assert abs(a["nll"] - b["nll"]) < 1e-3


def test_every_process_refits_the_same_encoder_and_rank_zero_alone_logs_it(tiny_config_path, corpus_dir, tmp_path):
    sets = [f"data.corpus={corpus_dir}", "train.max_steps=6", "train.eval_every=3", "train.num_threads=1",
            "train.refit_encoder_steps=6", "train.refit_encoder_lr=0.01", "model.output_dropout=0.3"]  # fmt: skip
    command = ["train", str(tiny_config_path), *(item for key in sets for item in ("--set", key))]
    _worker(TORCHRUN, command, tmp_path / "ddp")
    rank0 = torch.load(tmp_path / "ddp/refit_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp/refit_rank1.pt", weights_only=True)
    trained = torch.load(tmp_path / "ddp/params_rank0.pt", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert not torch.equal(rank0["encoder.weight_ih_l0"], trained["encoder.weight_ih_l0"])  # the encoder moved
    assert torch.equal(rank0["decoder.output.weight"], trained["decoder.output.weight"])  # the decoder did not
    rows = [json.loads(line) for line in (tmp_path / "ddp/metrics.jsonl").read_text().splitlines()]
    assert [(row["step"], row.get("phase")) for row in rows] == [(3, None), (6, None), (9, "refit"), (12, "refit")]
