"""Models: batch -> distribution parameters and log-likelihoods. Built by name (textvae/registry.py)."""

from __future__ import annotations

from torch import nn

from textvae import registry
from textvae.config import ModelConfig
from textvae.core.flows import attach_flow
from textvae.data.tokenizer import Tokenizer
from textvae.errors import UserError
from textvae.models.bow import BagOfWords


def build_text_model(config: ModelConfig, tokenizer: Tokenizer, bag_of_words: bool = False) -> nn.Module:
    """Build the text model named by config.name for this tokenizer's vocabulary; `bag_of_words` adds the
    head of the bag-of-words loss (objective.bow_weight > 0) as `model.bag_of_words`."""
    entry = registry.spec(config.name)
    if entry.family != "text":
        raise UserError(f"model.name {config.name}: not a text model (known: {', '.join(registry.names('text'))})")
    cls = entry.load()
    model = cls(len(tokenizer), config, tokenizer.pad_id, tokenizer.unk_id, tokenizer.special_ids)
    attach_flow(model, config.flow, config.flow_layers, config.flow_hidden)
    if bag_of_words:
        model.bag_of_words = BagOfWords(config.latent_dim, config.hidden_size, len(tokenizer), tokenizer.special_ids)
    return model
