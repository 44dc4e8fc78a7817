"""The run directory's lifecycle, the same for text and image runs (DESIGN.md, run directory): open it for
training (create, refuse a different model, threads, save the config), read its config back, pick and load
a checkpoint. The wiring of each family builds its data and model between these steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from textvae import config as config_lib
from textvae.config import Config
from textvae.core import distributed
from textvae.core.checkpoint import load_checkpoint
from textvae.core.schedules import cycle_span
from textvae.errors import UserError

# A resumed run may change how long and how it trains, not what it trains.
RESUMABLE_SECTIONS = ("train",)


def check_resumable(config: Config, run_dir: Path) -> None:
    """Refuse to resume a run directory with a config that trains something else."""
    saved_file = run_dir / "config.yaml"
    if not (run_dir / "checkpoints" / "last.pt").is_file() or not saved_file.is_file():
        return
    saved_config = config_lib.load(saved_file)
    saved, current = config_lib.to_dict(saved_config), config_lib.to_dict(config)
    for section in saved:
        if section in RESUMABLE_SECTIONS:
            continue
        for key, value in saved[section].items():
            if current[section][key] != value and (section, key) != ("objective", "cycle_total_steps"):
                raise UserError(
                    f"{run_dir} holds a run with {section}.{key}={value!r}, not {current[section][key]!r}: "
                    "use another --run-dir to train a different model"
                )
    if config.objective.kl_schedule == "cyclical":  # cycles over train.max_steps would move with it
        span = cycle_span(saved_config.objective, saved_config.train.max_steps)
        if cycle_span(config.objective, config.train.max_steps) != span:
            raise UserError(f"{run_dir} holds a run whose KL cycles span {span} steps, which this config would "
                            f"change (objective.cycle_total_steps 0 spans train.max_steps): add --set "
                            f"objective.cycle_total_steps={span} to keep them")  # fmt: skip


def open_run(config: Config, run_dir: Path) -> None:
    """Before training: create `run_dir`, refuse a config that trains something else than its checkpoints,
    set train.num_threads. The config is saved by `save_config` once the data is known to load."""
    run_dir.mkdir(parents=True, exist_ok=True)
    check_resumable(config, run_dir)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)


def save_config(config: Config, run_dir: Path) -> None:
    """Write RUN_DIR/config.yaml (the main process only, under torchrun)."""
    if distributed.is_main():
        config_lib.save(config, run_dir / "config.yaml")


def read_config(run_dir: Path) -> Config:
    """A trained run's config; one clear error for a directory that is not a run."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"{run_dir} is not a textvae run directory (config.yaml missing)")
    return config_lib.load(config_file)


def load_trained(run_dir: Path, config: Config, model: nn.Module, checkpoint: str = "best") -> int:
    """Load a run's weights into `model` (its best.pt, else last.pt): the checkpoint must have been trained
    with the data and model config of RUN_DIR/config.yaml. -> the checkpoint's optimizer step."""
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        path = run_dir / "checkpoints" / "last.pt"
    state: dict[str, Any] = load_checkpoint(path)
    saved = state.get("config", {})
    current = config_lib.to_dict(config)
    config_file = run_dir / "config.yaml"
    for section in ("data", "model"):  # keys added to textvae after the checkpoint take their defaults
        if any(current[section].get(key) != value for key, value in saved.get(section, {}).items()):
            raise UserError(f"{path}: checkpoint was trained with another {section} config than {config_file}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise UserError(f"{path}: checkpoint does not match the model in {config_file}") from None
    average = state.get("average") or {}
    if average.get("averages"):  # optim.average: the weights validation saw, kept beside last.pt's (best.pt's are them)
        with torch.no_grad():
            for param, value in zip(model.parameters(), average["averages"]):
                param.copy_(value)
    return state["position"]["step"]
