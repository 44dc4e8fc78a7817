"""The config's strict validation: types, ranges, choices, the keys each model reads (textvae/registry.py) and
the settings that contradict each other. Every failure is one UserError naming the key."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import TYPE_CHECKING, Any

from textvae import registry
from textvae.errors import UserError

if TYPE_CHECKING:
    from textvae.config import Config, ModelConfig

_CHOICES = {
    ("data", "tokenizer"): ("word", "sentencepiece"),
    ("data", "split"): ("whitespace", "punct"),
    ("data", "sentencepiece_type"): ("unigram", "bpe"),
    ("data", "binarize"): ("dynamic", "none"),
    ("model", "name"): registry.names(),
    ("model", "rnn"): ("lstm", "gru"),
    ("model", "encoder_pooling"): ("last", "mean", "max"),
    ("model", "z_injection"): ("embedding", "memory", "both"),
    ("model", "architecture"): ("mlp", "conv"),
    ("model", "activation"): ("tanh", "relu"),
    ("model", "condition"): ("label", "quadrants"),
    ("model", "init"): ("default", "xavier", "uniform", "uniform_decoder"),
    ("model", "flow"): ("none", "planar", "iaf"),
    ("model", "pretrain_loss"): ("likelihood", "mse"),
    ("model", "mixture_covariance"): ("diag", "full"),
    ("model", "mixture_init"): ("gmm", "umap"),
    ("objective", "kl_schedule"): ("constant", "linear", "logistic", "cyclical"),
    ("objective", "free_bits_mode"): ("dim", "example", "vector"),
    ("optim", "name"): ("adam", "sgd"),
    ("optim", "average"): ("none", "uniform", "ema"),
    ("train", "device"): ("auto", "cpu", "cuda"),
    ("train", "precision"): ("fp32", "bf16", "auto"),
    ("train", "compile"): ("none", "default", "reduce-overhead"),
}
_POSITIVE = {
    ("data", "vocab_size"),
    ("data", "max_length"),
    ("model", "embedding_dim"),
    ("model", "hidden_size"),
    ("model", "latent_dim"),
    ("model", "num_layers"),
    ("model", "num_heads"),
    ("optim", "average_every"),
    ("model", "max_positions"),
    ("objective", "cycles"),
    ("objective", "iw_samples"),
    ("objective", "aggressive_max_inner"),
    ("objective", "aggressive_window"),
    ("model", "num_clusters"),
    ("model", "flow_layers"),
    ("model", "flow_hidden"),
    ("optim", "lr"),
    ("train", "max_steps"),
    ("train", "batch_size"),
    ("train", "eval_every"),
    ("train", "eval_batch_size"),
    ("train", "log_every"),
    ("train", "refit_encoder_lr"),
}
_PROBABILITIES = {
    ("data", "holdout"),
    ("model", "embedding_dropout"),
    ("model", "embedding_type_dropout"),
    ("model", "output_dropout"),
    ("model", "weight_drop"),
    ("model", "word_dropout"),
    ("objective", "cycle_ratio"),
}


def check_type(key: str, value: Any, kind: Any) -> Any:
    """Return `value` as `kind` (int widens to float) or raise UserError naming `key`."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if is_int and not -(2**63) <= value < 2**63:  # torch takes 64-bit integers; float() of a huge one overflows
        raise UserError(f"config key {key}: out of range (64-bit integers), got {short(value)}")
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = is_int
    elif kind is float:
        ok = is_int or isinstance(value, float)
        value = float(value) if ok else value
    elif kind is str and is_int:
        ok, value = True, str(value)  # --set model.hidden_sizes=500 reads as an int
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise UserError(f"config key {key}: expected {kind.__name__}, got {short(value)}")
    if kind is float and not math.isfinite(value):  # YAML reads .nan and .inf; no setting means them
        raise UserError(f"config key {key}: must be a finite number, got {value}")
    return value


