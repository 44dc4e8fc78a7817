"""Reconstruction, interpolation and linear-probe metrics (textvae/quality.py, textvae/probe.py), the labels of a
corpus, and the `evaluate --reconstruction --interpolation` and `probe` commands on a tiny trained run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from textvae import config as config_lib
from textvae.cli import main
from textvae.core.evaluation import Journal
from textvae.data.corpus import load_corpus, resolve
from textvae.dispatch import train
from textvae.errors import UserError
from textvae.probe import chance, draw_rows, probe_accuracy, probe_curve
from textvae.quality import corpus_bleu, interpolation_scores, random_pairs, reconstruction_scores

from conftest import CONFIGS, make_sentences


def test_identical_outputs_score_bleu_100_and_full_accuracy():
    sentences = ["the food was great", "i will be back !", "a b c d e f"]
    assert corpus_bleu(sentences, sentences) == pytest.approx(100.0)
    assert reconstruction_scores(sentences, sentences) == {"bleu": 100.0, "exact_match": 1.0, "token_accuracy": 1.0,
                                                           "sentences": 3}  # fmt: skip
    # positions: "a b c </s>" against "a x c d </s>": a and c of 4 reference positions
    assert reconstruction_scores(["a b c"], ["a x c d"])["token_accuracy"] == 0.5


def test_interpolation_scores_on_hand_made_paths():
    end = "the food was great and cheap"
    slow, food_slow = "the service was slow and rude", "the food was slow and rude"
    # sentence BLEU to the end: 10.7, 10.7 (stays), 32.5 (up), 10.7 (falls), 100 (up): 3 of 4 steps monotone;
    # 3 distinct sentences of K = 5 >= K - 2
    towards = [slow, slow, food_slow, slow, end]
    stuck = ["a b", "a b", "a b", "a b", "c d"]  # 2 distinct < 3; BLEU 0, 0, 0, 0, 100: 4 of 4 monotone
    assert interpolation_scores([towards, stuck]) == {"distinct": 0.5, "monotone": 0.875, "paths": 2, "steps": 5}


def test_random_pairs_are_seeded_and_distinct():
    pairs = random_pairs(10, 20, seed=3)
    assert pairs == random_pairs(10, 20, seed=3) and pairs != random_pairs(10, 20, seed=4)
    assert all(a != b for a, b in pairs)


def _separable(count, seed):
    """Codes whose first coordinate decides the label, with a margin; half of each label."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    codes = rng.normal(size=(count, 4))
    codes[:, 0] = (2 * labels - 1) * (0.5 + rng.random(count))
    return codes, labels


def test_probe_reaches_100_percent_on_a_separable_code_and_chance_on_a_constant_one():
    train_codes, train_labels = _separable(400, 0)
    test_codes, test_labels = _separable(200, 1)
    draws = [draw_rows(400, 200, seed) for seed in range(3)]
    assert draws[0] == draw_rows(400, 200, 0) and draws[0] != draws[1]
    curve = probe_curve(train_codes, train_labels, test_codes, test_labels, [20, 200], draws)
    assert curve["200"]["median"] == 1.0 and curve["200"]["min"] == 1.0 and len(curve["20"]["per_seed"]) == 3
    constant = probe_curve(np.ones((400, 4)), train_labels, np.ones((200, 4)), test_labels, [20, 200], draws)
    assert chance(test_labels) == 0.5
    assert constant["200"]["median"] == 0.5 and constant["20"]["max"] == 0.5


