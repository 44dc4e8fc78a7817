"""The one module of textvae that names image_baselines (DESIGN.md layers; tests/test_layers.py checks it):
`textvae train`, `evaluate` and `sample` go to the text wiring (textvae/pipeline.py) or to the image
baselines' (image_baselines/run.py) by the registry's family of model.name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textvae import registry
from textvae.config import Config
from textvae.core import distributed
from textvae.core.run import read_config
from textvae.errors import UserError


def is_image(config: Config) -> bool:
    return registry.spec(config.model.name).family == "image"


def train(config: Config, run_dir: Path) -> dict[str, Any] | None:
    """Train (or resume) the run in `run_dir`; return the last validation metrics.

    Under torchrun each process trains on its share of every batch (DistributedDataParallel).
    """
    device = distributed.init(config.train.device)
    try:
        if is_image(config):
            from image_baselines.run import train_image

            return train_image(config, run_dir, device)
        from textvae.pipeline import train_text

        return train_text(config, run_dir, device)
    finally:
        distributed.shutdown()


def evaluate_run(run_dir: Path, split: str, iw_samples: int, precision: str = "fp32", **options: Any) -> dict[str, Any]:
    """Evaluate a trained run: pipeline.evaluate_text_run or image_baselines.run.evaluate_image_run, whose keyword
    `options` these are (gaps, max_examples; quality for text runs only)."""
    config = read_config(run_dir)
    if is_image(config):
        if options.pop("quality", None) is not None:
            raise UserError("--reconstruction and --interpolation are for text runs")
        from image_baselines.run import evaluate_image_run

        return evaluate_image_run(run_dir, config, split, iw_samples, precision, **options)
    from textvae.pipeline import evaluate_text_run

    return evaluate_text_run(run_dir, split, iw_samples, precision, **options)


def sample_images(run_dir: Path, n: int, label: int | None, out: Path | None, seed: int = 0) -> Path | None:
    """An image run: write n generated images to `out` (default RUN_DIR/images/sample.png) and return its path;
    a text run: None (the caller decodes sentences)."""
    config = read_config(run_dir)
    if not is_image(config):
        return None
    from image_baselines.run import sample_images as sample

    if n < 1:
        raise UserError("-n must be at least 1")
    out = out or run_dir / "images" / "sample.png"
    sample(run_dir, config, n, label, out, seed)
    return out
