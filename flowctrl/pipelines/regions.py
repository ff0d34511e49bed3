"""The region each local control will move, for previews and overlays (CLI ``--preview``, the app)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Union

import torch

from flowctrl.flow.viz import moving_region
from flowctrl.pipelines.stage1 import plan_unified_flow


def local_motion_region(image: torch.Tensor, controls: Any, num_frames: int = 16,
                        segment: Union[None, str, Callable] = "auto") -> torch.Tensor:
    """``(H, W)`` bool: where the arrows, drags and pose of ``controls`` move ``image (1, 3, H, W)``.

    The local part of stage 1 alone (no camera, no depth, no reference video), with the same
    segmentation, masks and brush as the full run; all False when there is no such control.
    """
    H, W = image.shape[-2:]
    if controls is None or not (controls.arrows or controls.drags or controls.pose is not None):
        return torch.zeros(H, W, dtype=torch.bool)
    local_only = dataclasses.replace(controls, camera=None, ref_video=None, depth=None, strength=None)
    plan = plan_unified_flow(image, local_only, num_frames, segment=segment)
    return moving_region(plan.local[0])
