"""Typed, frozen configuration: YAML in, dotted `--set` overrides, strict validation, YAML out."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from textvae import registry
from textvae.errors import UserError


@dataclass(frozen=True)
class DataConfig:
    corpus: str = "ptb"  # a known name (ptb, snli, mnist) or a path: a directory with splits, or one text file
    tokenizer: str = "word"  # word | sentencepiece
    vocab_size: int = 10000  # word: most frequent types kept (specials included); sentencepiece: pieces
    min_count: int = 1  # word: types seen fewer times in train map to <unk>
    split: str = "whitespace"  # word: whitespace (pre-tokenized text) | punct (raw text: punctuation split off)
    lowercase: bool = False  # word: lower-case the text before building the vocabulary and encoding
    sentencepiece_type: str = "unigram"  # unigram | bpe
    max_length: int = 100  # tokens per sentence before <bos>/<eos>; longer ones are truncated and counted
    tokenizer_sample: int = 1000000  # sentencepiece trains on at most this many training sentences, spread evenly
    # over the split (a bounded sample for huge corpora; 0: all); the word vocabulary counts every sentence
    holdout: float = 0.05  # single-file corpus: share of lines held out for valid and for test (each);
    # mnist: share of the 60,000 training images held out for validation
    binarize: str = "dynamic"  # mnist: dynamic (fresh Bernoulli draw per epoch; fixed for valid/test) | none (grey
    # levels as Bernoulli targets, i.e. pixel cross-entropy, as the VaDE paper trains)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "lstm_vae"  # lstm_vae | lstm_lm | transformer_vae | transformer_lm | image_vae | image_cvae | vade
    # (textvae/registry.py: a key the chosen model does not read must keep its default)
    embedding_dim: int = 256  # word embedding size (a Transformer's model width)
    hidden_size: int = 256  # LSTM / GRU units (a Transformer's feed-forward width; an image MLP's layer width)
    latent_dim: int = 32  # a language model has none (any value accepted: a VAE's config with the LM's name)
    num_layers: int = 1  # stacked recurrent layers (Transformer blocks; image MLP layers)
    rnn: str = "lstm"  # lstm_vae, lstm_lm: the recurrent cell, lstm | gru (h0 = tanh(W z): no cell state)
    bidirectional: bool = False  # encoder only
    embedding_dropout: float = 0.0  # dropout on the input embeddings (encoder and decoder), in training only
    output_dropout: float = 0.0  # dropout on the decoder's states before the output layer (Transformer: in blocks)
    word_dropout: float = 0.0  # decoder input tokens replaced by <unk> in training mode (Bowman et al. 2016)
    # Transformer models: embedding_dim is the model width, hidden_size the feed-forward width
    num_heads: int = 4  # attention heads; must divide embedding_dim
    max_positions: int = 256  # longest sequence (<bos>/<eos> included) the position table covers
    z_injection: str = "embedding"  # embedding | memory | both (DELLA / Optimus)
    tie_embeddings: bool = False  # output projection shares the input embedding (Transformer decoder)
    # Image models (MNIST): an MLP with hidden_sizes (comma-separated; empty: num_layers x hidden_size), or conv
    architecture: str = "mlp"  # mlp | conv
    hidden_sizes: str = ""  # e.g. "500,500,2000" (VaDE); the decoder mirrors the encoder
    activation: str = "tanh"  # tanh | relu
    condition: str = "label"  # image_cvae: label (one-hot digit) | quadrants (Sohn et al.: predict the missing ones)
    quadrants_given: int = 1  # image_cvae with condition quadrants: 1, 2 or 3 quadrants are observed
    num_clusters: int = 10  # vade: mixture components of the prior
    mixture_covariance: str = "diag"  # vade: diag (the paper's) | full (a Cholesky factor per component)
    mixture_init: str = "gmm"  # vade: gmm (the paper's: a GMM fitted on the pretrained means) | umap (the mixture of
    # the clusters that UMAP + a GMM find on the code's manifold, N2D, McConville et al. 2020; needs umap-learn)
    bn_gamma: float = 0.0  # BN-VAE (Zhu et al. 2020): batch-normalize the posterior mean, scale fixed at gamma; 0: off
    flow: str = "none"  # posterior flow on the Gaussian q(z|x): none | planar | iaf (textvae/core/flows.py)
    flow_layers: int = 2  # flow layers when model.flow is not none
    flow_hidden: int = 64  # IAF: width of each layer's masked (MADE) hidden layer
    init: str = "default"  # image MLPs: default (torch's) | xavier (Glorot uniform weights, zero biases, as Keras)
    pretrain_loss: str = "likelihood"  # image models, objective.pretrain_steps: likelihood (the model's own) | mse
    # (squared error of the decoder's output layer, as DEC's autoencoder; a code that clusters better for VaDE)
    pretrain_dropout: float = 0.0  # image models: drop this share of input pixels during pretraining (denoising)


@dataclass(frozen=True)
class ObjectiveConfig:
    kl_schedule: str = "linear"  # constant | linear | logistic | cyclical
    kl_weight: float = 1.0  # the weight the schedule reaches (beta)
    kl_start: float = 0.0  # the weight before annealing starts (linear, cyclical)
    anneal_start: int = 0  # step at which the weight starts to move from kl_start (linear, logistic, cyclical)
    warmup_steps: int = 10000  # step at which linear reaches kl_weight; logistic's midpoint is halfway there
    logistic_k: float = 0.0025  # logistic steepness (Bowman et al. 2016)
    cycles: int = 4  # cyclical: number of cycles M (Fu et al. 2019)
    cycle_ratio: float = 0.5  # cyclical: share R of each cycle spent increasing
    cycle_total_steps: int = 0  # cyclical: steps the M cycles span; 0 means train.max_steps
    free_bits: float = 0.0  # nats; 0 disables
    free_bits_mode: str = "dim"  # dim: per dimension over the batch (Kingma et al. 2016) | vector: target KL
    iw_samples: int = 1  # k > 1 trains on the importance-weighted bound (IWAE, Burda et al. 2015)
    pretrain_steps: int = 0  # first train as a deterministic autoencoder (z = mu, no KL) for this many steps
    reset_decoder: bool = False  # at the end of pretrain_steps, re-initialize the decoder (Li et al. 2019)
    aggressive: bool = False  # aggressive inference-network training (He et al. 2019) until validation MI stops rising
    aggressive_max_inner: int = 100  # most encoder-only steps before each decoder step
    aggressive_window: int = 15  # encoder-only steps per window; the inner loop stops when a window's loss rises
    aggressive_until: int = 0  # aggressive training ends at this step at the latest (a cost cap); 0: MI rule only
    bow_weight: float = 0.0  # bag-of-words loss on z (Zhao et al. 2017); 0 disables


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"  # adam | sgd
    lr: float = 0.001  # learning rate (the plateau decay and warm-up scale it)
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0  # L2 penalty of the optimizer (Adam's classic, not AdamW's decoupled one)
    grad_clip: float = 5.0  # max global gradient norm; 0 disables
    lr_decay: float = 0.5  # factor applied when validation stops improving; 1 disables
    lr_patience: int = 2  # evaluations without improvement before a decay
    min_lr: float = 1e-5  # the plateau decay stops here
    warmup_steps: int = 0  # linear learning-rate warm-up from 0 over this many steps (Transformers); 0 disables


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 20000  # optimizer steps in all (a resumed run may raise it)
    batch_size: int = 32  # sentences per batch
    max_tokens: int = 0  # also cap padded tokens per batch; 0 disables
    eval_every: int = 1000  # steps
    checkpoint_every: int = 0  # steps between last.pt writes; 0 means eval_every
    early_stopping: int = 0  # evaluations without improvement before stopping; 0 disables
    eval_iw_samples: int = 10  # importance samples for the NLL logged during training
    eval_batch_size: int = 64  # sentences (images) per evaluation batch; IW samples are chunked by a token budget
    log_every: int = 50  # steps between train/ scalars
    num_text_samples: int = 3  # decoded samples and reconstructions logged at each evaluation
    seed: int = 0  # initialization, data order, dropout and z draws; the same seed gives the same run
    mi_max_examples: int = 100000  # MI and active units over a seeded sample of this many examples when a split
    # is larger (the output's mi_over says so; MI's cost grows as N^2); 0: always the whole split
    data_workers: int = 0  # processes that tokenize a corpus not yet in the encoded cache; 0: one per CPU (<= 8)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 (autocast; the loss stays fp32)
    num_threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    compile: str = "none"  # none | default | reduce-overhead: torch.compile the training step's forward (opt-in:
    # each new batch shape compiles first; reduce-overhead records CUDA graphs on a GPU; docs/performance.md)
    max_nonfinite_steps: int = 20  # consecutive skipped (NaN/inf) steps before the run stops
    collapse_kl: float = 0.1  # collapse monitor: validation KL (nats per example) below this is counted
    collapse_patience: int = 3  # evaluations in a row with a collapse signal before the warning; 0 disables
    # KL alone misses an x-independent posterior that free bits hold away from the prior: information counts too
    collapse_mi: float = 0.1  # validation MI (nats) below this is counted; 0 disables (MI <= KL always)
    collapse_au: int = 1  # fewer validation active units than this are counted (1: none active); 0 disables


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


_CHOICES = {
    ("data", "tokenizer"): ("word", "sentencepiece"),
    ("data", "split"): ("whitespace", "punct"),
    ("data", "sentencepiece_type"): ("unigram", "bpe"),
    ("data", "binarize"): ("dynamic", "none"),
    ("model", "name"): registry.names(),
    ("model", "rnn"): ("lstm", "gru"),
    ("model", "z_injection"): ("embedding", "memory", "both"),
    ("model", "architecture"): ("mlp", "conv"),
    ("model", "activation"): ("tanh", "relu"),
    ("model", "condition"): ("label", "quadrants"),
    ("model", "init"): ("default", "xavier"),
    ("model", "flow"): ("none", "planar", "iaf"),
    ("model", "pretrain_loss"): ("likelihood", "mse"),
    ("model", "mixture_covariance"): ("diag", "full"),
    ("model", "mixture_init"): ("gmm", "umap"),
    ("objective", "kl_schedule"): ("constant", "linear", "logistic", "cyclical"),
    ("objective", "free_bits_mode"): ("dim", "vector"),
    ("optim", "name"): ("adam", "sgd"),
    ("train", "device"): ("auto", "cpu", "cuda"),
    ("train", "precision"): ("fp32", "bf16"),
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
}
_PROBABILITIES = {
    ("data", "holdout"),
    ("model", "embedding_dropout"),
    ("model", "output_dropout"),
    ("model", "word_dropout"),
    ("objective", "cycle_ratio"),
}


def _check_type(key: str, value: Any, kind: Any) -> Any:
    """Return `value` as `kind` (int widens to float) or raise UserError naming `key`."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if is_int and not -(2**63) <= value < 2**63:  # torch takes 64-bit integers; float() of a huge one overflows
        raise UserError(f"config key {key}: out of range (64-bit integers), got {_short(value)}")
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
        raise UserError(f"config key {key}: expected {kind.__name__}, got {_short(value)}")
    if kind is float and not math.isfinite(value):  # YAML reads .nan and .inf; no setting means them
        raise UserError(f"config key {key}: must be a finite number, got {value}")
    return value


