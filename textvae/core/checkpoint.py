"""Checkpoints: written atomically (temp file, fsync, rename), loaded without arbitrary pickle."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

from textvae.errors import UserError


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` so that a reader only ever sees a complete old or new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; a missing or unreadable file is a UserError."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for a damaged or foreign file
        raise UserError(f"{path}: not a readable textvae checkpoint ({type(error).__name__})") from None


def remove_partial_writes(directory: Path) -> None:
    """Delete the temporary files of writes cut short by a kill (save_checkpoint's *.tmp)."""
    if directory.is_dir():
        for stale in directory.glob("*.tmp"):
            stale.unlink()


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_rng(state: dict[str, Any], rank: int, world: int) -> bool:
    """Set this process's RNG states from a checkpoint (each rank its own under torchrun); False when the run was
    saved on another number of processes (then the caller seeds the streams afresh)."""
    ranks = state.get("rng_ranks") or []
    if world > 1 and len(ranks) != world:
        return False
    set_rng_state(ranks[rank] if world > 1 else state["rng"])
    return True
