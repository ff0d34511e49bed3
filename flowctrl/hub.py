"""Where model weights come from: a local folder or a Hugging Face hub id, and whether the hub may be asked.

Shared by every loader that takes ``PATH|HUB_ID`` (depth, segmentation, the guided and trained
backends), so they agree on what a hub id is and on ``HF_HUB_OFFLINE``. Imports nothing heavy:
callers check here before importing huggingface_hub.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

__all__ = ["hub_cache_dir", "hub_offline", "is_hub_id"]


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` read now (the variable may be set after huggingface_hub was imported)."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - transformers depends on it
        return True


def hub_cache_dir() -> Optional[str]:
    """The hub cache folder from the environment now (``HF_HUB_CACHE``, else ``HF_HOME/hub``), or None
    for huggingface_hub's own default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def is_hub_id(name: str) -> bool:
    """``owner/name`` that is not an existing local path."""
    return (not Path(name).expanduser().exists() and not name.startswith((".", "/", "~"))
            and name.count("/") == 1)
