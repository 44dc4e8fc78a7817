"""The report side of scripts/reproduce.py: each row's test result or, while it is pending, its progress; the table,
the plot, and the records that let a table outlive its run directories."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from suites import PAPER_SOURCE, Suite

from textvae.core.checkpoint import load_checkpoint


def result_file(iw_samples: int, examples: int | None) -> str:
    """test_iw{K}.json for the whole test split, test_iw{K}_n{N}.json for N examples of it."""
    return f"test_iw{iw_samples}" + (f"_n{examples}" if examples else "") + ".json"


def record_path(out: Path, name: str, iw_samples: int, examples: int | None) -> Path:
    """A finished row's record beside the report: results/SUITE/NAME_test_iw{K}.json for results/SUITE.md."""
    return out.with_suffix("") / f"{name}_{result_file(iw_samples, examples)}"


def row_result(run_dir: Path, record: Path | None, iw_samples: int, examples: int | None) -> dict | None:
    """A row's test result with how far it trained and its curve: from its run (refreshing the record), else, when
    the run directory is gone, from the record; None while it is pending."""
    result_path = run_dir / result_file(iw_samples, examples)
    if result_path.is_file():
        result = json.loads(result_path.read_text(encoding="utf-8"))
        result.update(trained=trained_steps(run_dir), curve=curves(run_dir))
        if record is not None:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        return result
    if record is not None and record.is_file() and not run_dir.exists():
        return json.loads(record.read_text(encoding="utf-8"))
    return None


