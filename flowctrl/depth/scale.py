"""A plausible scene scale for camera trajectories of unknown scale (RealEstate10K, MotionCtrl, files).

SfM trajectories are in arbitrary units, and estimated depth (median 1) or the plane (distance 1) is
in units of its own: a fixed ratio between the two flies real clips through the scene. When a camera
file carries no scene depth, the depth map is multiplied by ``s`` so that

1. **the motion has the size the file implies**: the scene's median depth is ``PATH_RATIO`` times the
   path length ``L`` (the largest distance of a camera centre from the frame-0 camera). The ratio
   2.0 is the median, over the five RealEstate10K clips in ``../shared/data/re10k``, of the plane
   distance that best explains each clip's measured flow divided by its ``L`` (1.43, 1.66, 1.95,
   2.64, 2.93; ``benchmarks/bench_camera_default.py``); and
2. **the camera never passes through the scene**: the near depth (``NEAR_QUANTILE`` = 5 % quantile)
   is at least ``NEAR_MARGIN`` = 1.5 times the farthest the camera travels forward (the largest
   ``z`` of a camera centre in frame-0 coordinates).

``s = max(PATH_RATIO · L / median(depth), NEAR_MARGIN · forward / q05(depth))``; a path without
translation keeps ``s = 1``. For the plane the rule gives its distance directly
(:func:`plane_distance_for`), so its one-line warning names the distance used.
"""
from __future__ import annotations

from typing import Tuple

import torch

PATH_RATIO = 2.0
NEAR_MARGIN = 1.5
NEAR_QUANTILE = 0.05
MIN_TRAVEL = 1e-9


def path_extent(w2c: torch.Tensor) -> Tuple[float, float]:
    """``(L, forward)`` of world-to-camera poses ``(T, 4, 4)`` relative to frame 0 (scene units):
    the largest camera-centre distance from frame 0, and the largest forward (``+z``) travel."""
    w2c = w2c.to(torch.float64).reshape(-1, 4, 4)
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]
    centers = -(R.transpose(1, 2) @ t[..., None])[..., 0]
    return float(centers.norm(dim=1).max()), max(0.0, float(centers[:, 2].max()))


def plane_distance_for(w2c: torch.Tensor) -> float:
    """The plane distance the rule gives for a trajectory (1 for a path without translation)."""
    length, forward = path_extent(w2c)
    if length <= MIN_TRAVEL:
        return 1.0
    return max(PATH_RATIO * length, NEAR_MARGIN * forward)


def scene_scale(depth: torch.Tensor, w2c: torch.Tensor) -> float:
    """Factor ``s`` on z-depth ``(1, 1, H, W)`` that gives ``w2c``'s path a plausible size (module doc)."""
    length, forward = path_extent(w2c)
    if length <= MIN_TRAVEL:
        return 1.0
    flat = depth.detach().to(torch.float64).flatten()
    median = float(flat.median())
    near = float(torch.quantile(flat[:: max(1, flat.numel() // 100_000)], NEAR_QUANTILE))
    return max(PATH_RATIO * length / median, NEAR_MARGIN * forward / near)
