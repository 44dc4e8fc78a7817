"""Reproduce a comparison table: one model, data, step budget and evaluation for every run of a suite.

    python scripts/reproduce.py                      # suite ptb: the posterior-collapse remedies on PTB
    python scripts/reproduce.py --suite ptb_gaps     # Gaussian / IAF / IWAE posteriors and the inference gaps
    python scripts/reproduce.py --suite mnist_gaps   # the same on MNIST with the image VAE
    python scripts/reproduce.py --suite ptb_paper    # the published PTB table at paper scale, to convergence
    python scripts/reproduce.py --steps 600 --iw-samples 50 --out results/quick.md   # a quick look
    python scripts/reproduce.py --jobs 2 --threads 1 # two runs at a time, one thread each

Every run lives in RUNS_DIR/NAME (default runs/reproduce/SUITE/NAME) and resumes like any `textvae train`
run; its test evaluation is kept in RUNS_DIR/NAME/test_iw{K}.json (test_iw{K}_n{N}.json when a suite or
--eval-examples evaluates N test examples). All runs are trained first, then evaluated (a killed training
resumes; a killed evaluation starts over). Running the command again continues a half-finished suite:
finished trainings and evaluations are not repeated. The table goes to --out (results/SUITE.md), the KL and
reconstruction curves of all runs to the PNG next to it, and each finished row's record (its test result, how far
it trained, its validation curve) to results/SUITE/NAME_test_iw{K}.json: the table outlives the run directories,
and a row whose run directory is gone but whose record is kept is not trained again (delete the record to
retrain it). The table, plot and records are written by scripts/suite_report.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from suite_report import record_path, result_file, training_state, training_tokens_per_s, write_report  # noqa: E402
from suites import SHARED_PRETRAINING_KEYS, SUITES, Entry  # noqa: E402

from textvae import config as config_lib  # noqa: E402
from textvae.core.device import cpu_name, resolve_device  # noqa: E402
from textvae.errors import TrainingStopped, UserError, require_extra  # noqa: E402

log = logging.getLogger("reproduce")


def run_config(
    base: Path, entry: Entry, steps: int, extra: list[str], shared: tuple[str, ...] = (), converge: bool = False
) -> list[str]:
    """All overrides of one run: the suite's shared settings, the entry's, the shared budget, then the user's.

    `converge`: the step budget is only a cap; the config's evaluation grid and early stopping decide the end.
    """
    steps = max(1, round(steps * entry.budget))
    budget = [f"train.max_steps={steps}"]
    if not converge:
        budget += [f"train.eval_every={max(1, steps // 4)}", "train.early_stopping=0"]
    overrides = [*shared, *entry.overrides(steps), *budget, *extra]
    config_lib.load(base, overrides)  # fail early, with the config's own one-line error
    return overrides


def train_run(base: Path, entry: Entry, run_dir: Path, overrides: list[str]) -> None:
    """Train (or resume) one run unless it is finished. timing.json keeps the machines it trained on (written
    before training, so that a kill cannot lose them) and whether it finished; the training time is the trainer's
    own clock (`training_state`), which its checkpoints carry across every kill and resume."""
    from textvae.dispatch import train

    timing_path = run_dir / "timing.json"
    timing = json.loads(timing_path.read_text(encoding="utf-8")) if timing_path.is_file() else {}
    config = config_lib.load(base, overrides)
    if timing.get("trained"):
        warn_if_trained_otherwise(entry, config, run_dir)
        return
    if entry.shares_pretraining and not (run_dir / "checkpoints" / "last.pt").is_file():
        start_from_shared_pretraining(entry, config, run_dir, timing)
    machine = torch.cuda.get_device_name() if resolve_device(config.train.device).type == "cuda" else cpu_name()
    timing["machines"] = [*[m for m in timing.get("machines", []) if m != machine], machine]  # all it trained on
    timing.pop("train_s", None)  # before 2026-12-04 kept here, and lost with every kill: the checkpoint's clock now
    run_dir.mkdir(parents=True, exist_ok=True)
    timing_path.write_text(json.dumps(timing), encoding="utf-8")
    log.info("%s: training (%s)", entry.name, " ".join(overrides))
    train(config, run_dir)
    timing["trained"] = True
    timing_path.write_text(json.dumps(timing), encoding="utf-8")


def config_differences(config, theirs: dict) -> list[str]:
    """The dotted keys whose value in `config` differs from the saved config `theirs` (a dict of sections)."""
    ours = config_lib.to_dict(config)
    return sorted(f"{section}.{key}" for section in ours for key in ours[section]
                  if ours[section][key] != theirs.get(section, {}).get(key))  # fmt: skip


def warn_if_trained_otherwise(entry: Entry, config, run_dir: Path) -> None:
    """A finished row is kept as it is; one whose saved config differs from the row's today (beyond train.*) says
    so, with the keys, since its figures are not those of today's command."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    differing = [key for key in config_differences(config, config_lib.to_dict(config_lib.load(saved_path)))
                 if not key.startswith("train.")]  # fmt: skip
    if differing:
        log.warning("%s: finished with another config (%s differ from this command's); its results are kept: delete "
                    "%s to train the row again", entry.name, ", ".join(differing), run_dir)  # fmt: skip


