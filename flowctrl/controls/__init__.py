"""Motion controls: file formats, validation and the :class:`Controls` bundle.

Every object holds coordinates in pixels of the input image (``Controls.image_size``); the
pipeline calls :meth:`Controls.resized` for its working size. Formats: docs/controls.md.

Names are imported on first use, so ``flowctrl.controls.registry`` (the local control kinds the CLI
lists as flags) loads without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "flowctrl.controls.arrows": ("EASINGS", "Arrow", "ease", "load_arrows", "parse_arrows"),
    "flowctrl.controls.camera": ("CameraTrajectory", "parse_camera_json", "parse_motionctrl", "parse_re10k",
                                 "validate_poses"),
    "flowctrl.controls.camera_loader": ("load_camera",),
    "flowctrl.controls.core": ("Controls",),
    "flowctrl.controls.drags": ("Drag", "load_drags", "parse_drag_txt", "parse_drags"),
    "flowctrl.controls.local": ("LocalControl",),
    "flowctrl.controls.masks": ("load_mask", "resize_mask"),
    "flowctrl.controls.pose": ("KEYPOINT_NAMES", "SKELETONS", "PoseSequence", "load_pose", "parse_pose"),
    "flowctrl.controls.presets": ("camera_preset", "list_camera_presets"),
    "flowctrl.controls.registry": ("local_control_entries", "register"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted([*_WHERE, "load_reference_video"])


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'flowctrl.controls' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted([*globals(), *_WHERE])


def load_reference_video(*args, **kwargs):  # PyAV is imported only when a video is read
    """See :func:`flowctrl.controls.video.load_reference_video`."""
    from flowctrl.controls.video import load_reference_video as _load

    return _load(*args, **kwargs)
