"""Models: batch -> distribution parameters and log-likelihoods. Built by name from a ModelConfig."""

from __future__ import annotations

from torch import nn

from textvae.config import ModelConfig
from textvae.core.flows import attach_flow
from textvae.data.tokenizer import Tokenizer
from textvae.models.bow import BagOfWords
from textvae.models.lstm_lm import LSTMLM
from textvae.models.lstm_vae import LSTMVAE
from textvae.models.transformer_vae import TransformerLM, TransformerVAE

TEXT_MODELS = {
    "lstm_vae": LSTMVAE,
    "lstm_lm": LSTMLM,
    "transformer_vae": TransformerVAE,
    "transformer_lm": TransformerLM,
}


def build_text_model(config: ModelConfig, tokenizer: Tokenizer, bag_of_words: bool = False) -> nn.Module:
    """Build the text model named by config.name for this tokenizer's vocabulary; `bag_of_words` adds the
    head of the bag-of-words loss (objective.bow_weight > 0) as `model.bag_of_words`."""
    cls = TEXT_MODELS[config.name]
    model = cls(len(tokenizer), config, tokenizer.pad_id, tokenizer.unk_id, tokenizer.special_ids)
    attach_flow(model, config.flow, config.flow_layers, config.flow_hidden)
    if bag_of_words:
        model.bag_of_words = BagOfWords(config.latent_dim, config.hidden_size, len(tokenizer), tokenizer.special_ids)
    return model
