"""Kill a training run with SIGKILL at random moments, resume it each time, compare with an uninterrupted run.

    python scripts/fault_inject.py [--kills 20] [--steps 1000] [--window 0.3] [--seed 0] [--json]

Trains configs/text/tiny.yaml on a generated corpus, once straight through and once killed `--kills`
times and resumed with the same command after each kill. Each kill falls at a random moment within
`--window` seconds after the process's first checkpoint write; checkpoints are written every 2 steps,
so some kills land in the middle of a write. Prints the kills, the resumes, how many kills left a
half-written checkpoint behind, and the largest absolute difference between the final parameters
of the two runs (0 on CPU: the resumed run computes exactly what the uninterrupted one did).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, lines: int = 400) -> None:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(60)]
    text = "\n".join(" ".join(rng.choices(words, k=rng.randint(1, 14))) for _ in range(lines))
    path.write_text(text + "\n", encoding="utf-8")


def command(corpus: Path, run_dir: Path, steps: int) -> list[str]:
    overrides = [f"data.corpus={corpus}", f"train.max_steps={steps}", "train.eval_every=20",
                 "train.checkpoint_every=2", "train.num_threads=1", "model.word_dropout=0.2"]  # fmt: skip
    args = [sys.executable, "-m", "textvae", "train", str(ROOT / "configs/text/tiny.yaml"), "--run-dir", str(run_dir)]
    for item in overrides:
        args += ["--set", item]
    return args


def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def finished(run_dir: Path, steps: int) -> bool:
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return False
    return torch.load(last, weights_only=True)["position"]["step"] >= steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--window", type=float, default=0.3, help="seconds after a checkpoint within which to kill")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env.setdefault("TEXTVAE_CACHE_DIR", str(tmp / "cache"))
        corpus = tmp / "corpus.txt"
        write_corpus(corpus)
        subprocess.run(command(corpus, tmp / "straight", args.steps), env=env, check=True, capture_output=True)

        kills = resumes = torn_writes = 0
        run_dir = tmp / "killed"
        while kills < args.kills and not finished(run_dir, args.steps):
            if (run_dir / "checkpoints" / "last.pt").is_file():
                resumes += 1
            before = mtime(run_dir / "checkpoints" / "last.pt")
            process = subprocess.Popen(command(corpus, run_dir, args.steps), env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)  # fmt: skip
            # Wait until this process has written a checkpoint, so the kill lands in training, not start-up.
            while process.poll() is None and mtime(run_dir / "checkpoints" / "last.pt") == before:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, args.window))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait()
            torn_writes += any((run_dir / "checkpoints").glob("*.tmp")) if (run_dir / "checkpoints").is_dir() else 0
        if (run_dir / "checkpoints" / "last.pt").is_file():
            resumes += 1
        subprocess.run(command(corpus, run_dir, args.steps), env=env, check=True, capture_output=True)

        a = torch.load(tmp / "straight/checkpoints/last.pt", weights_only=True)
        b = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
        diff = max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"])
        result = {
            "kills": kills,
            "resumes": resumes,
            "kills_during_checkpoint_write": torn_writes,
            "steps": args.steps,
            "final_step": b["position"]["step"],
            "max_abs_param_diff": diff,
            "positions_equal": a["position"] == b["position"],
        }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>30}  {value}")


if __name__ == "__main__":
    main()
