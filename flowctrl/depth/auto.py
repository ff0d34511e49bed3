"""Where Depth-Anything weights come from, and the per-image depth cache.

``--depth-model auto`` (the default) means :data:`DEFAULT_DEPTH_MODEL` (Depth Anything V2 Small,
Apache-2.0): taken from the Hugging Face cache, downloaded on first use when the hub can be reached
(``HF_HUB_OFFLINE=1`` forbids it), and when neither works stage 1 falls back to the plane with one
warning line. An explicit hub id / folder the user asked for must be had: otherwise a one-line
:class:`~flowctrl.errors.MissingWeightsError` (the CLI exits 2).

Only ``config.json``, ``preprocessor_config.json`` and ``*.safetensors`` are fetched (no pickled
weights). Depth maps are cached per (image content, model), so repeated calls with the same image
(the app, a parameter sweep) run the model once.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch

from flowctrl.hub import hub_cache_dir, hub_offline, is_hub_id

DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
AUTO_NAMES = ("auto", "default")
NONE_NAMES = ("none", "plane", "off")
ALLOW_PATTERNS = ["config.json", "preprocessor_config.json", "*.safetensors"]
CACHE_SIZE = 8

_DEPTH_CACHE: "OrderedDict[Tuple[str, str], torch.Tensor]" = OrderedDict()
_AUTO_FAILURE: dict = {}  # once "auto" could not be had in this process, do not ask the hub again


def fetch_model(name: str) -> Path:
    """Local folder of ``name`` (a folder, or a hub id from the cache / downloaded on request).

    Raises:
        OSError with a short reason when the weights cannot be had (not cached and offline,
        network failure, no safetensors).
    """
    if not is_hub_id(name):
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise OSError("no config.json in this folder")
        return path
    if hub_offline() and not _maybe_cached(name):
        # the common offline case answered without importing huggingface_hub (quick start stays quick)
        raise OSError("not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name, allow_patterns=ALLOW_PATTERNS, local_files_only=True, cache_dir=hub_cache_dir())
    except Exception as cached_exc:  # noqa: BLE001 - any miss means: try the hub, if allowed
        if hub_offline():
            raise OSError("not in the Hugging Face cache and HF_HUB_OFFLINE is set") from cached_exc
        try:
            folder = snapshot_download(name, allow_patterns=ALLOW_PATTERNS, etag_timeout=10, cache_dir=hub_cache_dir())
        except Exception as exc:  # noqa: BLE001 - network / auth / missing repo: one line for the user
            raise OSError(f"not in the Hugging Face cache and the download failed ({type(exc).__name__})") from exc
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise OSError("the cached snapshot has no config.json")
    if not any(folder.glob("*.safetensors")):
        raise OSError("no .safetensors weights (pickled weights are not loaded)")
    return folder


def _maybe_cached(name: str) -> bool:
    """False only when the hub cache certainly holds no snapshot of ``name``."""
    cache = hub_cache_dir()
    if cache is None:  # huggingface_hub's default: $XDG_CACHE_HOME/huggingface/hub or ~/.cache/...
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = str(Path(base) / "huggingface" / "hub")
    return (Path(cache) / ("models--" + name.replace("/", "--")) / "snapshots").is_dir()


def auto_failure() -> Optional[str]:
    """Why ``auto`` fell back to the plane in this process, or None."""
    return _AUTO_FAILURE.get(DEFAULT_DEPTH_MODEL)


def remember_auto_failure(reason: str) -> None:
    _AUTO_FAILURE[DEFAULT_DEPTH_MODEL] = reason


def forget_auto_failure() -> None:
    """Let the next ``auto`` ask the cache / hub again (tests, a changed environment)."""
    _AUTO_FAILURE.clear()


def image_key(image: torch.Tensor) -> str:
    """Content hash of ``image (1, 3, H, W)`` (shape + bytes)."""
    data = image.detach().to(torch.float32).cpu().contiguous()
    h = hashlib.sha1(str(tuple(data.shape)).encode())
    h.update(data.numpy().tobytes())
    return h.hexdigest()


def cached_depth(image: torch.Tensor, model_key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The depth of ``image`` by ``model_key``: from the cache, else ``compute()`` (then kept, LRU)."""
    key = (image_key(image), model_key)
    if key in _DEPTH_CACHE:
        _DEPTH_CACHE.move_to_end(key)
        return _DEPTH_CACHE[key].clone()
    depth = compute()
    _DEPTH_CACHE[key] = depth.detach().clone()
    while len(_DEPTH_CACHE) > CACHE_SIZE:
        _DEPTH_CACHE.popitem(last=False)
    return depth


def clear_depth_cache() -> None:
    _DEPTH_CACHE.clear()