def trained_steps(run_dir: Path) -> tuple[int, int] | None:
    """(step, 1-based epoch) of a run's last evaluation, from its metrics.jsonl; None before its first."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    if not lines:
        return None
    last = json.loads(lines[-1])
    return int(last["step"]), int(last.get("epoch", 0)) + 1


def training_state(run_dir: Path) -> dict | None:
    """Where a run's training stands, from its last.pt (None before its first checkpoint): the trainer's position
    (step, epoch, LR decays of this phase), its clock `seconds` (wall time of training and its evaluations, summed
    over every session, kills included), the config's `max_decays`, `iw_samples` of its validation NLL and
    `pretrain_steps` (its autoencoder phase, 0 without one)."""
    path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        return None
    state = load_checkpoint(path)
    config = state.get("config", {})
    return {**state["position"], "seconds": float(state.get("seconds", 0.0)),
            "max_decays": int(config.get("optim", {}).get("max_decays", 0)),
            "iw_samples": int(config.get("train", {}).get("eval_iw_samples", 0)),
            "pretrain_steps": int(config.get("objective", {}).get("pretrain_steps", 0))}  # fmt: skip


def progress(run_dir: Path) -> dict | None:
    """A pending row's progress: `training_state`, its lowest validation NLL of the VAE phase as (nll, step, kl)
    from its `curves` (None before one was computed; an autoencoder's evaluations do not count), and whether
    training has finished; None before the run's first checkpoint."""
    state = training_state(run_dir)
    if state is None:
        return None
    curve = curves(run_dir)
    scored = [(nll, step, kl) for nll, step, kl in zip(curve["nll"], curve["step"], curve["kl"])
              if nll is not None and step > state["pretrain_steps"]]  # fmt: skip
    timing = run_dir / "timing.json"
    trained = timing.is_file() and json.loads(timing.read_text(encoding="utf-8")).get("trained", False)
    return {**state, "best": min(scored, default=None), "trained": trained}


def progress_cells(p: dict) -> str:
    """The nll cell of a pending row: where its training stands."""
    if p["trained"]:
        return "trained; test evaluation pending"
    text = "training"
    if p["pretrain_steps"] > p["step"]:
        text = f"AE pretraining (until step {p['pretrain_steps']:,})"
    elif p["best"]:
        nll, step, kl = p["best"]
        text += f": best validation IW-{p['iw_samples']} nll {nll:.2f} (step {step:,}, kl {kl:.2f})"
    if p["max_decays"]:
        text += f"; LR decays {p['decays']} of {p['max_decays']}"
    return text


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
    """Validation KL, reconstruction and NLL (the training's importance-weighted bound) at each evaluation, from
    the run's metrics.jsonl."""
    out: dict[str, list] = {"step": [], "kl": [], "rec": [], "nll": []}
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            for key in ("kl", "rec"):
                out[key].append(record["metrics"][key])
            out["nll"].append(record["metrics"].get("nll"))  # None where the evaluation had no importance samples
            out["step"].append(record["step"])
    return out


def clip_top(axis, top: float, bottom: float | None = None) -> None:
    """End `axis` at `top` where its data reach above (and `top` is positive); start it at `bottom` if given (a KL
    axis at 0: the margin matplotlib leaves under data that once reached 120 nats would go below -5)."""
    if axis.get_ylim()[1] > top > 0:
        axis.set_ylim(top=top)
    if bottom is not None:
        axis.set_ylim(bottom=bottom)


def plot(suite: Suite, runs_dir: Path, results: dict[str, dict | None], path: Path) -> None:
    """Validation KL, reconstruction and NLL of every row: a finished one's from its result, one training from its
    run. The NLL axis starts a nat under the best value and spans 15% above it, so that the rows' ends can be told
    apart (an autoencoder phase's NLL lies far above); the KL and reconstruction axes end at 3× and 1.2× the largest
    of the rows' last values, where an autoencoder phase (KL ~120 nats) or a decoder reset would squash them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (kl_axis, rec_axis, nll_axis) = plt.subplots(1, 3, figsize=(18, 4.5))
    lowest, last_kl, last_rec = math.inf, 0.0, 0.0
    for entry in suite.entries:
        data = (results.get(entry.name) or {}).get("curve") or curves(runs_dir / entry.name)
        if data["step"]:
            kl_axis.plot(data["step"], data["kl"], label=entry.label)
            rec_axis.plot(data["step"], data["rec"], label=entry.label)
            last_kl, last_rec = max(last_kl, data["kl"][-1]), max(last_rec, data["rec"][-1])
        known = [value for value in data.get("nll", []) if value is not None]  # records before 2026-12-04: none
        if known:
            nll_axis.plot(data["step"], [math.nan if v is None else v for v in data["nll"]], label=entry.label)
            lowest = min(lowest, *known)
    unit = "sentence" if suite.text else "image"
    kl_axis.set(title=f"validation KL (nats per {unit})", xlabel="step")
    rec_axis.set(title=f"validation reconstruction -log p(x|z) (nats per {unit})", xlabel="step")
    nll_axis.set(title=f"validation NLL, importance-weighted (nats per {unit})", xlabel="step")
    if math.isfinite(lowest):
        nll_axis.set_ylim(lowest - 1, lowest + 0.15 * abs(lowest) + 1)
    clip_top(kl_axis, 3 * last_kl, bottom=0.0)
    clip_top(rec_axis, 1.2 * last_rec)
    kl_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def table(
    suite: Suite,
    results: dict[str, dict | None],
    iw_samples: int,
    steps: int,
    command: str,
    examples: int | None,
    progress_of: dict[str, dict | None] | None = None,
) -> str:
    """The report's table from each row's result (`row_result`; None: pending, shown with its `progress` where
    `progress_of` has one)."""
    gap_columns = " nll (q*) | approximation gap | amortization gap |" if suite.gaps else ""
    split = f"{examples:,} examples spread evenly over the test split" if examples else "the test split"
    rows = [
        f"Produced by `{command}`: every run {steps:,} steps (unless its row says otherwise)"
        + (f" with {', '.join(suite.overrides)}" if suite.overrides else "")
        + " of the same data and "
        f"model, best checkpoint by validation nelbo, evaluated on {split} with {iw_samples} importance "
        "samples" + (f" and the gap report of `textvae evaluate --gaps` ({suite.gaps})." if suite.gaps else "."),
        "",
        f"| run | steps | nll | ppl | nelbo | kl | mi | au |{gap_columns} train time | tokens/s |",
        "|---|---|---|---|---|---|---|---|" + "---|---|---|" * bool(suite.gaps) + "---|---|",
    ]
    if suite.converge:
        rows[0] = rows[0].replace(f"every run {steps:,} steps", f"every run trained until early stopping (or as "
                                  f"many LR decays as its optim.max_decays), at most {steps:,} steps")  # fmt: skip
        rows[0] += " steps: the best checkpoint's step of the steps trained, and the epoch of the last evaluation."
    if suite.published:
        rows[0] += f" The published column: {PAPER_SOURCE} (ppl / nll / kl / mi / au)."
        rows[2] += " published |"
        rows[3] += "---|"
    for entry in suite.entries:
        m = results.get(entry.name)
        run_steps = max(1, round(steps * entry.budget))
        if m is None:
            p = (progress_of or {}).get(entry.name)
            if p is None:
                cells = f" {run_steps:,} | (pending) |" + " |" * (7 + 3 * bool(suite.gaps))
            else:  # where it stands: steps so far, its best validation, its clock
                cells = (f" {p['step']:,} so far (epoch {p['epoch'] + 1}) | {progress_cells(p)} |"
                         + " |" * (5 + 3 * bool(suite.gaps)) + f" {p['seconds'] / 60:.0f} min so far | |")  # fmt: skip
            rows.append(f"| {entry.label} |{cells}" + (f" {published(suite, entry.name)} |" if suite.published else ""))
            continue
        ppl = f"{m['ppl']:.1f}" if "ppl" in m else "–"
        gaps = ""
        if suite.gaps:
            g = m["gaps"]
            refined = f"{-g['log_px_refined']:.2f}" if "log_px_refined" in g else "–"  # older reports lack it
            gaps = f" {refined} | {g['approximation_gap']:.2f} | {g['amortization_gap']:.2f} |"
        steps_cell = f"{run_steps:,}"
        if suite.converge:  # the budget was a cap: the best checkpoint's step of the steps trained
            trained = m.get("trained")
            best = m.get("checkpoint_step")
            steps_cell = f"{best:,} of {trained[0]:,} (epoch {trained[1]})" if best and trained else steps_cell
        rows.append(
            f"| {entry.label} | {steps_cell} | {m['nll']:.2f} | {ppl} | {m['nelbo']:.2f} | {m['kl']:.2f} "
            f"| {m['mi']:.2f} | {m['au']} |{gaps} {m['train_s'] / 60:.0f} min | {m['tokens_per_s']:,.0f} |"
            + (f" {published(suite, entry.name)} |" if suite.published else "")
        )
    machines = [f"{entry.label}: {'; '.join(results[entry.name]['machines'])}" for entry in suite.entries
                if (results.get(entry.name) or {}).get("machines")]  # fmt: skip
    if machines:
        rows += ["", "Trained on: " + ". ".join(machines) + "."]
    unit = "sentence; ppl per word" if suite.text else "image; tokens/s counts images"
    rows += ["", f"nll, nelbo, kl, mi and the gaps in nats per {unit}; au = active units (of the latent size)."]
    if suite.gaps:
        rows[-1] += (" nll: importance sampling from the encoder's posterior; nll (q*): from the SVI-refined one"
                     " (–: a report from before it was computed). The gaps use the lower of the two.")  # fmt: skip
    return "\n".join(rows) + "\n"


def published(suite: Suite, name: str) -> str:
    """A row's published figures as 'ppl / nll / kl / mi / au', '–' where the paper has none."""
    figures = (suite.published or {}).get(name)
    if not figures:
        return "–"
    cells = [str(figures[key]) if key in figures else "–" for key in ("ppl", "nll", "kl", "mi", "au")]
    return " / ".join(cells) + (f" ({figures['note']})" if "note" in figures else "")


def write_report(suite: Suite, args, argv: list[str] | None) -> None:
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]  # the producing command
    command = "python scripts/reproduce.py" + "".join(f" {a}" for a in shown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results, progress_of = {}, {}
    for entry in suite.entries:
        record = record_path(args.out, entry.name, args.iw_samples, args.eval_examples)
        results[entry.name] = row_result(args.runs_dir / entry.name, record, args.iw_samples, args.eval_examples)
        if results[entry.name] is None:
            progress_of[entry.name] = progress(args.runs_dir / entry.name)
    args.out.write_text(f"# {suite.title}\n\n"
                        + table(suite, results, args.iw_samples, args.steps, command, args.eval_examples, progress_of)
                        + f"\n![KL and reconstruction]({args.out.with_suffix('.png').name})\n",
                        encoding="utf-8")  # fmt: skip
    plot(suite, args.runs_dir, results, args.out.with_suffix(".png"))
    print(f"table: {args.out}\nplot: {args.out.with_suffix('.png')}")