def start_from_shared_pretraining(entry: Entry, config, run_dir: Path, timing: dict) -> None:
    """Start `entry`'s VAE phase from the autoencoder of the run it shares it with, when that run has finished
    its pretraining: its pretrained.pt becomes this run's last.pt (with the trainer's clock: its training time),
    its evaluations up to there this run's, its machines this run's `timing`'s."""
    source = run_dir.parent / entry.shares_pretraining
    pretrained = source / "checkpoints" / "pretrained.pt"
    if not pretrained.is_file():
        return
    state = torch.load(pretrained, map_location="cpu", weights_only=True)
    differing = config_differences(config, state["config"])
    if set(differing) - set(SHARED_PRETRAINING_KEYS):
        raise UserError(f"{entry.name} cannot start from {pretrained}: its config differs in "
                        f"{', '.join(sorted(set(differing) - set(SHARED_PRETRAINING_KEYS)))}")  # fmt: skip
    step = int(state["position"]["step"])
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pretrained, run_dir / "checkpoints" / "last.pt")
    metrics = source / "metrics.jsonl"
    if metrics.is_file():
        kept = [line for line in metrics.read_text(encoding="utf-8").splitlines() if json.loads(line)["step"] <= step]
        (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    source_timing = source / "timing.json"
    machines = []
    if source_timing.is_file():
        machines = json.loads(source_timing.read_text(encoding="utf-8")).get("machines", [])
    timing["machines"] = [*machines, *[m for m in timing.get("machines", []) if m not in machines]]
    log.info("%s: starts its VAE phase from %s (step %d), the autoencoder it shares", entry.name, pretrained, step)


def evaluate_once(
    entry: Entry, run_dir: Path, iw_samples: int, precision: str, gaps: dict | None, examples: int | None
) -> dict:
    """Evaluate a trained run on test once (kept in its result_file); return the stored result."""
    from textvae.dispatch import evaluate_run

    result_path = run_dir / result_file(iw_samples, examples)
    if result_path.is_file():
        return json.loads(result_path.read_text(encoding="utf-8"))
    log.info("%s: evaluating on test with %d importance samples", entry.name, iw_samples)
    start = time.perf_counter()
    metrics = evaluate_run(run_dir, "test", iw_samples, precision, gaps=gaps, max_examples=examples)
    metrics["eval_s"] = time.perf_counter() - start
    metrics["train_s"] = training_state(run_dir)["seconds"]
    metrics["tokens_per_s"] = training_tokens_per_s(run_dir)
    metrics["machines"] = json.loads((run_dir / "timing.json").read_text(encoding="utf-8")).get("machines", [])
    result_path.write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="ptb", choices=sorted(SUITES))
    parser.add_argument(
        "--config", type=Path, help="the base config of every run (default: the run's own, else the suite's)"
    )
    parser.add_argument("--runs-dir", type=Path, help="default: runs/reproduce/SUITE")
    parser.add_argument("--out", type=Path, help="the table (default: results/SUITE.md; the plot next to it)")
    parser.add_argument("--steps", type=int, help="the step budget of every run (default: the suite's)")
    parser.add_argument("--iw-samples", type=int, help="importance samples on test (default: the suite's)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"), help="of the evaluation")
    parser.add_argument("--eval-examples", type=int, help="test examples to evaluate, spread evenly over the "
                        "split (default: the suite's; 0: all)")  # fmt: skip
    parser.add_argument("--only", default="", help="comma-separated run names (default: the whole suite)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each in its own process)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="applied to every run, after the suite's own settings")  # fmt: skip
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the table and plot from what is finished; train and evaluate nothing",
    )
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    suite = SUITES[args.suite]

    def base(entry: Entry) -> Path:  # --config, else the run's own config, else the suite's
        return args.config or ROOT / (entry.config or suite.config)

    args.runs_dir = args.runs_dir or Path("runs/reproduce") / args.suite
    args.out = args.out or Path("results") / f"{args.suite}.md"
    args.steps = suite.steps if args.steps is None else args.steps  # 0 is refused below, not the default
    args.iw_samples = suite.iw_samples if args.iw_samples is None else args.iw_samples
    args.eval_examples = suite.eval_examples if args.eval_examples is None else args.eval_examples or None

    def recorded(entry: Entry) -> bool:  # a record, and no run directory to resume or to evaluate
        record = record_path(args.out, entry.name, args.iw_samples, args.eval_examples)
        return record.is_file() and not (args.runs_dir / entry.name).exists()

    names = [n for n in args.only.split(",") if n] or [e.name for e in suite.entries]
    try:
        unknown = sorted(set(names) - {e.name for e in suite.entries})
        if unknown:
            raise UserError(f"--only: unknown run(s) {', '.join(unknown)} (suite {args.suite}: "
                            f"{', '.join(e.name for e in suite.entries)})")  # fmt: skip
        if args.steps <= 0 or args.iw_samples <= 0 or args.jobs <= 0 or (args.eval_examples or 0) < 0:
            raise UserError("--steps, --iw-samples and --jobs must be positive, --eval-examples not negative")
        if not args.no_report:  # before hours of training, not after
            require_extra("plots", "the suite's report (its plot) needs", "matplotlib")
        chosen = [e for e in suite.entries if e.name in names]
        for entry in [e for e in chosen if recorded(e)]:  # its run directory is gone: the record is the row
            log.info("%s: finished earlier, its record %s kept (delete it to train the row again)", entry.name,
                     record_path(args.out, entry.name, args.iw_samples, args.eval_examples))  # fmt: skip
            chosen.remove(entry)
        plans = {e.name: run_config(base(e), e, args.steps, args.overrides, suite.overrides, suite.converge)
                 for e in chosen}  # fmt: skip
        if args.threads:
            torch.set_num_threads(args.threads)
        failed = []
        if args.report_only:
            pass
        elif args.jobs == 1:  # every training first (they resume where a kill left them), then the evaluations
            for entry in chosen:
                train_run(base(entry), entry, args.runs_dir / entry.name, plans[entry.name])
            for entry in chosen:
                evaluate_once(
                    entry, args.runs_dir / entry.name, args.iw_samples, args.precision, suite.gaps, args.eval_examples
                )
        else:
            failed = run_in_parallel(chosen, args)
        if not args.no_report:
            write_report(suite, args, argv)
        if failed:
            print(f"error: run(s) {', '.join(failed)} failed; see their logs in {args.runs_dir}", file=sys.stderr)
            return 1
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as stopped:
        print(f"error: {stopped}; run the same command to continue the suite", file=sys.stderr)
        return stopped.exit_code
    return 0


