"""Camera presets with parameters, and their "difficult" (irregularly sampled) variants.

A preset spec is ``NAME`` or ``NAME:key=value,key=value`` (no spaces), e.g. ``orbit``,
``orbit:degrees=45,depth=3``, ``pan-left:degrees=20,difficult=1,seed=3``. Every preset takes

- ``frames`` (int >= 2, default 25): how many poses are stored (resampled to the clip length later);
- ``difficult`` (0/1, default 0): sample the same path irregularly in time (random, seeded speed
  changes and near-pauses), the "difficult trajectory" setting of AnimateAnything's Table 1;
  ``NAME-difficult`` is the same as ``NAME:difficult=1``;
- ``seed`` (int, default 0): the seed of the irregular sampling.

Motion conventions (OpenCV axes x right, y down, z forward; "points" = image content):
pan-left yaws the camera left so points move right; tilt-up looks up so points move down;
roll-cw rolls the camera clockwise so the content turns counter-clockwise; zoom changes only the
focal length (``focal_scale``); dolly moves along the optical axis, truck along x, pedestal along
y (up = -y); orbit circles the look-at point ``(0, 0, depth)`` of the frame-0 camera, keeping it
at the image centre. Distances are in scene units (the units of depth maps).

``configs/camera/*.json`` are written by :func:`write_camera_preset_files` from this module, so
files and code agree (a test regenerates and compares them).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from flowctrl.controls._common import PathLike, err
from flowctrl.controls.camera import CameraTrajectory
from flowctrl.io_safety import write_text_atomic

__all__ = ["PRESETS", "camera_preset", "is_preset_spec", "list_camera_presets", "parse_preset_spec",
           "preset_from_spec", "write_camera_preset_files", "irregular_progress"]

COMMON_DEFAULTS = {"frames": 25, "difficult": 0, "seed": 0}


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


# Each motion maps progress s in [0, 1] and its parameters to (camera-to-world R, centre c, focal scale).
Motion = Callable[[float, Dict[str, float]], Tuple[np.ndarray, np.ndarray, float]]
NO_MOVE = np.zeros(3)


@dataclass(frozen=True)
class Preset:
    motion: Motion
    defaults: Dict[str, float]
    doc: str


def _yaw(sign: float) -> Motion:
    return lambda s, p: (_rot_y(sign * math.radians(p["degrees"]) * s), NO_MOVE, 1.0)


def _pitch(sign: float) -> Motion:
    return lambda s, p: (_rot_x(sign * math.radians(p["degrees"]) * s), NO_MOVE, 1.0)


def _roll(sign: float) -> Motion:
    return lambda s, p: (_rot_z(sign * math.radians(p["degrees"]) * s), NO_MOVE, 1.0)


def _move(axis: int, sign: float) -> Motion:
    def motion(s: float, p: Dict[str, float]) -> Tuple[np.ndarray, np.ndarray, float]:
        c = np.zeros(3)
        c[axis] = sign * p["distance"] * s
        return np.eye(3), c, 1.0
    return motion


def _zoom(sign: float) -> Motion:
    return lambda s, p: (np.eye(3), NO_MOVE, float(p["factor"]) ** (sign * s))


def _orbit(sign: float) -> Motion:
    # positive theta (camera-to-world yaw) moves the camera to -x; "right" orbits use -theta
    def motion(s: float, p: Dict[str, float]) -> Tuple[np.ndarray, np.ndarray, float]:
        theta = -sign * math.radians(p["degrees"]) * s
        R = _rot_y(theta)
        target = np.array([0.0, 0.0, p["depth"]])
        return R, target - R @ np.array([0.0, 0.0, p["depth"]]), 1.0
    return motion


PRESETS: Dict[str, Preset] = {
    "static": Preset(lambda s, p: (np.eye(3), NO_MOVE, 1.0), {}, "no camera motion"),
    "pan-left": Preset(_yaw(-1), {"degrees": 30.0}, "yaw left by `degrees` (points move right)"),
    "pan-right": Preset(_yaw(+1), {"degrees": 30.0}, "yaw right by `degrees` (points move left)"),
    "tilt-up": Preset(_pitch(+1), {"degrees": 20.0}, "pitch up by `degrees` (points move down)"),
    "tilt-down": Preset(_pitch(-1), {"degrees": 20.0}, "pitch down by `degrees` (points move up)"),
    "roll-cw": Preset(_roll(+1), {"degrees": 20.0}, "roll the camera clockwise by `degrees` (content turns counter-clockwise)"),
    "roll-ccw": Preset(_roll(-1), {"degrees": 20.0}, "roll the camera counter-clockwise by `degrees` (content turns clockwise)"),
    "spin": Preset(_roll(+1), {"degrees": 90.0}, "roll by signed `degrees` (positive = camera clockwise)"),
    "zoom-in": Preset(_zoom(+1), {"factor": 1.5}, "focal length grows to `factor` x (no translation)"),
    "zoom-out": Preset(_zoom(-1), {"factor": 1.5}, "focal length shrinks to 1/`factor` (no translation)"),
    "dolly-in": Preset(_move(2, +1), {"distance": 0.5}, "move forward by `distance` scene units"),
    "dolly-out": Preset(_move(2, -1), {"distance": 0.5}, "move backward by `distance` scene units"),
    "truck-left": Preset(_move(0, -1), {"distance": 0.3}, "move left by `distance` (points move right)"),
    "truck-right": Preset(_move(0, +1), {"distance": 0.3}, "move right by `distance` (points move left)"),
    "pedestal-up": Preset(_move(1, -1), {"distance": 0.3}, "move up by `distance` (points move down)"),
    "pedestal-down": Preset(_move(1, +1), {"distance": 0.3}, "move down by `distance` (points move up)"),
    "orbit": Preset(_orbit(+1), {"degrees": 30.0, "depth": 2.0},
                    "circle the point (0, 0, depth) by signed `degrees` (positive = camera moves right)"),
    "orbit-left": Preset(_orbit(-1), {"degrees": 30.0, "depth": 2.0}, "orbit with the camera moving left"),
    "orbit-right": Preset(_orbit(+1), {"degrees": 30.0, "depth": 2.0}, "orbit with the camera moving right"),
}


def list_camera_presets() -> List[str]:
    """Names of the camera presets (each also as ``NAME-difficult``)."""
    return list(PRESETS)


def irregular_progress(num: int, seed: int = 0) -> np.ndarray:
    """``(num,)`` irregular but monotone progress from 0 to 1: gamma(0.5) steps give bursts of
    speed and near-pauses; seeded so files are reproducible."""
    rng = np.random.default_rng(seed)
    steps = rng.gamma(0.5, 1.0, size=num - 1) + 1e-3
    progress = np.concatenate([[0.0], np.cumsum(steps)])
    return progress / progress[-1]


def camera_preset(name: str, **params: float) -> CameraTrajectory:
    """Build a preset trajectory (module docstring); unknown names or parameters raise
    :class:`~flowctrl.errors.ControlFileError` listing the valid ones."""
    source = f"camera preset {name!r}"
    base = name[: -len("-difficult")] if name.endswith("-difficult") else name
    if base not in PRESETS:
        raise err(source, None, "unknown camera preset", f"use one of {', '.join(PRESETS)} (optionally -difficult)")
    preset = PRESETS[base]
    values: Dict[str, float] = {**COMMON_DEFAULTS, **preset.defaults}
    if name != base:
        values["difficult"] = 1
    for key, value in params.items():
        if key not in values:
            raise err(source, key, "unknown parameter", f"{base} takes {', '.join(values)}")
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise err(source, key, f"is {value!r}", "give a finite number")
        if abs(float(value)) > 1e6:
            raise err(source, key, f"is {value:g}, outside [-1e6, 1e6]", "give a value of at most 1e6 in magnitude")
        values[key] = float(value)
    frames = values["frames"]
    if frames != int(frames) or frames < 2 or frames > 10000:
        raise err(source, "frames", f"is {frames:g}", "give a whole number of poses in [2, 10000]")
    if values["difficult"] not in (0, 1):
        raise err(source, "difficult", f"is {values['difficult']:g}", "give 0 or 1")
    if values["seed"] != int(values["seed"]) or values["seed"] < 0:
        raise err(source, "seed", f"is {values['seed']:g}", "give a non-negative integer")
    for key in ("depth", "factor"):
        if key in values and values[key] <= 0:
            raise err(source, key, f"is {values[key]:g}, must be > 0", f"give a positive {key}")
    if "distance" in values and values["distance"] < 0:
        raise err(source, "distance", f"is {values['distance']:g}, must be >= 0", "the direction is in the name")
    n = int(frames)
    progress = irregular_progress(n, int(values["seed"])) if values["difficult"] else np.linspace(0.0, 1.0, n)
    w2c = np.tile(np.eye(4), (n, 1, 1))
    scale = np.ones(n)
    for i, s in enumerate(progress):
        R, c, f = preset.motion(float(s), values)
        w2c[i, :3, :3] = R.T
        w2c[i, :3, 3] = -R.T @ c
        scale[i] = f
    w2c[0] = np.eye(4)
    label = base + ("-difficult" if values["difficult"] else "")
    return CameraTrajectory(w2c=torch.from_numpy(w2c), K_normalized=None, timestamps=None, name=label,
                            focal_scale=torch.from_numpy(scale) if base.startswith("zoom") else None,
                            scene_depth=float(values["depth"]) if "depth" in values else None)


def parse_preset_spec(spec: str) -> Tuple[str, Dict[str, float]]:
    """Split ``NAME:key=value,...`` into the name and float parameters."""
    name, _, rest = spec.strip().partition(":")
    params: Dict[str, float] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise err(f"camera preset {spec!r}", part, "is not key=value", "write e.g. orbit:degrees=30,depth=2")
        text = value.strip().lower()
        if text in ("true", "yes", "on"):
            params[key.strip()] = 1.0
        elif text in ("false", "no", "off"):
            params[key.strip()] = 0.0
        else:
            try:
                params[key.strip()] = float(text)
            except ValueError:
                raise err(f"camera preset {spec!r}", key.strip(), f"{value!r} is not a number",
                          "write e.g. orbit:degrees=30,depth=2") from None
    return name.strip(), params


def is_preset_spec(spec: str) -> bool:
    """Whether ``spec`` names a preset (``orbit``, ``orbit-difficult``, ``orbit:degrees=30``)."""
    name = spec.strip().partition(":")[0].strip()
    base = name[: -len("-difficult")] if name.endswith("-difficult") else name
    return base in PRESETS


def preset_from_spec(spec: str) -> CameraTrajectory:
    """The trajectory of a preset spec string (module docstring)."""
    name, params = parse_preset_spec(spec)
    return camera_preset(name, **params)


def preset_file_names() -> List[str]:
    """The preset files shipped in configs/camera/: every preset, and its -difficult variant."""
    return [n for base in PRESETS for n in ([base] if base == "static" else [base, f"{base}-difficult"])]


def preset_json(name: str) -> str:
    """The exact text of ``configs/camera/<name>.json``."""
    traj = camera_preset(name)
    data = traj.to_json(decimals=9)
    base = name[: -len("-difficult")] if name.endswith("-difficult") else name
    data["preset"] = {"name": name, "params": {**COMMON_DEFAULTS, **PRESETS[base].defaults,
                                               **({"difficult": 1} if name != base else {})},
                      "doc": PRESETS[base].doc}
    return json.dumps(data, indent=None, separators=(",", ":")) + "\n"


def write_camera_preset_files(folder: PathLike) -> List[Path]:
    """Write ``<folder>/<name>.json`` for every shipped preset (see :func:`preset_file_names`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in preset_file_names():
        path = folder / f"{name}.json"
        write_text_atomic(path, preset_json(name))
        written.append(path)
    return written
