"""Depth backends for camera flow: a file, Depth-Anything (transformers), or a plane fallback.

``resolve_depth(image, depth=None | path | Tensor, depth_model="auto")`` → z-depth ``(1, 1, H, W)``.
``depth_model``: ``"auto"`` / None (Depth Anything V2 Small when it can be had, else the plane with one
warning), ``"none"`` (the plane), a hub id / folder (must be had), or a callable.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F_nn

from flowctrl.depth.file import DEPTH_KINDS, load_depth_file, save_depth_png16
from flowctrl.depth.auto import AUTO_NAMES, DEFAULT_DEPTH_MODEL, NONE_NAMES, cached_depth
from flowctrl.depth.plane import FlatDepthWarning, plane_depth
from flowctrl.errors import InputError

__all__ = ["resolve_depth", "depth_source", "DEFAULT_DEPTH_MODEL", "load_depth_file", "save_depth_png16", "plane_depth", "FlatDepthWarning", "DEPTH_KINDS"]

_ESTIMATORS: dict = {}


def resolve_depth(
    image: torch.Tensor,
    depth: Union[None, str, "os.PathLike[str]", torch.Tensor] = None,
    depth_model: Union[None, str, "os.PathLike[str]", object] = "auto",
    *,
    depth_kind: str = "depth",
    depth_scale: Optional[float] = None,
    plane_distance: float = 1.0,
) -> torch.Tensor:
    """Depth of ``image (1, 3, H, W)`` as z-depth ``(1, 1, H, W)`` float32 at the image's size.

    Priority: an explicit ``depth`` (tensor ``(H, W)``/``(1, H, W)``/``(1, 1, H, W)`` of z-depth, or a
    file path, see :mod:`flowctrl.depth.file`), then ``depth_model`` (``"auto"``/None: Depth Anything
    V2 Small from the cache or the hub, falling back to the plane when it cannot be had; ``"none"``:
    the plane; a hub id / folder of a Depth-Anything checkpoint that must be had, or a callable
    ``image -> depth``), else a plane at ``plane_distance`` with a :class:`FlatDepthWarning`.
    Estimated depth is cached per (image content, model).
    """
    h, w = image.shape[-2:]
    if depth is not None:
        if isinstance(depth, torch.Tensor):
            d = depth.detach().to(torch.float32)
            if d.dim() < 2 or d.dim() > 4 or d.numel() != d.shape[-1] * d.shape[-2]:
                raise InputError.at(None, "depth", f"tensor has shape {tuple(depth.shape)}", "give (H, W) or (1, 1, H, W) z-depth")
            d = d.reshape(1, 1, *d.shape[-2:])
            if not (torch.isfinite(d).all() and (d > 0).all()):
                raise InputError.at(None, "depth", "tensor has non-positive or non-finite values", "give z-depth > 0")
            if tuple(d.shape[-2:]) != (h, w):
                d = 1.0 / F_nn.interpolate(1.0 / d, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            return d
        return load_depth_file(Path(depth), size=(h, w), kind=depth_kind, scale=depth_scale)
    kind = depth_source(depth_model)
    if kind == "callable":
        return depth_model(image).reshape(1, 1, h, w).to(torch.float32)  # type: ignore[operator]
    if kind == "none":
        return plane_depth(h, w, distance=plane_distance)
    name = DEFAULT_DEPTH_MODEL if kind == "auto" else str(depth_model)
    if kind == "auto":
        from flowctrl.depth.auto import auto_failure, remember_auto_failure
        from flowctrl.errors import MissingWeightsError

        reason = auto_failure()
        if reason is None:
            try:
                _estimator(name)
            except MissingWeightsError:
                from flowctrl.depth.auto import fetch_model

                try:
                    fetch_model(name)
                    reason = "it could not be loaded"
                except OSError as exc:
                    reason = str(exc)
                remember_auto_failure(reason)
        if reason is not None:
            return plane_depth(h, w, distance=plane_distance, reason=f"Depth Anything V2 Small: {reason}")
    estimator = _estimator(name)
    d = cached_depth(image, _model_key(name), lambda: estimator(image))
    return d.reshape(1, 1, h, w).to(torch.float32)


def depth_source(depth_model: object) -> str:
    """``"auto"`` (None / "auto"), ``"none"`` (the plane), ``"callable"`` or ``"model"`` (hub id / folder)."""
    if depth_model is None:
        return "auto"
    if callable(depth_model) and not isinstance(depth_model, (str, os.PathLike)):
        return "callable"
    name = str(depth_model).strip().lower()
    if name in AUTO_NAMES:
        return "auto"
    if name in NONE_NAMES:
        return "none"
    return "model"


def _model_key(name: str) -> str:
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _estimator(name: str):
    key = _model_key(name)
    if key not in _ESTIMATORS:
        from flowctrl.depth.anything import DepthAnythingEstimator

        _ESTIMATORS[key] = DepthAnythingEstimator.from_pretrained(name)
    return _ESTIMATORS[key]
