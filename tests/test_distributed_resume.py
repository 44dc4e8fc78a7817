"""Exact resume under torchrun: kill the launcher's process group after a checkpoint, resume, compare."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MAX_STEPS = 24
LAUNCHER = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _command(config: Path, corpus: Path, run_dir: Path) -> list[str]:
    """`textvae train` under torchrun, 2 CPU processes (gloo), each rank's final parameters dumped."""
    options = ["data.corpus=" + str(corpus), f"train.max_steps={MAX_STEPS}", "train.checkpoint_every=2",
               "train.eval_every=8", "train.num_threads=1"]  # fmt: skip
    overrides = [arg for option in options for arg in ("--set", option)]
    return [*LAUNCHER, str(HERE / "ddp_worker.py"), "train", str(config), *overrides, "--run-dir", str(run_dir)]


def _start(command: list[str], log: Path) -> subprocess.Popen:
    """Start `command` in a session of its own, output to a file (a surviving worker would hold a pipe open)."""
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)


def _finish(process: subprocess.Popen, log: Path) -> None:
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _checkpoint_step(run_dir: Path) -> int:
    """The step of last.pt (written atomically, so never half-read), -1 before the first one."""
    path = run_dir / "checkpoints" / "last.pt"
    return torch.load(path, weights_only=True)["position"]["step"] if path.is_file() else -1


def _wait_for_checkpoint(run_dir: Path, step: int, process: subprocess.Popen) -> list[int]:
    """Wait until last.pt reaches `step` (or the run ends); return the launcher's workers' process ids."""
    path, seen, workers = run_dir / "checkpoints" / "last.pt", None, []
    deadline = time.time() + 120
    while process.poll() is None and time.time() < deadline:
        workers = _children(process.pid) or workers
        stamp = path.stat().st_mtime_ns if path.is_file() else None
        if stamp != seen:  # read the checkpoint only when it changed: the workers need the CPU
            seen = stamp
            if _checkpoint_step(run_dir) >= step:
                break
        time.sleep(0.02)
    return workers


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_torchrun_killed_after_a_checkpoint_resumes_to_identical_parameters(tiny_config_path, corpus_dir, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # the uninterrupted run goes alongside the one to kill: torchrun's start-up leaves the 2 CPUs half idle
    reference = _start(_command(tiny_config_path, corpus_dir, straight), tmp_path / "straight.log")
    launcher = _start(_command(tiny_config_path, corpus_dir, killed), tmp_path / "killed.log")
    target = random.randrange(2, MAX_STEPS - 6, 2)  # a checkpoint step (train.checkpoint_every=2)
    workers: list[int] = []
    try:
        workers = _wait_for_checkpoint(killed, target, launcher)
        assert launcher.poll() is None, f"the run ended before step {target}: {(tmp_path / 'killed.log').read_text()}"
        os.killpg(launcher.pid, signal.SIGKILL)  # the launcher's group; torchrun starts each worker in its own
        launcher.wait()
        deadline = time.time() + 10
        while any(_alive(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.05)
        assert workers and not any(_alive(pid) for pid in workers), "workers outlived their torchrun launcher"
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        _finish(reference, tmp_path / "straight.log")
    stopped_at = _checkpoint_step(killed)
    assert stopped_at < MAX_STEPS, "the killed run's workers trained on to the end without their launcher"
    assert stopped_at >= target and not (killed / "params_rank0.pt").exists()

    _finish(_start(_command(tiny_config_path, corpus_dir, killed), tmp_path / "resumed.log"), tmp_path / "resumed.log")
    assert f"resumed {killed} at step {stopped_at}" in (tmp_path / "resumed.log").read_text()
    expected = torch.load(straight / "params_rank0.pt", weights_only=True)
    for rank in (0, 1):
        resumed = torch.load(killed / f"params_rank{rank}.pt", weights_only=True)
        for key, value in expected.items():
            assert torch.equal(resumed[key], value), f"{key} differs on rank {rank} (killed after step {target})"
    assert _checkpoint_step(killed) == _checkpoint_step(straight) == MAX_STEPS
