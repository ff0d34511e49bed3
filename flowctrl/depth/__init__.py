"""Depth backends for camera flow: a file, Depth-Anything (transformers), or a plane fallback.

``resolve_depth(image, depth=None | path | Tensor, depth_model=None)`` → z-depth ``(1, 1, H, W)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F_nn

from flowctrl.depth.file import DEPTH_KINDS, load_depth_file, save_depth_png16
from flowctrl.depth.plane import FlatDepthWarning, plane_depth
from flowctrl.errors import InputError

__all__ = ["resolve_depth", "load_depth_file", "save_depth_png16", "plane_depth", "FlatDepthWarning", "DEPTH_KINDS"]

_ESTIMATORS: dict = {}


def resolve_depth(
    image: torch.Tensor,
    depth: Union[None, str, "os.PathLike[str]", torch.Tensor] = None,
    depth_model: Union[None, str, "os.PathLike[str]", object] = None,
    *,
    depth_kind: str = "depth",
    depth_scale: Optional[float] = None,
    plane_distance: float = 1.0,
) -> torch.Tensor:
    """Depth of ``image (1, 3, H, W)`` as z-depth ``(1, 1, H, W)`` float32 at the image's size.

    Priority: an explicit ``depth`` (tensor ``(H, W)``/``(1, H, W)``/``(1, 1, H, W)`` of z-depth, or a
    file path, see :mod:`flowctrl.depth.file`), then ``depth_model`` (hub id / folder of a
    Depth-Anything checkpoint, or a callable ``image -> depth``), else a plane at ``plane_distance``
    with a :class:`FlatDepthWarning`.
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
    if depth_model is not None:
        if callable(depth_model) and not isinstance(depth_model, (str, os.PathLike)):
            estimator = depth_model
        else:
            key = str(depth_model)
            if key not in _ESTIMATORS:
                from flowctrl.depth.anything import DepthAnythingEstimator

                _ESTIMATORS[key] = DepthAnythingEstimator.from_pretrained(key)
            estimator = _ESTIMATORS[key]
        d = estimator(image)
        return d.reshape(1, 1, h, w).to(torch.float32)
    return plane_depth(h, w, distance=plane_distance)
