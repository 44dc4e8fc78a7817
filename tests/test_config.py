import re

import pytest

from textvae import config as config_lib
from textvae.errors import UserError


def test_defaults_and_required_keys_exist():
    config = config_lib.from_dict({})
    for dotted in ("data.corpus", "train.max_steps", "train.eval_every", "train.batch_size", "train.seed",
                   "train.device", "model.latent_dim", "model.embedding_dim", "model.hidden_size"):  # fmt: skip
        section, key = dotted.split(".")
        assert hasattr(getattr(config, section), key)


def test_overrides_are_typed():
    raw = config_lib.apply_overrides({}, ["optim.lr=0.0005", "train.max_steps=200", "model.bidirectional=true"])
    config = config_lib.from_dict(raw)
    assert config.optim.lr == 0.0005 and config.train.max_steps == 200 and config.model.bidirectional is True


def test_floats_in_exponent_form_without_a_dot_are_floats(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-3 as a string, which the float keys then refused; the docs' own defaults read 1e-5
    raw = config_lib.apply_overrides({}, ["optim.lr=1e-3", "optim.min_lr=-2E+1"])
    assert raw["optim"]["lr"] == 0.001 and raw["optim"]["min_lr"] == -20.0
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 5e-4\n  min_lr: 1e-5\ndata:\n  corpus: 1e\n", encoding="utf-8")
    config = config_lib.load(path)
    assert config.optim.lr == 0.0005 and config.optim.min_lr == 1e-5 and config.data.corpus == "1e"


def test_data_keys_of_the_chosen_family_and_tokenizer_are_accepted():
    config_lib.from_dict({"data": {"tokenizer": "sentencepiece", "sentencepiece_type": "bpe", "vocab_size": 500}})
    config_lib.from_dict({"data": {"split": "punct", "lowercase": True, "min_count": 2, "max_length": 40}})
    config_lib.from_dict({"model": {"name": "vade", "architecture": "mlp"}, "data": {"binarize": "none"}})


def test_int_widens_to_float():
    assert config_lib.from_dict({"optim": {"lr": 1}}).optim.lr == 1.0


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"train": {"max_stepz": 3}}, "unknown config key train.max_stepz"),
        ({"data": {"binarize": "none"}}, "data.binarize: read by the image models only"),
        ({"model": {"name": "image_vae"}, "data": {"vocab_size": 5}}, "data.vocab_size: read by the text models"),
        ({"data": {"sentencepiece_type": "bpe"}}, "data.sentencepiece_type: read by the sentencepiece tokenizer"),
        ({"data": {"tokenizer": "sentencepiece", "lowercase": True}}, "data.lowercase: read by the word tokenizer"),
        ({"trian": {}}, "unknown config section 'trian'"),
        ({"train": {"max_steps": "ten"}}, "train.max_steps: expected int"),
        ({"train": {"batch_size": 2.5}}, "train.batch_size: expected int"),
        ({"model": {"bidirectional": "yes"}}, "model.bidirectional: expected bool"),
        ({"model": {"hidden_size": -4}}, "model.hidden_size: must be positive"),
        ({"model": {"name": "gru_vae"}}, "model.name: 'gru_vae' is not one of"),
        ({"objective": {"free_bits": -1.0}}, "objective.free_bits: must not be negative"),
        ({"model": {"word_dropout": 1.5}}, "model.word_dropout: must be in"),
        ({"train": 3}, "section train: expected a mapping"),
        ({"objective": {"anneal_start": 500, "warmup_steps": 100}}, "would end (step 100) before it starts"),
        ({"objective": {"kl_schedule": "cyclical", "cycles": 4, "cycle_total_steps": 2}}, "fewer steps than cycles"),
    ],
)
def test_bad_configs_name_the_key(raw, message):
    with pytest.raises(UserError, match=re.escape(message)):
        config_lib.from_dict(raw)


def test_bad_override_syntax():
    with pytest.raises(UserError, match="section.key=value"):
        config_lib.apply_overrides({}, ["lr0.1"])
    with pytest.raises(UserError, match="section.key"):
        config_lib.apply_overrides({}, ["lr=0.1"])


def test_save_and_load_round_trip(tmp_path):
    config = config_lib.from_dict({"train": {"max_steps": 7}, "data": {"corpus": "x.txt"}})
    config_lib.save(config, tmp_path / "c.yaml")
    assert config_lib.load(tmp_path / "c.yaml") == config


def test_shipped_configs_are_valid():
    from pathlib import Path

    for path in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"):
        config_lib.load(path)
