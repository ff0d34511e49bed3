"""Plane fallback: a fronto-parallel plane at a fixed distance when no depth is given."""
from __future__ import annotations

import warnings
from typing import Optional

import torch

PLANE_WARNING = (
    "no depth given: using a fronto-parallel plane at distance {distance:g}; camera rotation and zoom "
    "are exact but translation parallax is flat (give a depth map or a depth model for real parallax)"
)
REASON = " [{reason}]"


class FlatDepthWarning(UserWarning):
    """Depth came from the plane fallback: translation parallax is flat. The message names no CLI flag
    (the API and the app have none); the command line adds its own (``flowctrl.commands._common``)."""


def plane_depth(height: int, width: int, distance: float = 1.0, warn: bool = True,
                reason: Optional[str] = None) -> torch.Tensor:
    """``(1, 1, H, W)`` constant z-depth ``distance`` (units of the camera translation).

    ``reason``: why no depth model was used (appended to the one-line warning)."""
    if not distance > 0:
        raise ValueError("plane distance must be > 0")
    if warn:
        message = PLANE_WARNING.format(distance=distance) + (REASON.format(reason=reason) if reason else "")
        warnings.warn(message, FlatDepthWarning, stacklevel=2)
    return torch.full((1, 1, height, width), float(distance), dtype=torch.float32)
