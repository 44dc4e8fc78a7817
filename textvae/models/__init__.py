"""Models: batch -> distribution parameters and log-likelihoods. Built by name from a ModelConfig."""

from __future__ import annotations

from torch import nn

from textvae.config import ModelConfig
from textvae.data.tokenizer import Tokenizer
from textvae.models.lstm_lm import LSTMLM
from textvae.models.lstm_vae import LSTMVAE
from textvae.models.transformer_vae import TransformerLM, TransformerVAE

TEXT_MODELS = {
    "lstm_vae": LSTMVAE,
    "lstm_lm": LSTMLM,
    "transformer_vae": TransformerVAE,
    "transformer_lm": TransformerLM,
}


def build_text_model(config: ModelConfig, tokenizer: Tokenizer) -> nn.Module:
    """Build the text model named by config.name for this tokenizer's vocabulary."""
    cls = TEXT_MODELS[config.name]
    return cls(len(tokenizer), config, tokenizer.pad_id, tokenizer.unk_id, tokenizer.special_ids)
