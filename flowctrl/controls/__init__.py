"""Motion controls: file formats, validation and the :class:`Controls` bundle.

Every object holds coordinates in pixels of the input image (``Controls.image_size``); the
pipeline calls :meth:`Controls.resized` for its working size. Formats: docs/controls.md.
"""
from __future__ import annotations

from flowctrl.controls.arrows import EASINGS, Arrow, ease, load_arrows, parse_arrows
from flowctrl.controls.camera import (
    CameraTrajectory, parse_camera_json, parse_motionctrl, parse_re10k, validate_poses,
)
from flowctrl.controls.camera_loader import load_camera
from flowctrl.controls.core import Controls
from flowctrl.controls.drags import Drag, load_drags, parse_drag_txt, parse_drags
from flowctrl.controls.masks import load_mask, resize_mask
from flowctrl.controls.pose import KEYPOINT_NAMES, SKELETONS, PoseSequence, load_pose, parse_pose
from flowctrl.controls.presets import camera_preset, list_camera_presets

__all__ = [
    "Arrow", "CameraTrajectory", "Controls", "Drag", "EASINGS", "KEYPOINT_NAMES", "PoseSequence", "SKELETONS",
    "camera_preset", "ease", "list_camera_presets", "load_arrows", "load_camera", "load_drags", "load_mask",
    "load_pose", "load_reference_video", "parse_arrows", "parse_camera_json", "parse_drag_txt", "parse_drags",
    "parse_motionctrl", "parse_pose", "parse_re10k", "resize_mask", "validate_poses",
]


def load_reference_video(*args, **kwargs):  # PyAV is imported only when a video is read
    """See :func:`flowctrl.controls.video.load_reference_video`."""
    from flowctrl.controls.video import load_reference_video as _load

    return _load(*args, **kwargs)
