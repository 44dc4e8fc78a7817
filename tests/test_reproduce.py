"""scripts/reproduce.py on the tiny config: every row, the plot, and a half-finished suite resumed."""

import dataclasses
import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch

from textvae.core.device import cpu_name

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts/reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(reproduce):
    return sys.modules["suite_report"]  # the report side, imported by reproduce.py


def test_suite_runs_every_remedy_writes_the_table_and_resumes(reproduce, tiny_config_path, corpus_dir, tmp_path,
                                                              caplog):  # fmt: skip
    runs, out = tmp_path / "runs", tmp_path / "results" / "ptb.md"
    argv = ["--config", str(tiny_config_path), "--runs-dir", str(runs), "--out", str(out), "--steps", "12",
            "--iw-samples", "2", "--set", f"data.corpus={corpus_dir}"]  # fmt: skip
    assert reproduce.main(argv) == 0
    names = [entry.name for entry in reproduce.SUITES["ptb"].entries]
    assert len(names) >= 10
    text = out.read_text()
    assert "(pending)" not in text and text.count("\n| ") == len(names) + 1  # header + one row per run
    assert out.with_suffix(".png").stat().st_size > 10_000
    config = (runs / "vae" / "config.yaml").read_text()
    assert "kl_schedule: constant" in config and "free_bits: 0.0" in config
    assert "aggressive: true" in (runs / "aggressive" / "config.yaml").read_text()
    assert "bow_weight: 1.0" in (runs / "bow" / "config.yaml").read_text()
    assert all("batch_size: 64" in (runs / name / "config.yaml").read_text() for name in names)  # the suite's
    assert "with train.batch_size=64" in text
    assert f"Trained on: LSTM LM: {cpu_name()}. VAE" in text  # the machine of every row
    lm = json.loads((runs / "lm" / "test_iw2.json").read_text())
    assert lm["kl"] == 0.0 and lm["nll"] == pytest.approx(lm["nelbo"])

    # A half-finished suite: one evaluation lost. Only that one is redone; no training is repeated.
    stamps = {name: (runs / name / "metrics.jsonl").stat().st_mtime_ns for name in names}
    kept = (runs / "lm" / "test_iw2.json").stat().st_mtime_ns
    (runs / "bow" / "test_iw2.json").unlink()
    assert reproduce.main(argv) == 0
    assert (runs / "bow" / "test_iw2.json").is_file()
    assert (runs / "lm" / "test_iw2.json").stat().st_mtime_ns == kept
    assert stamps == {name: (runs / name / "metrics.jsonl").stat().st_mtime_ns for name in names}
    # the same suite with another model: its finished rows are kept, and say which keys differ from the command's
    with caplog.at_level(logging.WARNING):
        assert reproduce.main([*argv, "--set", "model.hidden_size=24", "--only", "lm", "--no-report"]) == 0
    assert "lm: finished with another config (model.hidden_size differ" in caplog.text
    assert stamps == {name: (runs / name / "metrics.jsonl").stat().st_mtime_ns for name in names}

    # A lost run directory: its row comes from the record beside the table, and the row is not trained again
    record = json.loads((tmp_path / "results" / "ptb" / "lm_test_iw2.json").read_text())
    assert record["nll"] == lm["nll"] and record["trained"][0] == 12 and len(record["curve"]["kl"]) >= 1
    validation = [json.loads(line)["metrics"]["nll"] for line in (runs / "lm" / "metrics.jsonl").open()]
    assert record["curve"]["nll"] == validation  # the validation NLL curve is kept with the record
    lm_row = next(line for line in out.read_text().splitlines() if line.startswith("| LSTM LM |"))
    shutil.rmtree(runs / "lm")
    assert reproduce.main(argv) == 0
    assert not (runs / "lm").exists()
    assert lm_row in out.read_text().splitlines() and "(pending)" not in out.read_text()
    (tmp_path / "results" / "ptb" / "lm_test_iw2.json").unlink()
    assert reproduce.main([*argv, "--report-only"]) == 0  # neither run nor record: pending
    assert "| LSTM LM | 12 | (pending) |" in out.read_text()