def run_in_parallel(chosen: list[Entry], args) -> list[str]:
    """Each run in its own process (this script with --only NAME), `args.jobs` at a time; return the failures."""
    pending, running, failed = list(chosen), {}, []
    passthrough = [
        "--suite", args.suite, *(["--config", str(args.config)] if args.config else []),
        "--runs-dir", str(args.runs_dir), "--out", str(args.out),
        "--steps", str(args.steps), "--iw-samples", str(args.iw_samples), "--precision", args.precision,
        "--eval-examples", str(args.eval_examples or 0),
        "--threads", str(args.threads), "--no-report", *[f"--set={o}" for o in args.overrides],
    ]  # fmt: skip
    while pending or running:
        while pending and len(running) < args.jobs:
            entry = pending.pop(0)
            (args.runs_dir / entry.name).mkdir(parents=True, exist_ok=True)
            log_file = open(args.runs_dir / entry.name / "reproduce.log", "a", encoding="utf-8")  # noqa: SIM115
            command = [sys.executable, __file__, "--only", entry.name, *passthrough]
            running[entry.name] = (subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT), log_file)
            log.info("%s: started (log: %s)", entry.name, log_file.name)
        time.sleep(2)
        for name, (process, log_file) in list(running.items()):
            if process.poll() is not None:
                log_file.close()
                del running[name]
                log.info("%s: finished with exit code %d", name, process.returncode)
                if process.returncode:
                    failed.append(name)
    return failed


if __name__ == "__main__":
    sys.exit(main())
