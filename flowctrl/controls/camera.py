"""Camera trajectories: flowctrl JSON, RealEstate10K ``.txt``, MotionCtrl JSON, and presets.

Conventions: OpenCV axes (x right, y down, z forward); ``w2c`` maps world to camera; every
trajectory is made relative to its frame 0 on load (``w2c[0] == I``: the world is the frame-0
camera). Normalized intrinsics follow RealEstate10K: ``fx_n = fx / W``, ``fy_n = fy / H``,
``cx_n = (cx + 0.5) / W``, ``cy_n = (cy + 0.5) / H`` with pixel ``(i, j)`` centred at ``x=j, y=i``
(so ``cx_n = 0.5`` is the image centre ``(W - 1) / 2``).

flowctrl camera JSON::

    {"name": "my-move",                                      # optional
     "intrinsics": {"units": "normalized", "fx": 0.87, "fy": 1.54, "cx": 0.5, "cy": 0.5},
                   # or {"units": "px", "fx": 500, "fy": 500, "cx": 255.5, "cy": 255.5,
                   #     "width": 512, "height": 512}; omit for a 60-degree horizontal FOV
     "frames": [{"w2c": [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]},
                {"R": [[1,0,0],[0,1,0],[0,0,1]], "t": [0, 0, -0.1]}, ...],
     "timestamps": [0, 1, 2],                                # optional, increasing (any unit)
     "focal_scale": [1.0, 1.1, 1.2]}                         # optional per-frame zoom factor

RealEstate10K ``.txt``: line 1 the video URL, then one line per frame:
``timestamp_us fx fy cx cy k1 k2 r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33 t3`` (normalized
intrinsics, world-to-camera 3x4). MotionCtrl JSON: a list of per-frame 12-float row-major 3x4 RT.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import torch

from flowctrl.flow.camera import DEFAULT_FOV_DEG

from flowctrl.controls._common import (
    err, expect_list, expect_object, number, number_list, reject_unknown,
    require, type_name,
)

__all__ = [
    "CameraTrajectory", "DEFAULT_FOV_DEG", "parse_camera_json", "parse_motionctrl",
    "parse_re10k", "validate_poses",
]

ORTHO_TOL = 1e-3  # max |R^T R - I| accepted before re-orthonormalizing (4-5 printed decimals pass)


def default_K_normalized(aspect: Optional[float] = None) -> torch.Tensor:
    """Normalized K of a 60-degree horizontal FOV camera with square pixels.

    ``fy_n`` depends on the aspect ratio ``W / H``; ``None`` stores NaN there, filled in by
    :meth:`CameraTrajectory.intrinsics` once the size is known."""
    fx = 0.5 / math.tan(math.radians(DEFAULT_FOV_DEG) / 2)
    fy = fx * aspect if aspect is not None else float("nan")
    return torch.tensor([[fx, 0.0, 0.5], [0.0, fy, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _rotation_slerp(R: np.ndarray, times: np.ndarray, query: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation, Slerp

    return Slerp(times, Rotation.from_matrix(R))(query).as_matrix()


def _project_so3(R: torch.Tensor) -> torch.Tensor:
    """Nearest rotation (polar decomposition by SVD) of ``(..., 3, 3)`` with det +1."""
    U, _, Vh = torch.linalg.svd(R)
    return U @ Vh


def validate_poses(w2c: Any, source: Any = "camera", field_name: str = "frames") -> torch.Tensor:
    """Check world-to-camera matrices ``(T0, 4, 4)`` (or ``(T0, 3, 4)``) and return them as float64
    ``(T0, 4, 4)`` relative to frame 0, rotations re-orthonormalized.

    Rejects: fewer than 2 poses, non-finite values, a last row other than ``[0, 0, 0, 1]``,
    rotation blocks that are not orthonormal, and reflections (det R = -1).
    """
    w2c = torch.as_tensor(np.asarray(w2c, dtype=np.float64))
    if w2c.dim() != 3 or w2c.shape[-1] != 4 or w2c.shape[-2] not in (3, 4):
        raise err(source, field_name, f"has shape {tuple(w2c.shape)}", "give one 4x4 (or 3x4) matrix per frame")
    if w2c.shape[0] < 2:
        raise err(source, field_name, f"has {w2c.shape[0]} pose(s), a trajectory needs at least 2",
                  "give one pose per frame, at least 2")
    for i in range(w2c.shape[0]):
        if not torch.isfinite(w2c[i]).all():
            raise err(source, f"{field_name}[{i}]", "contains a non-finite value (NaN or infinity)", "give finite numbers")
    if w2c.shape[-2] == 3:
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64).expand(w2c.shape[0], 1, 4)
        w2c = torch.cat([w2c, bottom], dim=1)
    eye = torch.eye(3, dtype=torch.float64)
    for i in range(w2c.shape[0]):
        where = f"{field_name}[{i}]"
        if not torch.allclose(w2c[i, 3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-6):
            raise err(source, where, f"last row is {w2c[i, 3].tolist()}", "a 4x4 pose ends with [0, 0, 0, 1]")
        R = w2c[i, :3, :3]
        det = float(torch.linalg.det(R))
        deviation = float((R.T @ R - eye).abs().max())
        if deviation < 0.5 and det < 0:
            raise err(source, where, f"rotation has det {det:.3f} (a reflection, det R = -1)",
                      "give a proper rotation (det +1); flip the sign of one axis consistently")
        if deviation > ORTHO_TOL:
            raise err(source, where, f"rotation is not orthonormal (|R^T R - I| = {deviation:.2g})",
                      f"give an orthonormal 3x3 rotation (tolerance {ORTHO_TOL:g})")
    w2c = w2c.clone()
    w2c[:, :3, :3] = _project_so3(w2c[:, :3, :3])
    rel = w2c @ torch.linalg.inv(w2c[0])[None]
    rel[:, 3] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    rel[0] = torch.eye(4, dtype=torch.float64)
    rel[:, :3, :3] = _project_so3(rel[:, :3, :3])
    return rel


@dataclass
class CameraTrajectory:
    """A camera path relative to its first frame.

    w2c: ``(T0, 4, 4)`` float64 world-to-camera, ``w2c[0] == I`` (world = frame-0 camera; scene units).
    K_normalized: ``(3, 3)`` or per-frame ``(T0, 3, 3)`` normalized intrinsics (module docstring), or
        None = 60-degree horizontal FOV, square pixels.
    timestamps: ``(T0,)`` increasing times of the poses (any unit), or None = evenly spaced.
    name: a label (preset name or file name).
    focal_scale: ``(T0,)`` per-frame factor on the focal lengths (zoom presets), or None = constant.
    scene_depth: the scene depth the path was made for (an orbit's look-at depth), or None; where no
        depth map is known, stage 1 puts its fallback plane there so the orbit centre stays put.
    scale_free: the translation is in arbitrary units (a camera file without ``scene_depth``:
        RealEstate10K, MotionCtrl, flowctrl JSON); stage 1 then sizes the scene from the path
        (:mod:`flowctrl.depth.scale`). Presets are in units of the scene's median depth (False).
    """

    w2c: torch.Tensor
    K_normalized: Optional[torch.Tensor] = None
    timestamps: Optional[torch.Tensor] = None
    name: str = "camera"
    focal_scale: Optional[torch.Tensor] = field(default=None)
    scene_depth: Optional[float] = None
    scale_free: bool = False

    def __post_init__(self) -> None:
        self.w2c = torch.as_tensor(self.w2c, dtype=torch.float64)
        if self.w2c.dim() != 3 or self.w2c.shape[1:] != (4, 4) or self.w2c.shape[0] < 2:
            raise ValueError(f"w2c must be (T0>=2, 4, 4), got {tuple(self.w2c.shape)}")
        n = self.w2c.shape[0]
        if self.K_normalized is not None:
            self.K_normalized = torch.as_tensor(self.K_normalized, dtype=torch.float64)
            if self.K_normalized.shape not in ((3, 3), (n, 3, 3)):
                raise ValueError(f"K_normalized must be (3, 3) or ({n}, 3, 3), got {tuple(self.K_normalized.shape)}")
        if self.timestamps is not None:
            self.timestamps = torch.as_tensor(self.timestamps, dtype=torch.float64).reshape(-1)
            if self.timestamps.shape != (n,) or not bool((self.timestamps.diff() > 0).all()):
                raise ValueError("timestamps must be (T0,) strictly increasing")
        if self.focal_scale is not None:
            self.focal_scale = torch.as_tensor(self.focal_scale, dtype=torch.float64).reshape(-1)
            if self.focal_scale.shape != (n,) or not bool((self.focal_scale > 0).all()):
                raise ValueError("focal_scale must be (T0,) positive")

    def __len__(self) -> int:
        return int(self.w2c.shape[0])

    @property
    def num_frames(self) -> int:
        return len(self)

    @property
    def has_varying_intrinsics(self) -> bool:
        """True when the focal length / principal point changes over the frames (zoom)."""
        if self.focal_scale is not None and not torch.allclose(self.focal_scale, self.focal_scale[:1].expand_as(self.focal_scale)):
            return True
        K = self.K_normalized
        return K is not None and K.dim() == 3 and not torch.allclose(K, K[:1].expand_as(K))

    @property
    def c2w(self) -> torch.Tensor:
        """``(T0, 4, 4)`` camera-to-world (frame-0 camera) poses."""
        return torch.linalg.inv(self.w2c)

    @property
    def centers(self) -> torch.Tensor:
        """``(T0, 3)`` camera centres in frame-0 camera coordinates (scene units)."""
        R, t = self.w2c[:, :3, :3], self.w2c[:, :3, 3]
        return -(R.transpose(1, 2) @ t[..., None])[..., 0]

    def _times(self) -> np.ndarray:
        if self.timestamps is not None:
            return self.timestamps.numpy()
        return np.arange(len(self), dtype=np.float64)

    def resample(self, num_frames: int) -> "CameraTrajectory":
        """The trajectory at ``num_frames`` instants evenly spaced between the first and last
        timestamp: rotations by slerp, camera centres (and intrinsics) linearly, between the two
        neighbouring poses. Frame 0 stays the identity and the last pose is kept exactly."""
        if num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {num_frames}")
        times = self._times()
        query = np.linspace(times[0], times[-1], num_frames)
        query[-1] = times[-1]
        c2w = self.c2w.numpy()
        R_c2w = _rotation_slerp(c2w[:, :3, :3], times, query)
        centers = np.stack([np.interp(query, times, c2w[:, k, 3]) for k in range(3)], axis=-1)
        out = np.tile(np.eye(4), (num_frames, 1, 1))
        out[:, :3, :3] = R_c2w.transpose(0, 2, 1)
        out[:, :3, 3] = -(out[:, :3, :3] @ centers[..., None])[..., 0]
        out[0] = np.eye(4)
        K = self.K_normalized
        if K is not None and K.dim() == 3:
            flat = K.reshape(len(self), 9).numpy()
            K = torch.from_numpy(np.stack([np.interp(query, times, flat[:, k]) for k in range(9)], -1).reshape(-1, 3, 3))
        scale = self.focal_scale
        if scale is not None:
            scale = torch.from_numpy(np.interp(query, times, scale.numpy()))
        return CameraTrajectory(w2c=torch.from_numpy(out), K_normalized=K, timestamps=None, name=self.name,
                                focal_scale=scale, scene_depth=self.scene_depth, scale_free=self.scale_free)

    def intrinsics_all(self, height: int, width: int) -> torch.Tensor:
        """Per-frame pixel intrinsics ``(T0, 3, 3)`` float64 at an ``height x width`` image."""
        K = self.K_normalized if self.K_normalized is not None else default_K_normalized(width / height)
        if K.dim() == 2:
            K = K[None].expand(len(self), 3, 3)
        K = K.clone()
        if torch.isnan(K[:, 1, 1]).any():  # default intrinsics stored without an aspect ratio
            K[:, 1, 1] = K[:, 0, 0] * width / height
        pix = torch.zeros(len(self), 3, 3, dtype=torch.float64)
        pix[:, 0, 0] = K[:, 0, 0] * width
        pix[:, 1, 1] = K[:, 1, 1] * height
        pix[:, 0, 1] = K[:, 0, 1] * width
        pix[:, 0, 2] = K[:, 0, 2] * width - 0.5
        pix[:, 1, 2] = K[:, 1, 2] * height - 0.5
        pix[:, 2, 2] = 1.0
        if self.focal_scale is not None:
            pix[:, 0, 0] *= self.focal_scale
            pix[:, 1, 1] *= self.focal_scale
            pix[:, 0, 1] *= self.focal_scale
        return pix

    def intrinsics(self, height: int, width: int) -> torch.Tensor:
        """Pixel intrinsics ``(3, 3)`` float64 of frame 0 at an ``height x width`` image (default
        60-degree horizontal FOV when unknown). Zooms: see :meth:`intrinsics_all`."""
        return self.intrinsics_all(height, width)[0]

    def to_json(self, decimals: int = 9) -> dict:
        """The flowctrl camera JSON object that :func:`parse_camera_json` reads back."""
        def r(x: torch.Tensor) -> Any:
            return np.round(x.numpy(), decimals).tolist()

        data: dict = {"name": self.name}
        K = self.K_normalized
        if K is not None and K.dim() == 2:
            data["intrinsics"] = {"units": "normalized", "fx": float(K[0, 0]), "fy": float(K[1, 1]),
                                  "cx": float(K[0, 2]), "cy": float(K[1, 2])}
        elif K is not None:
            data["intrinsics"] = {"units": "normalized", "per_frame": [
                {"fx": float(k[0, 0]), "fy": float(k[1, 1]), "cx": float(k[0, 2]), "cy": float(k[1, 2])} for k in K]}
        data["frames"] = [{"R": r(m[:3, :3]), "t": r(m[:3, 3])} for m in self.w2c]
        if self.timestamps is not None:
            data["timestamps"] = r(self.timestamps)
        if self.focal_scale is not None:
            data["focal_scale"] = r(self.focal_scale)
        return data


# Sane ranges (named in the messages): focal lengths in image widths / heights, zoom factors relative
# to the first frame, timestamps in any unit (microseconds for RealEstate10K).
FOCAL_RANGE = (1e-3, 1e3)
FOCAL_SCALE_RANGE = (1e-3, 1e3)
MAX_TIMESTAMP = 1e15

# ---------------------------------------------------------------------------------------- parsers

def _intrinsics_entry(obj: Any, source: Any, where: str, units: str, size: Optional[tuple]) -> List[float]:
    obj = expect_object(obj, source, where, '{"fx": 0.87, "fy": 1.54, "cx": 0.5, "cy": 0.5}')
    values = []
    for key in ("fx", "fy", "cx", "cy"):
        v = number(require(obj, key, source, where, f'"{key}": 0.5'), source, f"{where}.{key}")
        if key in ("fx", "fy") and v <= 0:
            raise err(source, f"{where}.{key}", f"is {v:g}, must be > 0", "give a positive focal length")
        values.append(v)
    fx, fy, cx, cy = values
    if units == "px":
        height, width = size  # type: ignore[misc]
        fx, fy, cx, cy = fx / width, fy / height, (cx + 0.5) / width, (cy + 0.5) / height
    for key, v in (("fx", fx), ("fy", fy)):
        if not FOCAL_RANGE[0] <= v <= FOCAL_RANGE[1]:
            raise err(source, f"{where}.{key}", f"is {v:g} of the image size, outside [{FOCAL_RANGE[0]:g}, "
                      f"{FOCAL_RANGE[1]:g}]", "give a focal length between 0.001 and 1000 image widths/heights "
                      "(typical: 0.5 to 3)")
    if not (-1.0 <= cx <= 2.0 and -1.0 <= cy <= 2.0):
        raise err(source, where, f"principal point ({cx:g}, {cy:g}) (normalized) is far outside the image",
                  "cx, cy are normally near the image centre (0.5 normalized, W/2 pixels)")
    return [fx, fy, cx, cy]


def _parse_intrinsics(obj: Any, source: Any, num_frames: int) -> torch.Tensor:
    where = "intrinsics"
    obj = expect_object(obj, source, where, '{"units": "normalized", "fx": 0.87, "fy": 1.54, "cx": 0.5, "cy": 0.5}')
    reject_unknown(obj, ("units", "fx", "fy", "cx", "cy", "width", "height", "per_frame"), source, where)
    units = obj.get("units", "normalized")
    if units not in ("px", "normalized"):
        raise err(source, f"{where}.units", f"is {units!r}", 'use "px" or "normalized"')
    size = None
    if units == "px":
        width = require(obj, "width", source, where, '"width": 512 (the image size the pixel values refer to)')
        height = require(obj, "height", source, where, '"height": 512 (the image size the pixel values refer to)')
        size = (number(height, source, f"{where}.height", low=1, high=65536, integer=True),
                number(width, source, f"{where}.width", low=1, high=65536, integer=True))

    def K_of(v: List[float]) -> List[List[float]]:
        return [[v[0], 0.0, v[2]], [0.0, v[1], v[3]], [0.0, 0.0, 1.0]]

    if "per_frame" in obj:
        items = expect_list(obj["per_frame"], source, f"{where}.per_frame", '[{"fx": ..}, ...]')
        if len(items) != num_frames:
            raise err(source, f"{where}.per_frame", f"has {len(items)} entries for {num_frames} frames",
                      "give one intrinsics entry per frame")
        return torch.tensor([K_of(_intrinsics_entry(e, source, f"{where}.per_frame[{i}]", units, size))
                             for i, e in enumerate(items)], dtype=torch.float64)
    return torch.tensor(K_of(_intrinsics_entry(obj, source, where, units, size)), dtype=torch.float64)


def _increasing(values: Any, source: Any, where: str, n: int) -> torch.Tensor:
    items = number_list(values, source, where, n, f"{n} increasing numbers (one per frame)",
                        low=-MAX_TIMESTAMP, high=MAX_TIMESTAMP)
    if any(b <= a for a, b in zip(items, items[1:])):
        raise err(source, where, "is not strictly increasing", "give increasing times, one per frame")
    return torch.tensor(items, dtype=torch.float64)


def parse_camera_json(data: Any, source: Any = "camera") -> CameraTrajectory:
    """Validate a parsed flowctrl camera JSON object (module docstring) into a trajectory."""
    obj = expect_object(data, source, "(top level)", '{"frames": [{"w2c": [[...4x4...]]}, ...]}')
    reject_unknown(obj, ("name", "intrinsics", "frames", "timestamps", "focal_scale", "preset", "scene_depth"), source, "")
    frames = expect_list(require(obj, "frames", source, "", '"frames": [{"w2c": 4x4}, ...]'), source, "frames",
                         '[{"w2c": 4x4} or {"R": 3x3, "t": [x, y, z]}, ...]')
    mats = []
    for i, frame in enumerate(frames):
        where = f"frames[{i}]"
        frame = expect_object(frame, source, where, '{"w2c": 4x4} or {"R": 3x3, "t": [x, y, z]}')
        reject_unknown(frame, ("w2c", "R", "t"), source, where)
        if "w2c" in frame:
            rows = expect_list(frame["w2c"], source, f"{where}.w2c", "4 rows of 4 numbers")
            if len(rows) not in (3, 4):
                raise err(source, f"{where}.w2c", f"has {len(rows)} rows", "give a 4x4 (or 3x4) matrix")
            m = [number_list(row, source, f"{where}.w2c[{r}]", 4, "[a, b, c, d]") for r, row in enumerate(rows)]
            if len(m) == 3:
                m.append([0.0, 0.0, 0.0, 1.0])
        elif "R" in frame or "t" in frame:
            R_rows = expect_list(require(frame, "R", source, where, '"R": 3x3'), source, f"{where}.R", "3 rows of 3 numbers")
            if len(R_rows) != 3:
                raise err(source, f"{where}.R", f"has {len(R_rows)} rows", "give a 3x3 rotation")
            R = [number_list(row, source, f"{where}.R[{r}]", 3, "[a, b, c]") for r, row in enumerate(R_rows)]
            t = number_list(require(frame, "t", source, where, '"t": [x, y, z]'), source, f"{where}.t", 3, "[x, y, z]")
            m = [R[0] + [t[0]], R[1] + [t[1]], R[2] + [t[2]], [0.0, 0.0, 0.0, 1.0]]
        else:
            raise err(source, where, "has neither w2c nor R/t", 'give {"w2c": 4x4} or {"R": 3x3, "t": [x, y, z]}')
        mats.append(m)
    w2c = validate_poses(mats, source, "frames")
    K = _parse_intrinsics(obj["intrinsics"], source, len(mats)) if obj.get("intrinsics") is not None else None
    timestamps = _increasing(obj["timestamps"], source, "timestamps", len(mats)) if obj.get("timestamps") is not None else None
    scale = None
    if obj.get("focal_scale") is not None:
        values = number_list(obj["focal_scale"], source, "focal_scale", len(mats), "one positive factor per frame")
        if any(v <= 0 for v in values):
            raise err(source, "focal_scale", "has a value <= 0", "zoom factors must be > 0")
        if any(not FOCAL_SCALE_RANGE[0] <= v / values[0] <= FOCAL_SCALE_RANGE[1] for v in values):
            raise err(source, "focal_scale", f"changes the zoom by more than {FOCAL_SCALE_RANGE[1]:g}x",
                      f"give factors within [{FOCAL_SCALE_RANGE[0]:g}, {FOCAL_SCALE_RANGE[1]:g}] of the first one")
        scale = torch.tensor(values, dtype=torch.float64) / values[0]
    name = obj.get("name", Path(str(source)).stem)
    if not isinstance(name, str):
        raise err(source, "name", f"is {type_name(name)}", "give a string")
    scene_depth = obj.get("scene_depth")
    if scene_depth is None and isinstance(obj.get("preset"), dict) and isinstance(obj["preset"].get("params"), dict):
        scene_depth = obj["preset"]["params"].get("depth")  # files written from a preset keep its look-at depth
    if scene_depth is not None:
        scene_depth = number(scene_depth, source, "scene_depth", low=1e-6, high=1e6)
        if not scene_depth > 0:
            raise err(source, "scene_depth", f"is {scene_depth}", "give a positive distance in scene units")
    return CameraTrajectory(w2c=w2c, K_normalized=K, timestamps=timestamps, name=name, focal_scale=scale,
                            scene_depth=scene_depth, scale_free=scene_depth is None and "preset" not in obj)


def parse_motionctrl(data: Any, source: Any = "camera") -> CameraTrajectory:
    """MotionCtrl camera poses: a list of per-frame 12-float row-major 3x4 world-to-camera RT."""
    frames = expect_list(data, source, "(top level)", "[[12 numbers: 3x4 RT row-major], ...]")
    mats = []
    for i, row in enumerate(frames):
        values = number_list(row, source, f"[{i}]", 12, "12 numbers (3x4 RT, row-major)")
        mats.append(np.array(values).reshape(3, 4))
    if not mats:
        raise err(source, "(top level)", "is an empty list", "give at least 2 poses")
    return CameraTrajectory(w2c=validate_poses(np.stack(mats), source, "poses"), K_normalized=None,
                            name=Path(str(source)).stem, scale_free=True)


def parse_re10k(text: str, source: Any = "camera.txt") -> CameraTrajectory:
    """RealEstate10K pose text (module docstring). Intrinsics are normalized already; timestamps
    (microseconds) are kept so :meth:`CameraTrajectory.resample` follows the real frame timing."""
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
    lines = [(n, line) for n, line in lines if line]
    if lines and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", lines[0][1]):
        lines = lines[1:]
    rows = []
    for lineno, line in lines:
        tokens = line.split()
        where = f"line {lineno}"
        if len(tokens) != 19:
            raise err(source, where, f"has {len(tokens)} numbers, expected 19",
                      "RealEstate10K lines are: timestamp fx fy cx cy k1 k2 + 12 numbers of a 3x4 w2c")
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            raise err(source, where, "contains a token that is not a number", "check the file is RealEstate10K pose text") from None
        for k, v in enumerate(values):
            if k == 0:  # timestamps (microseconds): large, but finite
                number(v, source, f"{where} timestamp", low=-MAX_TIMESTAMP, high=MAX_TIMESTAMP)
            else:
                number(v, source, f"{where} value {k + 1}")
        rows.append(values)
    if len(rows) < 2:
        raise err(source, None, f"has {len(rows)} pose line(s), a trajectory needs at least 2", "give one line per frame")
    arr = np.array(rows)
    timestamps = arr[:, 0]
    if not (np.diff(timestamps) > 0).all():
        raise err(source, "timestamps", "are not strictly increasing", "sort the lines by timestamp")
    for i, (fx, fy) in enumerate(arr[:, 1:3]):
        if fx <= 0 or fy <= 0:
            raise err(source, f"line {lines[i][0]}", f"focal length ({fx:g}, {fy:g}) is not positive", "check fx, fy")
        if not (FOCAL_RANGE[0] <= fx <= FOCAL_RANGE[1] and FOCAL_RANGE[0] <= fy <= FOCAL_RANGE[1]):
            raise err(source, f"line {lines[i][0]}", f"focal length ({fx:g}, {fy:g}) is outside "
                      f"[{FOCAL_RANGE[0]:g}, {FOCAL_RANGE[1]:g}] (normalized)", "RealEstate10K focal lengths are "
                      "fractions of the image size (typical: 0.5 to 3)")
    K = np.zeros((len(arr), 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4], 1.0
    K_t = torch.from_numpy(K)
    if torch.allclose(K_t, K_t[:1].expand_as(K_t)):
        K_t = K_t[0].clone()
    w2c = validate_poses(arr[:, 7:].reshape(-1, 3, 4), source, "poses")
    return CameraTrajectory(w2c=w2c, K_normalized=K_t, timestamps=torch.from_numpy(timestamps - timestamps[0]),
                            name=Path(str(source)).stem, scale_free=True)