def short(value: Any, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters, so that an error stays one readable line."""
    if isinstance(value, int) and value.bit_length() > 256:  # repr() refuses ints of over 4,300 digits
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def label(key: Any) -> str:
    """A key as written when it is a short printable string, else its (cut) repr: one line either way."""
    return key if isinstance(key, str) and key.isprintable() and len(key) <= 80 else short(key)


def build_section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config section {name}: expected a mapping, got {short(raw)}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise UserError(f"unknown config key {name}.{label(key)} (known: {', '.join(sorted(known))})")
        values[key] = check_type(f"{name}.{key}", value, hints[key])
    return cls(**values)


def validate(config: Config) -> Config:
    """Check ranges and choices; raise UserError naming the first bad key."""
    for section in dataclasses.fields(config):
        part = getattr(config, section.name)
        for f in dataclasses.fields(part):
            key, value = (section.name, f.name), getattr(part, f.name)
            dotted = ".".join(key)
            if key in _CHOICES and value not in _CHOICES[key]:
                raise UserError(f"config key {dotted}: {short(value)} is not one of {', '.join(_CHOICES[key])}")
            if key in _POSITIVE and value <= 0:
                raise UserError(f"config key {dotted}: must be positive, got {value}")
            if key in _PROBABILITIES and not 0.0 <= value < 1.0:
                raise UserError(f"config key {dotted}: must be in [0, 1), got {value}")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise UserError(f"config key {dotted}: must not be negative, got {value}")
    if not config.data.corpus.strip():
        raise UserError("config key data.corpus: empty (a known corpus name or a path)")
    model, entry = config.model, registry.spec(config.model.name)
    _check_model_keys(model)
    _check_data_keys(config.data, entry.family)
    families = {"xavier": "image", "uniform": "text", "uniform_decoder": "text"}  # model.init default: any family
    if "init" in entry.reads and families.get(model.init, entry.family) != entry.family:
        raise UserError(f"config key model.init: {model.init} is for the {families[model.init]} models, not "
                        f"{model.name}")  # fmt: skip
    if not 0.0 < config.optim.lr_decay <= 1.0:
        raise UserError(f"config key optim.lr_decay: must be in (0, 1] (1 disables), got {config.optim.lr_decay}")
    if not 0.0 < config.optim.average_decay < 1.0:
        raise UserError(f"config key optim.average_decay: must be in (0, 1), got {config.optim.average_decay}")
    if model.weight_drop and model.rnn != "lstm":
        raise UserError("config key model.weight_drop: is for LSTM decoders (model.rnn: lstm)")
    if "num_heads" in entry.reads and model.embedding_dim % model.num_heads:
        raise UserError(f"config key model.num_heads: {model.num_heads} does not divide model.embedding_dim")
    if "max_positions" in entry.reads and model.max_positions < config.data.max_length + 2:
        raise UserError("config key model.max_positions: must be at least data.max_length + 2")
    objective = config.objective
    if objective.kl_schedule in ("linear", "logistic") and objective.warmup_steps <= objective.anneal_start:
        raise UserError(
            f"config key objective.warmup_steps: the KL schedule would end (step {objective.warmup_steps}) "
            f"before it starts (objective.anneal_start {objective.anneal_start})"
        )
    if objective.kl_schedule == "cyclical" and 0 < objective.cycle_total_steps < objective.cycles:
        raise UserError("config key objective.cycle_total_steps: fewer steps than cycles")
    if objective.iw_samples > 1 and objective.free_bits > 0:
        raise UserError("config key objective.free_bits: free bits do not apply to the IWAE bound (iw_samples > 1)")
    if objective.reset_decoder and not objective.pretrain_steps:
        raise UserError("config key objective.reset_decoder: needs objective.pretrain_steps > 0 (the decoder is "
                        "re-initialized when the autoencoder phase ends)")  # fmt: skip
    for key in ("aggressive", "bow_weight", "reset_decoder"):
        if not entry.latent and getattr(objective, key):
            raise UserError(f"config key objective.{key}: {model.name} has no latent code")
    if config.train.refit_encoder_steps and not entry.latent:
        raise UserError(f"config key train.refit_encoder_steps: {model.name} has no latent code (no encoder to refit)")
    if objective.bow_weight and entry.family != "text":
        raise UserError("config key objective.bow_weight: the bag-of-words loss is for text models")
    if model.flow != "none" and objective.free_bits > 0 and objective.free_bits_mode in ("dim", "example"):
        raise UserError("config key objective.free_bits_mode: free bits per dimension need a per-dimension KL, "
                        "which a flow posterior does not have (use free_bits_mode=vector, a target KL)")  # fmt: skip
    if model.pretrain_loss != "likelihood" and (model.architecture != "mlp" or model.name != "vade"):
        # VaDE's end of pretraining maps the grey-level outputs to logits (image_baselines/models.py); no other does
        raise UserError("config key model.pretrain_loss: mse is for VaDE's MLP")
    if model.flow != "none" and model.name == "vade":  # its mixture is fitted to, and clusters, the base mu
        raise UserError("config key model.flow: VaDE's mixture prior clusters the encoder's code; no flow")
    if not 0 <= model.pretrain_dropout < 1:
        raise UserError(f"config key model.pretrain_dropout: a share in [0, 1) of pixels, got {model.pretrain_dropout}")
    if entry.family == "image":
        if model.quadrants_given not in (1, 2, 3):
            raise UserError(f"config key model.quadrants_given: must be 1, 2 or 3, got {model.quadrants_given}")
        hidden_sizes(model)
    return config


# data.* keys and who reads them; a key whose reader is not chosen must keep its default (as the model.* keys)
_DATA_READERS = {
    "tokenizer": "the text models", "vocab_size": "the text models", "max_length": "the text models",
    "min_count": "the word tokenizer", "split": "the word tokenizer", "lowercase": "the word tokenizer",
    "sentencepiece_type": "the sentencepiece tokenizer", "tokenizer_sample": "the sentencepiece tokenizer",
    "binarize": "the image models",
}  # fmt: skip


def _check_data_keys(data, family: str) -> None:
    """Refuse a data.* key that nothing of this config reads (the other family's, the other tokenizer's), set to
    a value other than its default: it would be ignored without a word."""
    reading = {"the image models"} if family == "image" else {"the text models", f"the {data.tokenizer} tokenizer"}
    for field_ in dataclasses.fields(type(data)):
        reader = _DATA_READERS.get(field_.name)
        if reader is not None and reader not in reading and getattr(data, field_.name) != field_.default:
            raise UserError(f"config key data.{field_.name}: read by {reader} only; leave it at {field_.default!r}")


def _check_model_keys(model: ModelConfig) -> None:
    """Refuse a model.* key that the chosen model does not read (textvae/registry.py), set to a value other
    than its default: it would be ignored without a word."""
    entry = registry.spec(model.name)
    for field_ in dataclasses.fields(type(model)):
        key = field_.name
        if key == "name" or key in entry.reads or key in entry.tolerates or getattr(model, key) == field_.default:
            continue
        readers = [name for name, other in registry.MODELS.items() if key in other.reads]
        raise UserError(f"config key model.{key}: {model.name} does not read it; leave it at {field_.default!r} "
                        f"(a key of {', '.join(readers)})")  # fmt: skip


def hidden_sizes(model: ModelConfig) -> list[int]:
    """The image MLP's hidden layer widths: model.hidden_sizes, else num_layers x hidden_size."""
    if not model.hidden_sizes.strip():
        return [model.hidden_size] * model.num_layers
    try:
        sizes = [int(part) for part in model.hidden_sizes.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) <= 0:
        raise UserError(f"config key model.hidden_sizes: expected positive integers separated by commas, "
                        f"got {model.hidden_sizes!r}")  # fmt: skip
    return sizes
