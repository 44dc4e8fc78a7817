"""Reproduce the posterior-collapse comparison on PTB: one model, data, step budget and evaluation for all.

    python scripts/reproduce.py                      # the full suite: train, evaluate (IW-500), table, plot
    python scripts/reproduce.py --steps 600 --iw-samples 50 --out results/quick.md   # a quick look
    python scripts/reproduce.py --jobs 2 --threads 1 # two runs at a time, one thread each

Every run lives in RUNS_DIR/NAME and resumes like any `textvae train` run; a run's test evaluation is
kept in RUNS_DIR/NAME/test_iw{K}.json. Running the command again continues a half-finished suite:
finished trainings and evaluations are not repeated. The table goes to --out (results/ptb.md), the KL and
reconstruction curves of all runs to the PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from textvae import config as config_lib  # noqa: E402
from textvae.errors import TrainingStopped, UserError  # noqa: E402

log = logging.getLogger("reproduce")


@dataclass(frozen=True)
class Entry:
    name: str
    label: str
    overrides: Callable[[int], list[str]]  # step budget -> --set overrides


def _vae(schedule: str, steps: int, free_bits: float = 0.0, weight: float = 1.0, *extra: str) -> list[str]:
    """A VAE with the given KL schedule and free bits; every remedy key set explicitly."""
    return [
        "model.name=lstm_vae",
        f"objective.kl_schedule={schedule}",
        f"objective.kl_weight={weight}",
        "objective.kl_start=0.0",
        f"objective.warmup_steps={max(2, steps // 3)}",
        f"objective.free_bits={free_bits}",
        "objective.free_bits_mode=dim",
        "model.word_dropout=0.0",
        *extra,
    ]


# The suite: the LSTM LM, the plain VAE, and one remedy (or a common combination) per row.
SUITES: dict[str, list[Entry]] = {
    "ptb": [
        Entry("lm", "LSTM LM", lambda s: ["model.name=lstm_lm"]),
        Entry("vae", "VAE (no remedy)", lambda s: _vae("constant", s)),
        Entry("anneal", "VAE + linear KL annealing", lambda s: _vae("linear", s)),
        Entry("anneal_wd", "+ word dropout 0.25", lambda s: [*_vae("linear", s), "model.word_dropout=0.25"]),
        Entry("anneal_fb", "+ free bits 0.15/dim", lambda s: _vae("linear", s, 0.15)),
        Entry("cyclical", "cyclical annealing (M=4, R=0.5)",
              lambda s: _vae("cyclical", s, 0.0, 1.0, "objective.cycles=4", "objective.cycle_ratio=0.5")),
        Entry("beta04", "β = 0.4 (constant)", lambda s: _vae("constant", s, 0.0, 0.4)),
        Entry("aggressive", "aggressive encoder + annealing",  # smaller inner loops than He et al.: CPU budget
              lambda s: [*_vae("linear", s), "objective.aggressive=true", "objective.aggressive_window=5",
                         "objective.aggressive_max_inner=20"]),
        Entry("pretrain_fb", "AE pretraining, decoder reset, + free bits",
              lambda s: [*_vae("linear", s, 0.15), f"objective.pretrain_steps={max(1, s // 6)}",
                         "objective.reset_decoder=true"]),
        Entry("bow", "bag-of-words loss + annealing", lambda s: [*_vae("linear", s), "objective.bow_weight=1.0"]),
    ],
}  # fmt: skip


def run_config(base: Path, entry: Entry, steps: int, extra: list[str]) -> list[str]:
    """All overrides of one run: the entry's, the shared budget, then the user's."""
    budget = [f"train.max_steps={steps}", f"train.eval_every={max(1, steps // 4)}", "train.early_stopping=0"]
    overrides = [*entry.overrides(steps), *budget, *extra]
    config_lib.load(base, overrides)  # fail early, with the config's own one-line error
    return overrides


def train_and_evaluate(base: Path, entry: Entry, run_dir: Path, overrides: list[str], iw_samples: int,
                       precision: str) -> dict:  # fmt: skip
    """Train (or resume) one run, then evaluate it on test once; return the stored result."""
    from textvae.pipeline import evaluate_run, train

    result_path = run_dir / f"test_iw{iw_samples}.json"
    if result_path.is_file():
        return json.loads(result_path.read_text(encoding="utf-8"))
    config = config_lib.load(base, overrides)
    timing_path = run_dir / "timing.json"
    timing = json.loads(timing_path.read_text(encoding="utf-8")) if timing_path.is_file() else {"train_s": 0.0}
    if not timing.get("trained"):
        log.info("%s: training (%s)", entry.name, " ".join(overrides))
        start = time.perf_counter()
        try:
            train(config, run_dir)
        finally:  # a stopped run keeps the time it spent, and resumes
            timing["train_s"] += time.perf_counter() - start
            run_dir.mkdir(parents=True, exist_ok=True)
            timing_path.write_text(json.dumps(timing), encoding="utf-8")
        timing["trained"] = True
        timing_path.write_text(json.dumps(timing), encoding="utf-8")
    log.info("%s: evaluating on test with %d importance samples", entry.name, iw_samples)
    start = time.perf_counter()
    metrics = evaluate_run(run_dir, "test", iw_samples, precision)
    metrics["eval_s"] = time.perf_counter() - start
    metrics["train_s"] = timing["train_s"]
    metrics["tokens_per_s"] = training_tokens_per_s(run_dir)
    result_path.write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    return metrics


def training_tokens_per_s(run_dir: Path) -> float:
    """The median of the run's logged train/tokens_per_s (TensorBoard), over the whole run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted((run_dir / "tb").glob("events.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if "train/tokens_per_s" in accumulator.Tags()["scalars"]:
            values += [e.value for e in accumulator.Scalars("train/tokens_per_s")]
    return float(torch.tensor(values).median()) if values else float("nan")