def test_probe_without_scikit_learn_says_what_to_install(monkeypatch):
    for name in ("sklearn", "sklearn.linear_model", "sklearn.pipeline", "sklearn.preprocessing"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it raises ImportError
    with pytest.raises(UserError, match="the probe needs scikit-learn, a dependency of textvae: pip install"):
        probe_accuracy(np.zeros((4, 2)), np.array([0, 1, 0, 1]), np.zeros((2, 2)), np.array([0, 1]))


def _write_corpus(root, labels=True):
    """The tiny corpus of conftest with 0/1 labels: 1 for the topics cat and dog."""
    root.mkdir()
    for split, count, seed in (("train", 240, 0), ("valid", 40, 1), ("test", 40, 2)):
        sentences = make_sentences(count, seed)
        (root / f"{split}.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
        if labels:
            marks = [str(int(s.split()[0] in ("cat", "dog"))) for s in sentences]
            (root / f"{split}.labels").write_text("\n".join(marks) + "\n", encoding="utf-8")
    return root


def test_labels_follow_their_sentences_and_are_checked(tmp_path, monkeypatch):
    root = tmp_path / "yelp_sentiment"
    root.mkdir()
    for split in ("train", "valid", "test"):
        (root / f"{split}.txt").write_text("good food\n\nbad service\n", encoding="utf-8")
        (root / f"{split}.labels").write_text("1\n0\n0\n", encoding="utf-8")
    monkeypatch.setenv("TEXTVAE_DATA_DIR", str(tmp_path))
    assert resolve("yelp_sentiment")[1]["test"] == root / "test.txt"
    corpus = load_corpus("yelp_sentiment")
    assert corpus.splits["train"] == ["good food", "bad service"] and corpus.labels["train"] == [1, 0]
    (root / "valid.labels").write_text("1\n0\n", encoding="utf-8")
    with pytest.raises(Exception, match="2 labels for the 3 lines"):
        load_corpus("yelp_sentiment")


@pytest.fixture(scope="module")
def labeled_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    corpus = _write_corpus(root / "corpus")
    config = config_lib.load(CONFIGS / "text" / "tiny.yaml", [f"data.corpus={corpus}", "train.max_steps=10"])
    train(config, root / "run")
    return root / "run"


def test_training_logs_reconstruction_bleu(labeled_run):
    records = [json.loads(line) for line in (labeled_run / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["metrics"]["recon_bleu"] <= 100.0 for r in records)


def test_cli_evaluate_reconstruction_and_interpolation(labeled_run, capsys):
    argv = ["evaluate", str(labeled_run), "--iw-samples", "2", "--reconstruction", "--interpolation", "3", "--json"]
    assert main([*argv, "--steps", "4", "--max-examples", "12"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["reconstruction"]["sentences"] == 12 and 0 <= metrics["reconstruction"]["bleu"] <= 100
    assert metrics["interpolation"]["paths"] == 3 and metrics["interpolation"]["steps"] == 4
    assert "nll" in metrics
    assert main(["evaluate", str(labeled_run), "--iw-samples", "1", "--reconstruction", "--decode", "beam",
                 "--max-examples", "4"]) == 0  # fmt: skip
    assert "reconstruction (beam, 4 sentences): BLEU" in capsys.readouterr().out


def test_cli_evaluate_resumes_from_the_progress_it_keeps_in_the_run(labeled_run, capsys, monkeypatch):
    # a complete evaluation leaves no journal; one left by a stopped evaluation of the same settings is read back:
    # a journal kept (finish() disabled) and then altered shows in the next evaluation's figures
    argv = ["evaluate", str(labeled_run), "--iw-samples", "3", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert not list(labeled_run.glob("*.partial"))
    monkeypatch.setattr(Journal, "finish", lambda self: self.save())
    assert main(argv) == 0 and json.loads(capsys.readouterr().out) == first  # the per-batch draws are seeded
    (path,) = labeled_run.glob("evaluation_test_iw3.partial")
    state = torch.load(path, weights_only=True)
    state["records"][0]["nll"] += 1000.0
    torch.save(state, path)
    monkeypatch.undo()
    assert main(argv) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["nll"] == pytest.approx(first["nll"] + 1000.0 / first["sentences"])
    assert not path.exists()


def test_cli_probe(labeled_run, capsys):
    assert main(["probe", str(labeled_run), "--labels", "10,50", "--seeds", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["accuracy"]) == {"10", "50"} and len(result["accuracy"]["50"]["per_seed"]) == 2
    assert 0.0 <= result["accuracy"]["50"]["median"] <= 1.0 and result["test_sentences"] == 40
    assert main(["probe", str(labeled_run), "--labels", "20", "--seeds", "1", "--random-encoder"]) == 0
    assert "random (as initialized) encoder" in capsys.readouterr().out
    assert main(["probe", str(labeled_run), "--labels", "100000"]) == 2
    assert capsys.readouterr().err.startswith("textvae: error: --labels 100000 is more than the 240")


def test_reconstruction_of_a_run_on_an_hf_corpus(tiny_config_path, tmp_path, capsys, monkeypatch):
    # the scores read the sentences evaluated from the run's encoded split, so every corpus kind works (a reload of
    # the text by name knew named corpora and paths only: "corpus not found" for hf:)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TEXTVAE_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "my_dataset"
    root.mkdir()
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        lines = [json.dumps({"sentence": s}) for s in make_sentences(60, seed)]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = config_lib.load(tiny_config_path, [f"data.corpus=hf:{root}", "train.max_steps=2", "train.eval_every=2"])
    train(config, tmp_path / "run")
    argv = ["evaluate", str(tmp_path / "run"), "--iw-samples", "1", "--reconstruction", "--max-examples", "5"]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reconstruction"]["sentences"] == 5


def test_probe_without_labels_is_one_line(tiny_config_path, corpus_dir, tmp_path, capsys):
    config = config_lib.load(tiny_config_path, [f"data.corpus={corpus_dir}", "train.max_steps=2", "train.eval_every=2"])
    train(config, tmp_path / "run")
    assert main(["probe", str(tmp_path / "run"), "--labels", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("textvae: error: corpus 'corpus' has no labels for its train split")


def _write_labeled(directory, split, rows):
    directory.mkdir(exist_ok=True)
    (directory / f"{split}.txt").write_text("".join(f"{s}\n" for s, _ in rows))
    (directory / f"{split}.labels").write_text("".join(f"{y}\n" for _, y in rows))


def test_bag_of_words_reference_separates_words_that_carry_the_label_and_not_noise(tmp_path):
    """scripts/probe_bow_reference.py: 100% where one word names the label; chance where the words are shuffled
    labels' noise (the same sentences, labels drawn independently)."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]

    def rows(count, informative):
        out = []
        for _ in range(count):
            label = int(rng.integers(2))
            filler = " ".join(rng.choice(words, 5))
            out.append((f"{filler} {'good' if label else 'bad'}" if informative else filler, label))
        return out

    script = [sys.executable, str(Path(__file__).resolve().parents[1] / "scripts/probe_bow_reference.py")]
    for informative, low, high in ((True, 1.0, 1.0), (False, 0.35, 0.65)):
        corpus = tmp_path / f"c{informative}"
        _write_labeled(corpus, "train", rows(400, informative))
        _write_labeled(corpus, "test", rows(300, informative))
        result = subprocess.run([*script, "--corpus-dir", str(corpus), "--labels", "200", "--seeds", "1", "--json"],
                                capture_output=True, text=True, check=True)  # fmt: skip
        accuracy = json.loads(result.stdout)["accuracy"]
        assert low <= accuracy["200"]["median"] <= high, (informative, accuracy)
    (tmp_path / "c_missing").mkdir()
    result = subprocess.run([*script, "--corpus-dir", str(tmp_path / "c_missing")], capture_output=True, text=True)
    assert result.returncode != 0 and result.stderr.strip().startswith("error:") and "train.labels" in result.stderr
