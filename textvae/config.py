"""Typed, frozen configuration: YAML in, dotted `--set` overrides, strict validation (config_checks.py), YAML out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from textvae import registry
from textvae.config_checks import build_section, hidden_sizes, short, validate
from textvae.config_yaml import DuplicateKeyError, apply_overrides, parse_yaml
from textvae.errors import UserError

__all__ = [  # the checks and the YAML reading live in config_checks.py and config_yaml.py
    "Config", "DataConfig", "ModelConfig", "ObjectiveConfig", "OptimConfig", "TrainConfig", "IMAGE_MODELS",
    "apply_overrides", "from_dict", "hidden_sizes", "load", "parse_yaml", "replace", "save", "to_dict", "validate",
]  # fmt: skip


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
    encoder_pooling: str = "last"  # lstm_vae: the encoder's summary of a sentence, last (the final state) | mean | max
    # (over the encoder's outputs at w_1 .. <eos>, each direction's)
    latent_skip: bool = False  # lstm_vae: z also added (through a linear map) to every decoder state that the output
    # layer reads, a skip connection past the recurrence (skip-VAE, Dieng et al. 2019)
    embedding_dropout: float = 0.0  # dropout on the input embeddings (encoder and decoder), in training only
    encoder_dropout: bool = True  # lstm_vae: embedding_dropout on the encoder's embeddings too (false: the decoder's
    # only, as in He et al. / Li et al. 2019's released code)
    output_dropout: float = 0.0  # dropout on the decoder's states before the output layer (Transformer: in blocks)
    weight_drop: float = 0.0  # LSTM decoder: DropConnect on its hidden-to-hidden weights, one mask a batch (Wan et al.
    # 2013; AWD-LSTM, Merity et al. 2018), in training only
    embedding_type_dropout: float = 0.0  # RNN decoder: whole rows of its input embedding dropped, one mask a batch
    # (every occurrence of a word type; Gal & Ghahramani 2016, AWD-LSTM's embedding dropout), in training only
    word_dropout: float = 0.0  # decoder input tokens replaced by <unk> in training mode (Bowman et al. 2016)
    # Transformer models: embedding_dim is the model width, hidden_size the feed-forward width
    num_heads: int = 4  # attention heads; must divide embedding_dim
    max_positions: int = 256  # longest sequence (<bos>/<eos> included) the position table covers
    z_injection: str = "embedding"  # embedding | memory | both (DELLA / Optimus)
    tie_embeddings: bool = False  # the output layer shares the decoder's input embedding (LSTM: via a map to its width)
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
    init: str = "default"  # default (torch's) | xavier (image MLPs: Glorot uniform weights, zero biases, as Keras) |
    # uniform (lstm_vae, lstm_lm: every weight U(-0.01, 0.01), embeddings U(-0.1, 0.1), as He et al. / Li et al. 2019)
    # | uniform_decoder (the decoder so, the encoder torch's default)
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
    free_bits_mode: str = "dim"  # dim: per dimension over the batch (Kingma et al. 2016) | example: per dimension and
    # sentence (Li et al. 2019's released code, fb=2) | vector: target KL
    iw_samples: int = 1  # k > 1 trains on the importance-weighted bound (IWAE, Burda et al. 2015)
    pretrain_steps: int = 0  # first train as a deterministic autoencoder (z = mu, no KL) for this many steps
    reset_decoder: bool = False  # at the end of pretrain_steps, re-initialize the decoder (Li et al. 2019)
    pretrain_sample: bool = False  # pretraining draws z from q(z|x) with KL weight 0 (a beta = 0 VAE, as Li et al.'s
    # released text_beta.py --beta 0) instead of decoding z = mu
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
    lr_decay_from_step: int = 0  # evaluations before this global step neither count as stalls nor decay the LR (Li
    # et al. 2019 halve no LR before epoch 15 of the VAE); 0: from the first
    max_decays: int = 0  # stop training at the evaluation that makes this many plateau decays (counted from the VAE
    # phase after autoencoder pretraining), as He et al. / Li et al. 2019's released code stops at the fifth; 0: never
    reload_best: bool = False  # at each plateau decay, go back to the weights and optimizer state of best.pt, the
    # new LR kept (as He et al. / Li et al. 2019's released code does)
    warmup_steps: int = 0  # linear learning-rate warm-up from 0 over this many steps (Transformers); 0 disables
    average: str = "none"  # none | uniform | ema: validate, keep best.pt and rebuild models with an average of the
    # weights along training (uniform: Polyak & Juditsky 1992, the average of AWD-LSTM's ASGD; core/average.py)
    average_from_step: int = 0  # the average takes in the weights after this global step and later ones
    average_every: int = 1  # ... after every this many steps (consecutive weights differ little; each costs a pass
    # over the parameters, within bench_train's noise for the 512/1,024 VAE on 2 CPU cores: docs/models.md)
    average_decay: float = 0.999  # ema only: the weight of the old average at each step


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 20000  # optimizer steps in all (a resumed run may raise it)
    max_minutes: float = 0.0  # also stop (evaluated, checkpointed) after this much wall time of training,
    # evaluations included, summed over resumed sessions: runs compared at the same time budget; 0 disables
    refit_encoder_steps: int = 0  # after training, Adam steps of the inference side alone against the decoder as
    # evaluated (no dropout), from best.pt, free bits kept: tighter ELBO and IW-k NLL of the same p(x)
    # (core/refit.py); 0: none
    refit_encoder_lr: float = 0.0003  # Adam's LR for those steps
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
    precision: str = "fp32"  # fp32 | bf16 (autocast; the loss stays fp32) | auto: bf16 where the device has bf16
    # matmul units (AMX or AVX512-BF16 on a CPU, a bf16 GPU), else fp32
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


IMAGE_MODELS = registry.names("image")


def from_dict(raw: Any) -> Config:
    """Build and validate a Config from a nested mapping (as read from YAML)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError("config: expected a mapping of sections (data, model, objective, optim, train)")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for name in raw:
        if name not in sections:
            raise UserError(f"unknown config section {short(name)} (known: {', '.join(sections)})")
    built = {name: build_section(name, f.default_factory, raw.get(name)) for name, f in sections.items()}
    return validate(Config(**built))


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(config)


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
