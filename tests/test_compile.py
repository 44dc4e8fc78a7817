"""train.compile (issue 18, item 3): the compiled training step trains as the eager one does, and its checkpoints
are the model's own state (an eager run resumes them)."""

import pytest

from textvae import config as config_lib
from textvae.core.checkpoint import load_checkpoint
from textvae.dispatch import train
from textvae.errors import UserError


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lstm_vae", "transformer_vae"])
def test_a_compiled_step_trains_as_the_eager_one(tiny_config_path, corpus_dir, tmp_path, model):
    options = [f"data.corpus={corpus_dir}", f"model.name={model}", "train.max_steps=6", "train.eval_every=6",
               "model.embedding_dropout=0", "model.output_dropout=0"]  # fmt: skip
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    plain = train(config_lib.load(tiny_config_path, options), eager)
    fast = train(config_lib.load(tiny_config_path, [*options, "train.compile=default"]), compiled)
    for key in (
        "nelbo",
        "rec",
        "kl",
        "nll",
    ):  # after six steps: fp32 sums reordered
        assert fast[key] == pytest.approx(plain[key], rel=1e-3, abs=0.01), key
    state = load_checkpoint(compiled / "checkpoints" / "last.pt")
    assert set(state["model"]) == set(load_checkpoint(eager / "checkpoints" / "last.pt")["model"])
    resumed = train(config_lib.load(tiny_config_path, [*options, "train.max_steps=12", "train.compile=none"]),
                    compiled)  # fmt: skip
    assert resumed["nelbo"] < fast["nelbo"] + 5.0  # trains on from the compiled run's state
    assert load_checkpoint(compiled / "checkpoints" / "last.pt")["position"]["step"] == 12  # resumed, not restarted


def test_an_unknown_compile_mode_is_refused(tiny_config_path):
    with pytest.raises(UserError, match="train.compile"):
        config_lib.load(tiny_config_path, ["train.compile=fast"])
