"""What the posterior-collapse remedies need to know about a model: which parameters are the decoder.

A model's decoder is its `decoder` submodule, or the modules its `decoder_modules()` returns; everything
else (embeddings of the encoder, the posterior layer, a bag-of-words head, a mixture prior) is the
inference side. Aggressive training (He et al. 2019) updates one side at a time; the decoder reset
(Li et al. 2019) re-initializes the decoder alone.
"""

from __future__ import annotations

import logging

from torch import nn

from textvae.errors import UserError

log = logging.getLogger(__name__)


def decoder_modules(model: nn.Module) -> list[nn.Module]:
    own = getattr(model, "decoder_modules", None)
    if own is not None:
        return list(own())
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, nn.Module):
        raise UserError(f"{type(model).__name__} has no decoder module: this remedy cannot tell its parts apart")
    return [decoder]


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(inference-side parameters, decoder parameters); together they are all of model.parameters()."""
    decoder = [p for module in decoder_modules(model) for p in module.parameters()]
    ids = {id(p) for p in decoder}
    return [p for p in model.parameters() if id(p) not in ids], decoder


def reset_decoder(model: nn.Module) -> None:
    """Re-initialize every decoder layer as at construction (Li et al. 2019); the encoder keeps its weights.

    Draws from torch's global generator, whose state the checkpoint keeps, so a resumed run matches.
    """
    count = 0
    for module in decoder_modules(model):
        for layer in module.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
                count += 1
    log.info("decoder re-initialized (%d layers)", count)