def test_unknown_run_name_is_one_clear_error(reproduce, tiny_config_path, tmp_path, capsys):
    assert reproduce.main(["--config", str(tiny_config_path), "--only", "nope", "--runs-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --only: unknown run(s) nope")
    for option in ("--steps", "--iw-samples"):  # 0 is refused, not read as "the suite's default"
        argv = ["--config", str(tiny_config_path), option, "0", "--runs-dir", str(tmp_path), "--no-report"]
        assert reproduce.main(argv) == 2
        assert "must be positive" in capsys.readouterr().err


def test_gap_suite_reports_both_gaps(reproduce, tiny_config_path, corpus_dir, tmp_path, monkeypatch):
    small = {"svi_steps": 5, "svi_lr": 0.02, "svi_samples": 2, "elbo_samples": 4}
    suite = dataclasses.replace(reproduce.SUITES["ptb_gaps"], gaps=small, eval_examples=6)
    monkeypatch.setitem(reproduce.SUITES, "ptb_gaps", suite)
    runs, out = tmp_path / "runs", tmp_path / "gaps.md"
    argv = ["--suite", "ptb_gaps", "--config", str(tiny_config_path), "--runs-dir", str(runs), "--out", str(out),
            "--steps", "10", "--iw-samples", "2", "--set", f"data.corpus={corpus_dir}"]  # fmt: skip
    assert reproduce.main(argv) == 0
    text = out.read_text()
    assert "approximation gap" in text and "(pending)" not in text
    assert "6 examples spread evenly over the test split" in text and "'svi_steps': 5" in text
    gaussian_row = next(line for line in text.splitlines() if line.startswith("| Gaussian |"))
    nll, nll_refined, approximation = (float(gaussian_row.split("|")[i]) for i in (3, 9, 10))
    gaussian = json.loads((runs / "gaussian" / "test_iw2_n6.json").read_text())["gaps"]
    assert nll_refined == round(-gaussian["log_px_refined"], 2) and min(nll, nll_refined) == round(
        -gaussian["log_px"], 2
    )
    assert approximation == round(gaussian["approximation_gap"], 2)
    (runs / "iaf2" / "test_iw2_n6.json").unlink()
    assert reproduce.main([*argv, "--report-only"]) == 0  # evaluates nothing: the row is pending
    assert "trained; test evaluation pending" in out.read_text()  # the row is pending, its training done
    assert not (runs / "iaf2" / "test_iw2_n6.json").exists()
    iaf = json.loads((runs / "iaf8" / "test_iw2_n6.json").read_text())
    assert iaf["kl_estimate"].startswith("monte-carlo") and "amortization_gap" in iaf["gaps"]
    assert iaf["sentences"] == 6 and iaf["max_examples"] == 6 and iaf["gaps"]["svi_steps"] == 5
    assert "flow_layers: 8" in (runs / "iaf8" / "config.yaml").read_text()
    assert "max_steps: 2" in (runs / "iwae10" / "config.yaml").read_text()  # a fifth of the budget: k=10 passes

    # --eval-examples 0 evaluates the whole test split, kept apart from the subset's result
    assert reproduce.main([*argv, "--only", "gaussian", "--eval-examples", "0"]) == 0
    whole = json.loads((runs / "gaussian" / "test_iw2.json").read_text())
    assert whole["sentences"] > 6 and "max_examples" not in whole


def test_a_run_with_its_own_config_trains_from_it_unless_config_is_given(
    reproduce, tiny_config_path, corpus_dir, tmp_path, monkeypatch
):
    wide = tmp_path / "wide.yaml"  # the run's own base config: tiny.yaml with 24 units
    wide.write_text(tiny_config_path.read_text().replace("hidden_size: 16", "hidden_size: 24"))
    entries = [reproduce.Entry("lm", "LM", lambda s: ["model.name=lstm_lm"], config=str(wide)),
               reproduce.Entry("vae", "VAE", lambda s: [])]  # fmt: skip
    suite = dataclasses.replace(reproduce.SUITES["ptb"], config=str(tiny_config_path), entries=entries, overrides=())
    monkeypatch.setitem(reproduce.SUITES, "ptb", suite)
    shared = ["--steps", "4", "--iw-samples", "2", "--no-report", "--set", f"data.corpus={corpus_dir}"]
    assert reproduce.main(["--runs-dir", str(tmp_path / "own"), *shared]) == 0
    assert "hidden_size: 24" in (tmp_path / "own/lm/config.yaml").read_text()
    assert "hidden_size: 16" in (tmp_path / "own/vae/config.yaml").read_text()  # the suite's config
    assert reproduce.main(["--runs-dir", str(tmp_path / "given"), "--config", str(tiny_config_path), *shared]) == 0
    assert "hidden_size: 16" in (tmp_path / "given/lm/config.yaml").read_text()  # --config is every run's base


def test_every_run_of_every_suite_is_a_valid_config(reproduce):
    # a suite's overrides are checked only when its run starts: a mistyped key or value would surface hours in
    for suite in reproduce.SUITES.values():
        for entry in suite.entries:
            base = ROOT / (entry.config or suite.config)
            overrides = reproduce.run_config(base, entry, suite.steps, [], suite.overrides, suite.converge)
            assert any(o.startswith("train.max_steps=") for o in overrides)
            if entry.shares_pretraining:  # the two runs' autoencoder phases are the same
                other = next(e for e in suite.entries if e.name == entry.shares_pretraining)
                ours = reproduce.config_lib.to_dict(reproduce.config_lib.load(base, overrides))
                theirs = reproduce.config_lib.to_dict(reproduce.config_lib.load(
                    ROOT / (other.config or suite.config),
                    reproduce.run_config(base, other, suite.steps, [], suite.overrides, suite.converge)))  # fmt: skip
                differing = {f"{s}.{k}" for s in ours for k in ours[s] if ours[s][k] != theirs[s][k]}
                assert differing and differing <= set(reproduce.SHARED_PRETRAINING_KEYS)
                assert ours["objective"]["pretrain_steps"] > 0


def test_a_run_to_convergence_reports_its_best_step_of_the_steps_trained(reproduce, report, tmp_path):
    # the suite's step budget is only a cap there: the row shows where the best checkpoint was and how far it ran
    suite = dataclasses.replace(reproduce.SUITES["ptb_paper"], entries=[reproduce.Entry("lm", "LM", lambda s: [])])
    run = tmp_path / "lm"
    run.mkdir()
    result = {"nll": 101.0, "ppl": 100.5, "nelbo": 101.0, "kl": 0.0, "mi": 0.0, "au": 0, "train_s": 600.0,
              "tokens_per_s": 3500.0, "checkpoint_step": 26300}  # fmt: skip
    (run / "test_iw500.json").write_text(json.dumps(result))
    metrics = {"kl": 0.0, "rec": 101.0}
    evaluations = [{"step": step, "epoch": step // 1315 - 1, "metrics": metrics} for step in (26300, 27615, 28930)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evaluations))
    results = {"lm": report.row_result(run, None, 500, None)}
    text = report.table(suite, results, 500, 150000, "python scripts/reproduce.py", None)
    assert "| LM | 26,300 of 28,930 (epoch 22) | 101.00 | 100.5 |" in text
    assert "trained until early stopping (or as many LR decays as its optim.max_decays), at most 150,000 steps" in text


def test_a_run_sharing_another_ones_autoencoder_starts_its_vae_phase_from_it(
    reproduce, tiny_config_path, corpus_dir, tmp_path, monkeypatch, capsys
):
    pretraining = ["model.name=lstm_vae", "objective.pretrain_steps=4", "objective.free_bits_mode=example"]
    entries = [
        reproduce.Entry("a", "A", lambda s: [*pretraining, "objective.free_bits=0.1"], shares_pretraining="b"),
        reproduce.Entry("b", "B", lambda s: [*pretraining, "objective.free_bits=0.3"], shares_pretraining="a"),
        reproduce.Entry("c", "C", lambda s: [*pretraining, "model.hidden_size=24"], shares_pretraining="a"),
    ]
    suite = dataclasses.replace(reproduce.SUITES["ptb"], config=str(tiny_config_path), entries=entries, overrides=())
    monkeypatch.setitem(reproduce.SUITES, "ptb", suite)
    runs = tmp_path / "runs"
    shared = ["--runs-dir", str(runs), "--steps", "8", "--iw-samples", "2", "--no-report",
              "--set", f"data.corpus={corpus_dir}", "--set", "train.eval_every=2"]  # fmt: skip
    assert reproduce.main(["--only", "a", *shared]) == 0
    assert (runs / "a/checkpoints/pretrained.pt").is_file()
    assert reproduce.main(["--only", "b", *shared]) == 0
    a_lines = (runs / "a/metrics.jsonl").read_text().splitlines()
    b_lines = (runs / "b/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in b_lines] == [2, 4, 6, 8]
    assert b_lines[:2] == a_lines[:2] and b_lines[2:] != a_lines[2:]  # the autoencoder's, then its own VAE phase
    assert "free_bits: 0.3" in (runs / "b/config.yaml").read_text()
    assert not (runs / "b/checkpoints/pretrained.pt").exists()  # it did not pretrain
    a_time = torch.load(runs / "a/checkpoints/pretrained.pt", weights_only=True)["seconds"]
    b_clock = torch.load(runs / "b/checkpoints/last.pt", weights_only=True)["seconds"]
    b_result = json.loads((runs / "b/test_iw2.json").read_text())
    assert b_result["train_s"] == b_clock > a_time  # the trainer's clock, the shared autoencoder's time in it
    assert json.loads((runs / "b/timing.json").read_text())["machines"] == [cpu_name()]
    capsys.readouterr()
    assert reproduce.main(["--only", "c", *shared]) == 2  # another model: it cannot share a's autoencoder
    assert capsys.readouterr().err.strip() == (
        f"error: c cannot start from {runs / 'a/checkpoints/pretrained.pt'}: its config differs in model.hidden_size"
    )  # objective.free_bits differs too, which the VAE phase alone reads


def test_a_pending_row_shows_where_its_training_stands(reproduce, report, tmp_path):
    # a run to convergence takes sessions; until its test result exists its row says how far it is, from its
    # last.pt (position, the trainer's clock, which survives kills) and its validation curve
    suite = dataclasses.replace(reproduce.SUITES["ptb_paper"], entries=[
        reproduce.Entry("vae", "VAE", lambda s: []), reproduce.Entry("bn", "BN", lambda s: [])])  # fmt: skip
    run = tmp_path / "vae"
    (run / "checkpoints").mkdir(parents=True)
    position = {"step": 83400, "epoch": 63, "batch": 5, "best": 104.0, "bad_evals": 1, "decays": 1}
    torch.save({"position": position, "seconds": 32100.0, "config": {"optim": {"max_decays": 5},
                "train": {"eval_iw_samples": 5}}},
               run / "checkpoints" / "last.pt")  # fmt: skip
    curve = [(19725, 150.0, 30.0), (81530, 102.51, 6.79), (82845, 102.39, 6.87), (84160, 102.45, 6.9)]
    evaluations = [{"step": step, "epoch": step // 1315 - 1, "metrics": {"nelbo": nll + 1.5, "rec": nll - kl,
                    "nll": nll, "kl": kl, "iw_samples": 5}} for step, nll, kl in curve]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evaluations))
    progress_of = {"vae": report.progress(run), "bn": report.progress(tmp_path / "bn")}  # bn: not started
    text = report.table(suite, {"vae": None, "bn": None}, 500, 151225, "python scripts/reproduce.py", None,
                           progress_of)  # fmt: skip
    assert ("| VAE | 83,400 so far (epoch 64) | training: best validation IW-5 nll 102.39 (step 82,845, kl 6.87); "
            "LR decays 1 of 5 | | | | | | 535 min so far | |") in text  # fmt: skip
    assert "| BN | 151,225 | (pending) |" in text
    (run / "timing.json").write_text(json.dumps({"machines": ["cpu"], "trained": True}))
    assert report.progress_cells(report.progress(run)) == "trained; test evaluation pending"


def test_a_row_in_its_autoencoder_phase_says_so_and_its_best_is_of_the_vae_phase(report, tmp_path):
    # the autoencoder's validation NLL (KL weight 0, a code of 60+ nats) is not the row's result: until the VAE
    # phase begins the cell says where the pretraining ends, and afterwards the best counts only VAE evaluations
    run = tmp_path / "fb"
    (run / "checkpoints").mkdir(parents=True)

    def save(step: int) -> None:
        position = {"step": step, "epoch": step // 1315, "batch": 0, "best": 0.0, "bad_evals": 0, "decays": 0}
        torch.save({"position": position, "seconds": 600.0, "config": {"optim": {"max_decays": 5},
                    "train": {"eval_iw_samples": 5}, "objective": {"pretrain_steps": 19725}}},
                   run / "checkpoints" / "last.pt")  # fmt: skip

    curve = [(1315, 180.43, 66.96), (2630, 110.0, 80.0), (21040, 120.5, 7.1), (22355, 118.25, 6.9)]
    evaluations = [{"step": step, "epoch": step // 1315 - 1, "metrics": {"nelbo": nll + 1.5, "rec": nll - kl,
                    "nll": nll, "kl": kl, "iw_samples": 5}} for step, nll, kl in curve]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evaluations[:2]))
    save(8000)
    assert report.progress_cells(report.progress(run)) == "AE pretraining (until step 19,725); LR decays 0 of 5"
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evaluations))
    save(22400)
    assert report.progress_cells(report.progress(run)) == (
        "training: best validation IW-5 nll 118.25 (step 22,355, kl 6.90); LR decays 0 of 5"
    )


def test_the_plots_axes_end_above_the_rows_last_values_not_at_an_autoencoder_phase(report):
    matplotlib = pytest.importorskip("matplotlib", reason="the plot needs the plots extra")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots()
    axis.plot([0, 1, 2, 3], [0.0, 120.0, 30.0, 7.0])  # KL from 0, through an AE phase and after it
    report.clip_top(axis, 3 * 7.0)
    assert axis.get_ylim()[1] == 21.0 and axis.get_ylim()[0] < 0  # matplotlib's margin under the data
    report.clip_top(axis, 3 * 7.0, bottom=0.0)  # a KL axis starts at 0
    assert axis.get_ylim() == (0.0, 21.0)
    figure_2, axis_2 = plt.subplots()
    axis_2.plot([0, 1], [2.0, 3.0])
    before = axis_2.get_ylim()
    report.clip_top(axis_2, 300.0)  # data below the cut: the axis stays as matplotlib set it
    assert axis_2.get_ylim() == before and before[1] < 4
    plt.close(figure)
    plt.close(figure_2)
