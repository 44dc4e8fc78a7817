"""pyproject's extras: `pip install -e .` is enough for the text models; a missing extra is one line naming it."""

import subprocess
import sys
from pathlib import Path

import pytest

from textvae.errors import UserError, require_extra

ROOT = Path(__file__).resolve().parents[1]
# the modules of the [image] and [plots] extras, hidden from a subprocess as if they were not installed
HIDE = "import sys\nfor name in {modules}:\n    sys.modules[name] = None  # import fails, find_spec says missing\n"


def _run(code: str, modules: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE.format(modules=modules) + code], capture_output=True,
                          text=True, cwd=ROOT)  # fmt: skip


def test_a_missing_extra_is_one_line_naming_it():
    with pytest.raises(UserError) as missing:
        require_extra("image", "the image baselines need", "textvae_no_such_module")
    assert str(missing.value) == (
        "the image baselines need the [image] extra: pip install -e '.[image]' (missing: textvae_no_such_module)"
    )
    require_extra("image", "nothing needs", "torch")  # installed: no error


def test_the_extras_hold_what_the_image_baselines_and_plots_need():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {
        extra: {r.split(">")[0].split("[")[0] for r in reqs} for extra, reqs in project["optional-dependencies"].items()
    }
    main = {r.split(">")[0] for r in project["dependencies"]}
    assert names["image"] == {"scipy", "scikit-learn", "umap-learn", "pillow"} and names["plots"] == {"matplotlib"}
    assert "textvae" in names["dev"] and {"pytest", "ruff", "hypothesis"} <= names["dev"]
    assert {"torch", "datasets", "sentencepiece", "tensorboard", "tqdm", "pyyaml", "numpy", "sacrebleu"} <= main
    assert not {"scipy", "umap-learn", "pillow", "matplotlib"} & main  # scikit-learn: the probe's, a text command


def test_text_models_train_and_evaluate_without_the_extras(tiny_config_path, corpus_dir, tmp_path):
    run = tmp_path / "run"
    code = (f"from textvae.cli import main\n"
            f"assert main(['train', {str(tiny_config_path)!r}, '--run-dir', {str(run)!r}, '--set', "
            f"'data.corpus={corpus_dir}', '--set', 'train.max_steps=4', '--set', 'train.eval_every=2']) == 0\n"
            f"assert main(['evaluate', {str(run)!r}, '--iw-samples', '2', '--json']) == 0\n")  # fmt: skip
    result = _run(code, ("scipy", "PIL", "umap", "matplotlib"))
    assert result.returncode == 0, result.stderr[-2000:]


def test_an_image_run_without_the_image_extra_is_one_line(tmp_path):
    code = (
        f"from textvae.cli import main\n"
        f"raise SystemExit(main(['train', 'configs/image/vae_mnist.yaml', '--run-dir', {str(tmp_path)!r}]))\n"
    )
    result = _run(code, ("PIL",))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "textvae: error: the image baselines need the [image] extra: pip install -e '.[image]' (missing: PIL)"
    )
