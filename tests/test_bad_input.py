"""A new user's inputs: tiny corpora, repeated config keys, a run stopped before its first evaluation."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from textvae import config as config_lib
from textvae.cli import main
from textvae.core.trainer import Trainer
from textvae.errors import UserError

from conftest import make_sentences

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "text" / "tiny.yaml"
# one evaluation (with its TensorBoard report) and short decodes: a second or so a run
FEW = ["train.max_steps=2", "train.eval_every=2", "train.eval_iw_samples=2", "train.num_text_samples=1",
       "data.max_length=8"]  # fmt: skip
FEW_STEPS = [arg for option in FEW for arg in ("--set", option)]


def _messages(err: str) -> list[str]:
    """The CLI's own lines on stderr (logging and progress bars aside)."""
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("textvae:")]


def _write(path: Path, count: int) -> Path:
    path.write_text("\n".join(make_sentences(count)) + "\n", encoding="utf-8")
    return path


# -- splits of 0, 1 and 2 sentences ---------------------------------------------------------------


@pytest.mark.parametrize("lines,holdout,sizes", [(3, 0.05, (1, 1, 1)), (10, 0.2, (6, 2, 2))])
def test_splits_of_one_and_two_sentences_train_evaluate_and_sample(tmp_path, capsys, lines, holdout, sizes):
    corpus, run = _write(tmp_path / "small.txt", lines), tmp_path / "run"
    args = ["train", str(CONFIG), "--set", f"data.corpus={corpus}", "--set", f"data.holdout={holdout}", *FEW_STEPS]
    assert main([*args, "--run-dir", str(run)]) == 0  # the report interpolates even with one valid sentence
    assert (run / "checkpoints/best.pt").is_file()
    for split, size in zip(("valid", "test"), sizes[1:]):
        capsys.readouterr()
        assert main(["evaluate", str(run), "--split", split, "--iw-samples", "3", "--json"]) == 0
        metrics = json.loads(capsys.readouterr().out)
        assert metrics["sentences"] == size and metrics["nll"] > 0
    assert main(["sample", str(run), "-n", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.parametrize("layout", ["holdout larger than the file", "empty valid.txt"])
def test_a_split_of_no_sentence_is_refused_before_training(tmp_path, capsys, layout):
    if layout == "empty valid.txt":
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        for split, count in (("train", 5), ("valid", 0), ("test", 2)):
            _write(corpus / f"{split}.txt", count)
        expected = r"valid.txt: the corpus is empty"
    else:  # 3 lines with 50% held out twice: 2 + 2 lines, none left to train on
        corpus, expected = _write(tmp_path / "small.txt", 3), r"small.txt: 3 lines are too few .* at least 5 lines"
    run = tmp_path / "run"
    args = ["train", str(CONFIG), "--set", f"data.corpus={corpus}", "--set", "data.holdout=0.5", *FEW_STEPS]
    assert main([*args, "--run-dir", str(run)]) == 2
    [message] = _messages(capsys.readouterr().err)
    assert re.search(expected, message)
    assert not (run / "checkpoints").exists()
    for command in (["evaluate", str(run)], ["sample", str(run)]):
        assert main(command) == 2
        assert len(_messages(capsys.readouterr().err)) == 1


@pytest.mark.parametrize("argv", [["evaluate", "RUN", "--iw-samples", "abc"], ["sample"], ["trian", "x.yaml"]])
def test_a_command_line_usage_error_is_one_line_too(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and err.startswith("textvae: error: ")


class _OneSentenceBatches:
    asked = None

    def plan(self, epoch, batch_size, max_tokens=0, seed=0, min_sentences=1):
        self.asked = min_sentences
        return [[0], [1]]  # a split of one sentence a batch: no batch can hold more

    def collate(self, indices):
        raise AssertionError("no batch can be shared by two processes")


def test_batches_smaller_than_the_process_count_are_refused_not_looped_over(tmp_path, monkeypatch):
    # under torchrun every rank needs a sentence of each batch; with none left the loop would spin for ever
    config = config_lib.from_dict({"train": {"max_steps": 3, "device": "cpu"}})
    source = _OneSentenceBatches()
    trainer = Trainer(torch.nn.Linear(1, 1), source, lambda m: {}, config, tmp_path, torch.device("cpu"))
    trainer.world = 2  # as under torchrun with 2 processes, without the process group
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda module, device_ids: module)
    with pytest.raises(UserError, match="no training batch holds a sentence for each of the 2 processes"):
        trainer._fit()
    assert source.asked == 2  # the plan was asked for batches every process can share


# -- repeated keys in a config --------------------------------------------------------------------

REPEATED = {
    "section": ("data:\n  corpus: ptb\nmodel:\n  latent_dim: 4\ndata:\n  corpus: x.txt\n", "'data'", 1, 5),
    "key": ("data:\n  corpus: ptb\nmodel:\n  latent_dim: 4\n  hidden_size: 8\n  latent_dim: 6\n", "'latent_dim'", 4, 6),
    "flow style": ("train: {max_steps: 3, seed: 1, max_steps: 4}\n", "'max_steps'", 1, 1),
}


@pytest.mark.parametrize("name", REPEATED)
def test_a_repeated_key_is_refused_with_its_two_lines(tmp_path, capsys, name):
    text, key, first, second = REPEATED[name]
    path = tmp_path / "repeated.yaml"
    path.write_text(text, encoding="utf-8")
    missing = tmp_path / "missing.txt"  # were the repeat let through, the run would stop at once, not train
    assert main(["train", str(path), "--set", f"data.corpus={missing}", "--run-dir", str(tmp_path / "run")]) == 2
    [message] = _messages(capsys.readouterr().err)
    assert message == f"textvae: error: {path}: key {key} appears twice, on lines {first} and {second}"


def test_a_repeated_key_deeper_than_the_config_is_refused_too(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("model:\n  hidden_sizes: {a: 1, b: 2, a: 3}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"key 'a' appears twice, on lines 2 and 2"):
        config_lib.load(path)
    # a key given explicitly beside the same key merged in with YAML's << is an override, not a repeat
    path.write_text("train:\n  <<: {max_steps: 3, seed: 1}\n  seed: 2\n", encoding="utf-8")
    assert (config_lib.load(path).train.max_steps, config_lib.load(path).train.seed) == (3, 2)


# -- a run with last.pt but no best.pt yet ----------------------------------------------------------


@pytest.fixture(scope="module")
def unevaluated_run(tmp_path_factory) -> Path:
    """A run that stopped before its first evaluation: 3 steps, checkpoint written, none of the
    train.eval_every=100 grid reached, so last.pt and no best.pt (as after a kill at step 3)."""
    root = tmp_path_factory.mktemp("unevaluated")
    corpus = root / "corpus"
    corpus.mkdir()
    for split, count in (("train", 40), ("valid", 8), ("test", 8)):
        _write(corpus / f"{split}.txt", count)
        (corpus / f"{split}.labels").write_text("".join(f"{i % 2}\n" for i in range(count)), encoding="utf-8")
    run = root / "run"
    args = ["train", str(CONFIG), "--set", f"data.corpus={corpus}", "--set", "train.max_steps=3", "--set",
            "train.eval_every=100", "--set", "train.num_text_samples=1", "--set", "data.max_length=8",
            "--run-dir", str(run)]  # fmt: skip
    assert main(args) == 0
    assert (run / "checkpoints/last.pt").is_file() and not (run / "checkpoints/best.pt").exists()
    return run


COMMANDS = {
    "evaluate": (["evaluate", "{run}", "--iw-samples", "2", "--json"], 1),
    "sample": (["sample", "{run}", "-n", "3"], 3),
    "reconstruct": (["reconstruct", "{run}", "cat w1 cat", "dog w2 dog"], 2),
    "interpolate": (["interpolate", "{run}", "cat w1 cat", "dog w2 dog", "--steps", "4"], 4),
    "probe": (["probe", "{run}", "--labels", "4", "--seeds", "2", "--json"], 1),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_on_a_run_without_best_pt_use_last_pt_and_say_so(unevaluated_run, capsys, command):
    args, lines = COMMANDS[command]
    capsys.readouterr()
    assert main([arg.format(run=unevaluated_run) for arg in args]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == lines
    assert _messages(err) == [f"textvae: note: {unevaluated_run} has no best.pt yet (no validation at "
                              "train.eval_every so far): using checkpoints/last.pt"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_on_a_run_without_any_checkpoint_give_one_line(unevaluated_run, tmp_path, capsys, command):
    run = tmp_path / "run"
    shutil.copytree(unevaluated_run, run, ignore=shutil.ignore_patterns("*.pt"))
    args, _ = COMMANDS[command]
    capsys.readouterr()
    assert main([arg.format(run=run) for arg in args]) == 2
    assert _messages(capsys.readouterr().err) == [
        f"textvae: error: {run} has no checkpoint yet (stopped before its first one): "
        "run the same `textvae train` command to go on"
    ]
