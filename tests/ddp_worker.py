"""Run under torchrun by test_distributed.py: `textvae train` with each rank's final parameters saved (and, after an
encoder refit, its refit parameters)."""

import sys
from pathlib import Path

import torch

from textvae import pipeline
from textvae.cli import main
from textvae.core import distributed
from textvae.core.trainer import Trainer

_fit = Trainer.fit
_refit = pipeline.refit_encoder


def fit_and_dump(self):
    metrics = _fit(self)
    torch.save(self.model.state_dict(), Path(self.run_dir) / f"params_rank{distributed.rank()}.pt")
    return metrics


def refit_and_dump(model, data, evaluate, config, run_dir, device):
    metrics = _refit(model, data, evaluate, config, run_dir, device)
    torch.save(model.state_dict(), Path(run_dir) / f"refit_rank{distributed.rank()}.pt")
    return metrics


Trainer.fit = fit_and_dump
pipeline.refit_encoder = refit_and_dump
sys.exit(main(sys.argv[1:]))