def curves(run_dir: Path) -> dict[str, list[float]]:
    """Validation KL and reconstruction at each evaluation, from the run's metrics.jsonl."""
    out: dict[str, list[float]] = {"step": [], "kl": [], "rec": []}
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            for key in ("kl", "rec"):
                out[key].append(record["metrics"][key])
            out["step"].append(record["step"])
    return out


def plot(suite: list[Entry], runs_dir: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (kl_axis, rec_axis) = plt.subplots(1, 2, figsize=(13, 4.5))
    for entry in suite:
        data = curves(runs_dir / entry.name)
        if data["step"]:
            kl_axis.plot(data["step"], data["kl"], label=entry.label)
            rec_axis.plot(data["step"], data["rec"], label=entry.label)
    kl_axis.set(title="validation KL (nats per sentence)", xlabel="step")
    rec_axis.set(title="validation reconstruction -log p(x|z) (nats per sentence)", xlabel="step")
    kl_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def table(suite: list[Entry], runs_dir: Path, iw_samples: int, steps: int, command: str) -> str:
    rows = [
        f"Produced by `{command}`: every run {steps:,} steps of the same data and model, best checkpoint by "
        f"validation nelbo, evaluated on the test split with {iw_samples} importance samples.",
        "",
        "| run | nll | ppl | nelbo | kl | mi | au | train time | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in suite:
        path = runs_dir / entry.name / f"test_iw{iw_samples}.json"
        if not path.is_file():
            rows.append(f"| {entry.label} | (pending) | | | | | | | |")
            continue
        m = json.loads(path.read_text(encoding="utf-8"))
        rows.append(
            f"| {entry.label} | {m['nll']:.2f} | {m['ppl']:.1f} | {m['nelbo']:.2f} | {m['kl']:.2f} | {m['mi']:.2f} "
            f"| {m['au']} | {m['train_s'] / 60:.0f} min | {m['tokens_per_s']:,.0f} |"
        )
    rows += ["", "nll, nelbo, kl, mi in nats per sentence; ppl per word; au = active units (of the latent size)."]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="ptb", choices=sorted(SUITES))
    parser.add_argument("--config", type=Path, default=ROOT / "configs/text/ptb_lstm_vae.yaml",
                        help="the base config every run starts from")  # fmt: skip
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/reproduce/ptb"))
    parser.add_argument("--out", type=Path, default=Path("results/ptb.md"))
    parser.add_argument("--steps", type=int, default=6000, help="the step budget of every run")
    parser.add_argument("--iw-samples", type=int, default=500)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="of the evaluation")
    parser.add_argument("--only", default="", help="comma-separated run names (default: the whole suite)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each in its own process)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="applied to every run, after the suite's own settings")  # fmt: skip
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    suite = SUITES[args.suite]
    names = [n for n in args.only.split(",") if n] or [e.name for e in suite]
    try:
        unknown = sorted(set(names) - {e.name for e in suite})
        if unknown:
            raise UserError(f"--only: unknown run(s) {', '.join(unknown)} (suite {args.suite}: "
                            f"{', '.join(e.name for e in suite)})")  # fmt: skip
        if args.steps <= 0 or args.iw_samples <= 0 or args.jobs <= 0:
            raise UserError("--steps, --iw-samples and --jobs must be positive")
        chosen = [e for e in suite if e.name in names]
        plans = {e.name: run_config(args.config, e, args.steps, args.overrides) for e in chosen}
        if args.threads:
            torch.set_num_threads(args.threads)
        failed = []
        if args.jobs == 1:
            for entry in chosen:
                train_and_evaluate(args.config, entry, args.runs_dir / entry.name, plans[entry.name],
                                   args.iw_samples, args.precision)  # fmt: skip
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
        "--suite", args.suite, "--config", str(args.config), "--runs-dir", str(args.runs_dir),
        "--steps", str(args.steps), "--iw-samples", str(args.iw_samples), "--precision", args.precision,
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


def write_report(suite: list[Entry], args, argv: list[str] | None) -> None:
    command = "python scripts/reproduce.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# {args.suite.upper()}: posterior-collapse remedies\n\n"
                        + table(suite, args.runs_dir, args.iw_samples, args.steps, command)
                        + f"\n![KL and reconstruction]({args.out.with_suffix('.png').name})\n",
                        encoding="utf-8")  # fmt: skip
    plot(suite, args.runs_dir, args.out.with_suffix(".png"))
    print(f"table: {args.out}\nplot: {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    sys.exit(main())
