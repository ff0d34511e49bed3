"""The :class:`Controls` bundle: every motion control of one generation, in pixels of the image.

Control bundle JSON (every entry optional; paths relative to the bundle file)::

    {"image_size": [512, 512],          # (H, W) the coordinates refer to; else from "image"
     "image": "astronaut.png",          # optional: only used to read image_size
     "arrows": "a.json",                # or the arrows JSON object inline
     "drags": "drags.json",             # or drag.txt, or inline
     "camera": "orbit:degrees=20",      # preset spec, camera file, or a camera JSON object inline
     "ref_video": "dance.mp4",
     "pose": "pose.json",               # or inline
     "mask": "mask.png",                # motion brush
     "static_mask": "static.png",
     "depth": "depth.png",              # handed to the depth backends
     "strength": 2.0}                   # target motion strength M_s, px/frame at image_size
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, List, Optional, Union

import torch
import torch.nn.functional as F

from flowctrl.controls._common import (
    PathLike, Size, check_image_size, err, expect_object, number, read_json, reject_unknown, resolve_path,
    type_name,
)
from flowctrl.controls.arrows import Arrow, load_arrows, parse_arrows
from flowctrl.controls.camera import CameraTrajectory, parse_camera_json, parse_motionctrl
from flowctrl.controls.camera_loader import load_camera
from flowctrl.controls.drags import Drag, load_drags, parse_drags
from flowctrl.controls.masks import load_mask, resize_mask
from flowctrl.controls.pose import PoseSequence, load_pose, parse_pose
from flowctrl.errors import ControlFileError

__all__ = ["Controls", "BUNDLE_FIELDS"]

MAX_STRENGTH = 1000.0     # target motion strength M_s, px/frame: beyond this every pixel leaves the image
MAX_IMAGE_SIDE = 65536    # image_size entries (pixels)
BUNDLE_FIELDS = ("image_size", "image", "arrows", "drags", "camera", "ref_video", "pose", "mask",
                 "static_mask", "depth", "strength")


def _image_size_of(path: Path, source: Any) -> Size:
    from flowctrl.io_safety import open_image

    with open_image(path, "bundle", ControlFileError, source=source, field="image") as image:
        width, height = image.size
    return height, width


def _check_strength(value: Any, source: Any, field_name: str = "strength") -> Optional[float]:
    if value is None:
        return None
    return number(value, source, field_name, low=0.0, high=MAX_STRENGTH)


@dataclass
class Controls:
    """All controls of one generation. Coordinates are pixels of ``image_size`` (H, W).

    arrows, drags: lists of :class:`Arrow` / :class:`Drag`.
    camera: :class:`CameraTrajectory` or None.
    ref_video: a video path (read by the pipeline at the working size) or a tensor ``(T, 3, H, W)``.
    pose: :class:`PoseSequence` or None.
    motion_mask, static_mask: bool ``(1, H, W)`` or None.
    strength: target motion strength M_s (seed 004 eq. 8, px/frame at ``image_size``) or None.
    depth: a depth file path (for :func:`flowctrl.depth.resolve_depth`) or a tensor ``(1, H, W)``.
    image_size: ``(H, W)`` of the original image, or None when unknown.
    """

    arrows: List[Arrow] = field(default_factory=list)
    drags: List[Drag] = field(default_factory=list)
    camera: Optional[CameraTrajectory] = None
    ref_video: Optional[Union[str, Path, torch.Tensor]] = None
    pose: Optional[PoseSequence] = None
    motion_mask: Optional[torch.Tensor] = None
    static_mask: Optional[torch.Tensor] = None
    strength: Optional[float] = None
    depth: Optional[Union[str, Path, torch.Tensor]] = None
    image_size: Optional[Size] = None

    def __post_init__(self) -> None:
        self.arrows = list(self.arrows)
        self.drags = list(self.drags)
        self.image_size = check_image_size(self.image_size)
        for name in ("motion_mask", "static_mask"):
            mask = getattr(self, name)
            if mask is not None:
                mask = torch.as_tensor(mask)
                if mask.dim() == 2:
                    mask = mask[None]
                if mask.dim() != 3 or mask.shape[0] != 1:
                    raise ValueError(f"{name} must be (1, H, W), got {tuple(mask.shape)}")
                setattr(self, name, mask.bool())
        if self.strength is not None:
            self.strength = float(self.strength)
            if not (math.isfinite(self.strength) and self.strength >= 0):
                raise ValueError(f"strength must be a finite number >= 0, got {self.strength}")
        if isinstance(self.camera, str):
            self.camera = load_camera(self.camera)

    # ------------------------------------------------------------------ queries
    @property
    def has_local(self) -> bool:
        """Whether any local control (arrows, drags, pose, reference video) is present."""
        return bool(self.arrows or self.drags or self.pose is not None or self.ref_video is not None)

    def is_empty(self) -> bool:
        return not (self.has_local or self.camera is not None)

    # ------------------------------------------------------------------ resizing
    def resized(self, height: int, width: int) -> "Controls":
        """A copy with every pixel quantity mapped to a ``height x width`` image: arrow / drag /
        pose coordinates, drag radii, masks (area coverage >= 50 %), depth and video tensors
        (bilinear), and the strength target (times the mean scale factor). Camera trajectories
        are resolution-free and are shared."""
        new = (int(height), int(width))
        if self.image_size is None:
            has_pixels = self.arrows or self.drags or self.pose is not None or self.strength is not None
            if has_pixels:
                raise err("controls", "image_size", "is unknown, pixel coordinates cannot be rescaled",
                          "build the controls with image_size=(H, W) of the input image")
            # masks / tensors carry their own size; with none of them nothing depends on the size
            sized = [x for x in (self.motion_mask, self.static_mask, self.depth, self.ref_video)
                     if isinstance(x, torch.Tensor)]
            old = tuple(int(v) for v in sized[0].shape[-2:]) if sized else new
        else:
            old = self.image_size
        if old == new:
            return replace(self, arrows=list(self.arrows), drags=list(self.drags), image_size=new)
        scale = 0.5 * (new[0] / old[0] + new[1] / old[1])

        def resize_tensor(x: Any) -> Any:
            if not isinstance(x, torch.Tensor):
                return x
            lead = x.shape[:-2]
            y = F.interpolate(x.reshape(-1, 1, *x.shape[-2:]).float(), size=new, mode="bilinear",
                              align_corners=False, antialias=True)
            return y.reshape(*lead, *new).to(x.dtype)

        return replace(
            self,
            arrows=[a.resized(old, new) for a in self.arrows],
            drags=[d.resized(old, new) for d in self.drags],
            pose=None if self.pose is None else self.pose.resized(old, new),
            motion_mask=None if self.motion_mask is None else resize_mask(self.motion_mask, new),
            static_mask=None if self.static_mask is None else resize_mask(self.static_mask, new),
            strength=None if self.strength is None else self.strength * scale,
            depth=resize_tensor(self.depth),
            ref_video=resize_tensor(self.ref_video),
            image_size=new,
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_files(cls, arrows: Optional[PathLike] = None, drags: Optional[PathLike] = None,
                   camera: Optional[Union[PathLike, CameraTrajectory]] = None, ref_video: Optional[PathLike] = None,
                   pose: Optional[PathLike] = None, mask: Optional[PathLike] = None,
                   static_mask: Optional[PathLike] = None, depth: Optional[PathLike] = None,
                   strength: Optional[float] = None, image_size: Optional[Size] = None) -> "Controls":
        """Read every given control file (formats: docs/controls.md). ``camera`` may be a file or
        a preset spec; ``ref_video`` and ``depth`` are checked to exist and kept as paths (the
        pipeline reads them at the working size). ``image_size`` (H, W) is needed for normalized
        coordinates and to check pixel coordinates lie on the image."""
        image_size = check_image_size(image_size, "controls")
        from flowctrl.io_safety import check_regular

        ref = depth_path = None
        if ref_video is not None:
            ref = check_regular(ref_video, "reference video", ControlFileError, fix="check the --ref-video path",
                                missing="reference video does not exist")
        if depth is not None:
            depth_path = check_regular(depth, "depth", ControlFileError, fix="check the --depth path")
        return cls(
            arrows=load_arrows(arrows, image_size) if arrows is not None else [],
            drags=load_drags(drags, image_size) if drags is not None else [],
            camera=load_camera(camera) if camera is not None else None,
            ref_video=ref,
            pose=load_pose(pose, image_size) if pose is not None else None,
            motion_mask=load_mask(mask, image_size, "motion mask") if mask is not None else None,
            static_mask=load_mask(static_mask, image_size, "static mask") if static_mask is not None else None,
            strength=_check_strength(strength, "controls", "strength"),
            depth=depth_path,
            image_size=image_size,
        )

    @classmethod
    def from_bundle(cls, path: PathLike, image_size: Optional[Size] = None) -> "Controls":
        """Read a control bundle JSON (module docstring). ``image_size`` overrides the bundle's."""
        path = Path(path)
        data = expect_object(read_json(path, "bundle"), path, "(top level)", '{"arrows": "a.json", "camera": "orbit"}')
        return cls.from_dict(data, base_dir=path.parent, source=path, image_size=image_size)

    @classmethod
    def from_dict(cls, data: Any, base_dir: Optional[Path] = None, source: Any = "bundle",
                  image_size: Optional[Size] = None) -> "Controls":
        """Build from a parsed bundle object; file paths inside resolve against ``base_dir``."""
        data = expect_object(data, source, "(top level)", '{"arrows": "a.json", "camera": "orbit"}')
        reject_unknown(data, BUNDLE_FIELDS, source, "")

        def path_of(key: str) -> Path:
            from flowctrl.io_safety import check_regular

            p = resolve_path(data[key], base_dir, source, key)
            if not p.exists():
                raise err(source, key, f"{data[key]!r} does not exist (resolved to {p})",
                          "paths in a bundle are relative to the bundle file")
            return check_regular(p, key.replace("_", " "), ControlFileError, source=source, field=key)

        if image_size is None and data.get("image_size") is not None:
            raw = data["image_size"]
            if not isinstance(raw, list) or len(raw) != 2:
                raise err(source, "image_size", f"is {type_name(raw)}", "give [H, W]")
            image_size = (int(number(raw[0], source, "image_size[0]", low=1, high=MAX_IMAGE_SIDE, integer=True)),
                          int(number(raw[1], source, "image_size[1]", low=1, high=MAX_IMAGE_SIDE, integer=True)))
        if data.get("image") is not None:
            image_path = resolve_path(data["image"], base_dir, source, "image")
            if image_size is None:
                image_size = _image_size_of(image_path, source)
            elif image_path.is_file():  # named by the bundle: no output may take it, read or not
                from flowctrl.io_safety import note_input

                note_input(image_path)
        image_size = check_image_size(image_size, source)

        def inline_or_file(key: str, parse: Any, load: Any) -> Any:
            value = data.get(key)
            if value is None:
                return None
            if isinstance(value, (dict, list)):
                return parse(value, f"{source}: {key}", image_size)
            return load(path_of(key), image_size)

        arrows = data.get("arrows")
        if isinstance(arrows, (dict, list)):
            arrows = parse_arrows(arrows, f"{source}: arrows", image_size, base_dir)
        elif arrows is not None:
            arrows = load_arrows(path_of("arrows"), image_size)
        drags = inline_or_file("drags", parse_drags, load_drags)
        pose = inline_or_file("pose", parse_pose, load_pose)

        camera = data.get("camera")
        if isinstance(camera, dict):
            camera = parse_camera_json(camera, f"{source}: camera")
        elif isinstance(camera, list):
            camera = parse_motionctrl(camera, f"{source}: camera")
        elif camera is not None:
            if not isinstance(camera, str) or not camera:
                raise err(source, "camera", f"is {type_name(camera)}", "give a preset spec, a file path or a camera object")
            from flowctrl.controls.presets import is_preset_spec

            candidate = resolve_path(camera, base_dir, source, "camera")
            if is_preset_spec(camera) and not candidate.exists():
                try:
                    camera = load_camera(camera)
                except ControlFileError as error:  # name the bundle too: the spec was written there
                    raise ControlFileError(f"{source}: camera: {error}") from None
            else:
                camera = load_camera(candidate)

        masks = {}
        for key in ("mask", "static_mask"):
            if data.get(key) is not None:
                masks[key] = load_mask(path_of(key), image_size, "motion mask" if key == "mask" else "static mask")
        return cls(
            arrows=arrows or [],
            drags=drags or [],
            camera=camera,
            ref_video=path_of("ref_video") if data.get("ref_video") is not None else None,
            pose=pose,
            motion_mask=masks.get("mask"),
            static_mask=masks.get("static_mask"),
            strength=_check_strength(data.get("strength"), source),
            depth=path_of("depth") if data.get("depth") is not None else None,
            image_size=image_size,
        )