def _short(value: Any, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters, so that an error stays one readable line."""
    if isinstance(value, int) and value.bit_length() > 256:  # repr() refuses ints of over 4,300 digits
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _label(key: Any) -> str:
    """A key as written when it is a short printable string, else its (cut) repr: one line either way."""
    return key if isinstance(key, str) and key.isprintable() and len(key) <= 80 else _short(key)


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config section {name}: expected a mapping, got {_short(raw)}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise UserError(f"unknown config key {name}.{_label(key)} (known: {', '.join(sorted(known))})")
        values[key] = _check_type(f"{name}.{key}", value, hints[key])
    return cls(**values)


def validate(config: Config) -> Config:
    """Check ranges and choices; raise UserError naming the first bad key."""
    for section in dataclasses.fields(config):
        part = getattr(config, section.name)
        for f in dataclasses.fields(part):
            key, value = (section.name, f.name), getattr(part, f.name)
            dotted = ".".join(key)
            if key in _CHOICES and value not in _CHOICES[key]:
                raise UserError(f"config key {dotted}: {_short(value)} is not one of {', '.join(_CHOICES[key])}")
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
    if not 0.0 < config.optim.lr_decay <= 1.0:
        raise UserError(f"config key optim.lr_decay: must be in (0, 1] (1 disables), got {config.optim.lr_decay}")
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
    if objective.bow_weight and entry.family != "text":
        raise UserError("config key objective.bow_weight: the bag-of-words loss is for text models")
    if model.flow != "none" and objective.free_bits > 0 and objective.free_bits_mode == "dim":
        raise UserError("config key objective.free_bits_mode: free bits per dimension need a per-dimension KL, "
                        "which a flow posterior does not have (use free_bits_mode=vector, a target KL)")  # fmt: skip
    if model.pretrain_loss != "likelihood" and model.architecture != "mlp":
        raise UserError("config key model.pretrain_loss: mse is for the image MLPs")
    if not 0 <= model.pretrain_dropout < 1:
        raise UserError(f"config key model.pretrain_dropout: a share in [0, 1) of pixels, got {model.pretrain_dropout}")
    if entry.family == "image":
        if model.quadrants_given not in (1, 2, 3):
            raise UserError(f"config key model.quadrants_given: must be 1, 2 or 3, got {model.quadrants_given}")
        hidden_sizes(model)
    return config


IMAGE_MODELS = registry.names("image")


def _check_model_keys(model: ModelConfig) -> None:
    """Refuse a model.* key that the chosen model does not read (textvae/registry.py), set to a value other
    than its default: it would be ignored without a word."""
    entry = registry.spec(model.name)
    for field_ in dataclasses.fields(ModelConfig):
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


def from_dict(raw: Any) -> Config:
    """Build and validate a Config from a nested mapping (as read from YAML)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError("config: expected a mapping of sections (data, model, objective, optim, train)")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for name in raw:
        if name not in sections:
            raise UserError(f"unknown config section {_short(name)} (known: {', '.join(sections)})")
    built = {name: _build_section(name, f.default_factory, raw.get(name)) for name, f in sections.items()}
    return validate(Config(**built))


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(config)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names a key twice; `load` turns it into a UserError naming the file."""

    def __init__(self, key: Any, first: int, second: int):
        super().__init__(f"key {_short(key)} appears twice, on lines {first} and {second}")


class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key repeated in a mapping at any depth (the safe loader keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            # merge keys (<<) may repeat; a non-scalar key is refused by the safe loader itself
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with StrictLoader; every failure is a yaml.YAMLError."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # StrictLoader is a SafeLoader: no Python objects
    except (ValueError, RecursionError) as error:  # an int of over 4,300 digits; nesting deeper than Python's stack
        raise yaml.YAMLError(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML scalars) to a nested mapping."""
    # copy the sections (a non-mapping one is left for from_dict to refuse, naming it)
    raw = {k: dict(v) if isinstance(v, dict) else ({} if v is None else v) for k, v in (raw or {}).items()}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {_short(item)}: expected section.key=value")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2:
            raise UserError(f"--set {_short(item)}: expected a key of the form section.key")
        try:
            value = parse_yaml(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        section = raw.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise UserError(f"config section {_label(parts[0])}: expected a mapping, got {_short(section)}")
        section[parts[1]] = value
    return raw


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file, apply overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except DuplicateKeyError as error:
        raise UserError(f"{path}: {error}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{path}: not a valid YAML file ({first})") from None
    if raw is not None and not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections (data, model, objective, optim, train)")
    return from_dict(apply_overrides(raw or {}, overrides or []))


def save(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")


def replace(config: Config, **sections: dict[str, Any]) -> Config:
    """Return a copy with some fields of some sections changed, e.g. replace(c, train={"max_steps": 5})."""
    changed = {name: dataclasses.replace(getattr(config, name), **fields) for name, fields in sections.items()}
    return validate(dataclasses.replace(config, **changed))
