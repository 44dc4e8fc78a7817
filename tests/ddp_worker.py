"""Run under torchrun by test_distributed.py: `textvae train` with each rank's final parameters saved."""

import sys
from pathlib import Path

import torch

from textvae.cli import main
from textvae.core import distributed
from textvae.core.trainer import Trainer

_fit = Trainer.fit


def fit_and_dump(self):
    metrics = _fit(self)
    torch.save(self.model.state_dict(), Path(self.run_dir) / f"params_rank{distributed.rank()}.pt")
    return metrics


Trainer.fit = fit_and_dump
sys.exit(main(sys.argv[1:]))
