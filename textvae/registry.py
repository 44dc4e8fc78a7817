"""What each model is: its class (imported on first use), its family, whether it has a latent code, and the
`model.*` config keys it reads.

config.py validates against this table (a key the chosen model does not read, set to another value than its
default, is refused in one line, as Sentence-VAE's silently ignored `-rnn lstm` shows it must be); the wiring
builds models from it; scripts ask the class for what they need (FLOP counts) instead of guessing from names.
No import here reaches torch or image_baselines: the classes are named by "module:attribute".
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# The keys of each kind of model. A flow acts on any Gaussian posterior (core/flows.py).
_FLOW = ("flow", "flow_layers", "flow_hidden")
_RNN = ("embedding_dim", "hidden_size", "num_layers", "rnn", "embedding_dropout", "output_dropout", "word_dropout",
        "init", "tie_embeddings", "weight_drop", "embedding_type_dropout")  # fmt: skip
_TRANSFORMER = ("embedding_dim", "hidden_size", "num_layers", "num_heads", "max_positions", "tie_embeddings",
                "embedding_dropout", "output_dropout", "word_dropout")  # fmt: skip
_IMAGE = ("latent_dim", "hidden_size", "num_layers", "hidden_sizes", "architecture", "activation", "init",
          "pretrain_loss", "pretrain_dropout", *_FLOW)  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    name: str
    target: str  # "module:Class" of the model, imported by `load`
    family: str  # text | image
    latent: bool  # has a latent code z (a VAE), or not (a language model)
    reads: frozenset[str]  # the model.* keys it reads, besides name
    # keys it ignores but accepts with any value: the latent path of its VAE twin, so that a VAE's config with
    # model.name set to the LM (the reproduction suites' baseline rows) trains the LM of the same size
    tolerates: frozenset[str] = frozenset()

    def load(self) -> type:
        """The model's class. An image model needs the [image] extra (checked by image_baselines)."""
        module, attribute = self.target.split(":")
        return getattr(importlib.import_module(module), attribute)


def _spec(name: str, target: str, family: str, latent: bool, reads: tuple[str, ...], tolerates=()) -> ModelSpec:
    return ModelSpec(name, target, family, latent, frozenset(reads), frozenset(tolerates))


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _spec("lstm_vae", "textvae.models.lstm_vae:LSTMVAE", "text", True,
              (*_RNN, "latent_dim", "bidirectional", "encoder_pooling", "encoder_dropout", "latent_skip", "bn_gamma",
               *_FLOW)),
        _spec("lstm_lm", "textvae.models.lstm_lm:LSTMLM", "text", False, _RNN,
              tolerates=("latent_dim", "bidirectional", "encoder_pooling", "encoder_dropout", "latent_skip",
                         "flow_layers", "flow_hidden")),
        _spec("transformer_vae", "textvae.models.transformer_vae:TransformerVAE", "text", True,
              (*_TRANSFORMER, "latent_dim", "z_injection", "bn_gamma", *_FLOW)),
        _spec("transformer_lm", "textvae.models.transformer_vae:TransformerLM", "text", False, _TRANSFORMER,
              tolerates=("latent_dim", "z_injection", "flow_layers", "flow_hidden")),
        # image baselines: model.condition quadrants builds image_baselines.models.QuadrantCVAE
        _spec("image_vae", "image_baselines.models:ImageVAE", "image", True, _IMAGE),
        _spec("image_cvae", "image_baselines.models:LabelCVAE", "image", True, (*_IMAGE, "condition",
                                                                               "quadrants_given")),
        _spec("vade", "image_baselines.models:VaDE", "image", True,
              (*_IMAGE, "num_clusters", "mixture_covariance", "mixture_init")),
    )
}  # fmt: skip


def spec(name: str) -> ModelSpec:
    """The registry's entry for model.name `name` (config validation has checked that it is one)."""
    return MODELS[name]


def names(family: str | None = None) -> tuple[str, ...]:
    """The registered model names, of one family or all."""
    return tuple(name for name, entry in MODELS.items() if family is None or entry.family == family)
