"""The region each local control will move, for previews and overlays (CLI ``--preview``, the app)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Union

import torch
import torch.nn.functional as F_nn

from flowctrl.flow.viz import moving_region
from flowctrl.pipelines.stage1 import plan_unified_flow


def local_motion_region(image: torch.Tensor, controls: Any, num_frames: int = 16,
                        segment: Union[None, str, Callable] = "auto", max_side: int = 512) -> torch.Tensor:
    """``(H, W)`` bool: where the arrows, drags and pose of ``controls`` move ``image (1, 3, H, W)``.

    The local part of stage 1 alone (no camera, no depth, no reference video), with the same
    segmentation, masks and brush as a run at the working size; images larger than ``max_side`` are
    evaluated at that long side (the working size of a default run) and the region is scaled back.
    All False when there is no such control.
    """
    H, W = image.shape[-2:]
    if controls is None or not (controls.arrows or controls.drags or controls.pose is not None):
        return torch.zeros(H, W, dtype=torch.bool)
    local_only = dataclasses.replace(controls, camera=None, ref_video=None, depth=None, strength=None)
    work = image
    scale = min(1.0, max_side / max(H, W))
    if scale < 1.0:
        work = F_nn.interpolate(image.float(), size=(max(8, round(H * scale)), max(8, round(W * scale))), mode="area")
    if local_only.image_size is None:
        local_only = dataclasses.replace(local_only, image_size=(H, W))
    plan = plan_unified_flow(work, local_only, num_frames, segment=segment)
    region = moving_region(plan.local[0])
    if scale < 1.0:
        region = F_nn.interpolate(region[None, None].float(), size=(H, W), mode="nearest")[0, 0] > 0.5
    return region
