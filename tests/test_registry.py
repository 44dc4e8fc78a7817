"""The model registry: what each model is, which keys it reads, and the one-line refusal of the others."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from textvae import config as config_lib
from textvae import registry
from textvae.config import ModelConfig
from textvae.core.latent import LatentModel
from textvae.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads(path):
    config_lib.load(path)  # they set some keys to their defaults explicitly (latent_dim: 32 on lstm_lm)


@pytest.mark.parametrize(("overrides", "key"), [
    (["model.num_clusters=5"], "model.num_clusters"),
    (["model.name=transformer_vae", "model.bidirectional=true"], "model.bidirectional"),
    (["model.name=lstm_lm", "model.bn_gamma=0.5"], "model.bn_gamma"),
    (["model.name=lstm_lm", "model.flow=iaf"], "model.flow"),
    (["model.architecture=conv"], "model.architecture"),
    (["model.name=image_vae"], "model.embedding_dim"),  # tiny.yaml sets it: a text key
])  # fmt: skip
def test_a_key_the_model_does_not_read_is_refused_in_one_line(tiny_config_path, overrides, key):
    with pytest.raises(UserError) as refused:
        config_lib.load(tiny_config_path, overrides)
    message = str(refused.value)
    assert message.startswith(f"config key {key}: ") and "does not read it" in message and "\n" not in message


def test_the_language_models_accept_their_vae_twins_latent_keys(tiny_config_path):
    # a VAE's config with model.name set to its LM is the LM of the same size (the reproduction suites' rows)
    config_lib.load(tiny_config_path, ["model.name=lstm_lm", "model.latent_dim=64", "model.bidirectional=true"])
    config_lib.load(tiny_config_path, ["model.name=transformer_lm", "model.z_injection=both"])


def test_the_registry_names_real_keys_and_classes():
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for name, entry in registry.MODELS.items():
        assert entry.reads | entry.tolerates <= fields - {"name"}, name
        assert not entry.reads & entry.tolerates, name
        if entry.family == "text":  # image classes are checked in test_image (they need the [image] extra)
            cls = entry.load()
            assert issubclass(cls, LatentModel) == entry.latent, name
            assert callable(cls.flops) and callable(cls.gemm_shapes), name
    assert set(config_lib.IMAGE_MODELS) == set(registry.names("image"))


def test_the_image_classes_are_registered():
    for name in registry.names("image"):
        assert issubclass(registry.spec(name).load(), LatentModel), name


def test_flops_come_from_the_model_and_grow_with_its_parts(tiny_config_path):
    config = config_lib.load(tiny_config_path)
    vae, lm = registry.spec("lstm_vae").load(), registry.spec("lstm_lm").load()
    assert vae.flops(config.model, 200, 100, 10) > lm.flops(config.model, 200, 100, 10) > 0  # the encoder
    assert vae.flops(config.model, 200, 100, 10, samples=5) > vae.flops(config.model, 200, 100, 10)


def test_importing_the_config_imports_neither_torch_nor_the_image_baselines():
    code = "import sys, textvae.config; print(sorted(m for m in ('torch', 'image_baselines') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
