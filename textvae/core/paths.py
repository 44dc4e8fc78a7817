"""The directories textvae reads data from and caches into, shared by text and image runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The directory textvae controls for downloads, the encoded corpora and the `datasets` cache."""
    return Path(os.environ.get("TEXTVAE_CACHE_DIR", Path.home() / ".cache" / "textvae"))


def data_dir() -> Path:
    """$TEXTVAE_DATA_DIR, else ../shared/data beside the checkout when present, else the user cache."""
    if os.environ.get("TEXTVAE_DATA_DIR"):
        return Path(os.environ["TEXTVAE_DATA_DIR"])
    beside = Path(__file__).resolve().parents[3] / "shared" / "data"
    if beside.is_dir():
        return beside
    return cache_dir() / "data"
