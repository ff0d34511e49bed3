"""Synthetic layered 3D scenes with exact ground truth (video, depth, flow, visibility, cameras).

A scene is a textured box room (or one large back plane) plus 1–3 foreground planar layers with
alpha shapes (disk/ellipse, star, rounded square, blob, rectangle) at other depths. Foreground
layers may move (translation + rotation) while the camera follows a random smooth trajectory, a
named preset, or a given world-to-camera path.

Rendering is analytic ray casting: for every pixel of every frame a ray is intersected with every
surface plane at once (vectorised over frames and pixels), the nearest hit inside the surface's
extent and alpha shape wins. The reference-form flow is exact: each reference pixel's surface point
(surface id + local plane coordinates) is moved with its surface to frame ``t`` and projected.
Visibility casts the ray through that projected position in frame ``t`` and checks that the same
surface is the nearest one there.

World frame = the camera of frame 0 (OpenCV axes: x right, y down, z forward). Pixel ``(x, y)``
has its centre at integer coordinates; ``K`` maps camera coordinates to those pixel coordinates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from flowctrl.errors import InputError
from flowctrl.flow.camera import default_intrinsics
from flowctrl.flow.grid import pixel_grid

__all__ = [
    "SceneConfig",
    "SyntheticClip",
    "render_scene",
    "random_trajectory",
    "builtin_trajectory",
    "TEXTURES",
    "SHAPES",
]

# skimage.data images that ship with scikit-image (no download). Gray ones are tinted on load.
TEXTURES: Tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
    "colorwheel", "camera", "brick", "grass", "gravel", "coins", "moon", "text", "clock", "page",
)
SHAPES: Tuple[str, ...] = ("rect", "disk", "star", "rounded", "blob")
_TEXTURE_SIZE = 256
_BUILTIN_PRESETS = (
    "static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out",
    "orbit_left", "orbit_right", "truck_left", "truck_right",
)


@dataclass(frozen=True)
class SceneConfig:
    """What to render. Lengths are in scene units (the back wall sits a few units away).

    Attributes:
        num_frames: ``T`` ≥ 2.
        height, width: frame size in pixels.
        camera: ``"random"`` (smooth random path), a preset name (``flowctrl.controls.load_camera``
            when available, else the built-in ones in :data:`_BUILTIN_PRESETS`), a
            ``CameraTrajectory``-like object with ``.w2c (T0,4,4)``, or a tensor ``(T,4,4)``.
        num_layers: inclusive ``(min, max)`` number of foreground layers.
        moving_layers: whether foreground layers may move on their own.
        textures: ``skimage.data`` names sampled for every surface.
        background: ``"room"`` (box around the camera; every ray hits) or ``"plane"``.
        fov_deg: horizontal field of view when the trajectory carries no intrinsics.
        camera_scale: multiplies the translations of preset / given trajectories.
        max_translation: largest camera offset of the random trajectory (scene units).
        max_rotation_deg: largest camera rotation of the random trajectory.
        moving_probability: chance that a foreground layer moves (when ``moving_layers``).
    """

    num_frames: int = 16
    height: int = 256
    width: int = 256
    camera: Any = "random"
    num_layers: Tuple[int, int] = (1, 3)
    moving_layers: bool = True
    textures: Tuple[str, ...] = TEXTURES[:8]
    background: str = "room"
    fov_deg: float = 60.0
    camera_scale: float = 1.0
    max_translation: float = 0.6
    max_rotation_deg: float = 8.0
    moving_probability: float = 0.7


@dataclass
class SyntheticClip:
    """One rendered clip; every tensor is float32 unless stated, ``T`` frames of ``H×W``.

    Attributes:
        video: ``(T,3,H,W)`` RGB in [0, 1].
        depth: ``(T,1,H,W)`` z-depth in scene units (> 0).
        flow: ``(T,2,H,W)`` exact reference-form flow in pixels (``flow[0] == 0``): reference pixel
            ``p`` is at ``p + flow[t](p)`` in frame ``t``.
        visibility: ``(T,1,H,W)`` 1 where the reference pixel is visible (in frame, not occluded) at ``t``.
        w2c: ``(T,4,4)`` world-to-camera, relative to frame 0 (``w2c[0] == I``).
        K: ``(3,3)`` intrinsics in pixels.
        layer_ids: ``(1,H,W)`` int64, 0 = background, ``1..n`` foreground layers (far to near).
        camera_flow: ``(T,2,H,W)`` the flow the camera alone would cause (layers frozen at frame 0).
        moving_mask: ``(1,H,W)`` bool, reference pixels on a layer that moves on its own.
        info: scene description (layer depths, shapes, textures, motions) for logging.
    """

    video: torch.Tensor
    depth: torch.Tensor
    flow: torch.Tensor
    visibility: torch.Tensor
    w2c: torch.Tensor
    K: torch.Tensor
    layer_ids: torch.Tensor
    camera_flow: torch.Tensor
    moving_mask: torch.Tensor
    info: Dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- textures
@lru_cache(maxsize=None)
def _texture(name: str) -> torch.Tensor:
    """``(3, S, S)`` float32 texture from ``skimage.data`` (gray images get a fixed tint)."""
    import skimage.data

    getter = getattr(skimage.data, name, None)
    if getter is None:
        raise InputError.at(None, "SceneConfig.textures", f"unknown skimage.data image {name!r}",
                            f"use some of {', '.join(TEXTURES)}")
    try:
        image = np.asarray(getter())
    except Exception as error:  # images that need a download raise here
        raise InputError.at(None, "SceneConfig.textures", f"skimage.data.{name} is unavailable ({error})",
                            f"use some of {', '.join(TEXTURES)}") from None
    image = image.astype(np.float32)
    if image.max() > 1.0:
        image /= 255.0
    if image.ndim == 2:
        tint = np.array([0.95, 0.85, 0.7], np.float32)[(sum(map(ord, name)) + np.arange(3)) % 3]
        image = image[..., None] * tint + 0.05
    image = image[..., :3]
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    tensor = F.interpolate(tensor, size=(_TEXTURE_SIZE, _TEXTURE_SIZE), mode="area")
    return tensor[0].clamp(0, 1).contiguous()


# ------------------------------------------------------------------------------------- rotations
def _axis_angle(vec: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vector(s) ``(...,3)`` radians → ``(...,3,3)``."""
    vec = np.asarray(vec, np.float64)
    theta = np.linalg.norm(vec, axis=-1, keepdims=True)[..., None]
    k = vec / np.maximum(theta[..., 0], 1e-12)
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    zero = np.zeros_like(kx)
    cross = np.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).reshape(vec.shape[:-1] + (3, 3))
    eye = np.broadcast_to(np.eye(3), cross.shape)
    return eye + np.sin(theta) * cross + (1 - np.cos(theta)) * (cross @ cross)


def _c2w_to_w2c(rot: np.ndarray, centers: np.ndarray) -> torch.Tensor:
    """Camera-to-world rotations ``(T,3,3)`` and centres ``(T,3)`` → w2c ``(T,4,4)`` float64."""
    T = rot.shape[0]
    w2c = np.tile(np.eye(4), (T, 1, 1))
    w2c[:, :3, :3] = np.transpose(rot, (0, 2, 1))
    w2c[:, :3, 3] = -np.einsum("tij,tj->ti", w2c[:, :3, :3], centers)
    return torch.from_numpy(w2c)


# ----------------------------------------------------------------------------------- trajectories
def random_trajectory(rng: np.random.Generator, num_frames: int, max_translation: float = 0.6,
                      max_rotation_deg: float = 8.0) -> torch.Tensor:
    """A smooth random camera path (quadratic in time for position and rotation vector).

    Returns:
        w2c ``(T,4,4)`` float64, ``w2c[0] == I``; translations ≤ ``max_translation`` scene units.
    """
    tau = np.linspace(0.0, 1.0, num_frames)[:, None]
    direction = rng.normal(size=3)
    direction[2] *= 1.3  # forward/backward motion is common in real footage
    direction /= np.linalg.norm(direction)
    bend = rng.normal(size=3) * 0.35
    centers = tau * direction + tau**2 * (bend - bend.mean() * 0)
    centers *= rng.uniform(0.4, 1.0) * max_translation / max(np.linalg.norm(centers, axis=1).max(), 1e-9)
    rot_dir = rng.normal(size=3) * np.array([1.0, 1.0, 0.3])  # little roll
    rot_bend = rng.normal(size=3) * np.array([0.3, 0.3, 0.1])
    rotvec = tau * rot_dir + tau**2 * rot_bend
    rotvec *= rng.uniform(0.3, 1.0) * math.radians(max_rotation_deg) / max(
        np.linalg.norm(rotvec, axis=1).max(), 1e-9)
    return _c2w_to_w2c(_axis_angle(rotvec), centers)


def builtin_trajectory(name: str, num_frames: int, amount: float = 0.6, angle_deg: float = 10.0) -> torch.Tensor:
    """Simple named paths used when ``flowctrl.controls`` has no preset loader.

    ``pan_*``/``tilt_*`` rotate, ``zoom_*`` move along z, ``truck_*`` move sideways, ``orbit_*``
    circle a point 3 units ahead. Returns w2c ``(T,4,4)`` float64.
    """
    tau = np.linspace(0.0, 1.0, num_frames)
    zeros = np.zeros_like(tau)
    a = math.radians(angle_deg)
    rotvec = np.stack([zeros, zeros, zeros], -1)
    centers = np.stack([zeros, zeros, zeros], -1)
    if name == "static":
        pass
    elif name in ("pan_left", "pan_right"):
        rotvec[:, 1] = (-1 if name == "pan_left" else 1) * a * tau
    elif name in ("tilt_up", "tilt_down"):
        rotvec[:, 0] = (1 if name == "tilt_up" else -1) * a * tau
    elif name in ("zoom_in", "zoom_out"):
        centers[:, 2] = (1 if name == "zoom_in" else -1) * amount * tau
    elif name in ("truck_left", "truck_right"):
        centers[:, 0] = (-1 if name == "truck_left" else 1) * amount * tau
    elif name in ("orbit_left", "orbit_right"):
        sign = -1 if name == "orbit_left" else 1
        radius, phi = 3.0, sign * a * 1.5 * tau
        centers[:, 0] = -radius * np.sin(phi)
        centers[:, 2] = radius * (1 - np.cos(phi))
        rotvec[:, 1] = phi
    else:
        raise InputError.at(None, "SceneConfig.camera", f"unknown camera preset {name!r}",
                            f"use 'random' or one of {', '.join(_BUILTIN_PRESETS)}")
    return _c2w_to_w2c(_axis_angle(rotvec), centers)


def _resolve_camera(config: SceneConfig, rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """→ (w2c ``(T,4,4)`` float64 relative to frame 0, K ``(3,3)`` float64, description)."""
    T, H, W = config.num_frames, config.height, config.width
    camera = config.camera
    K = default_intrinsics(H, W, config.fov_deg, dtype=torch.float64)
    scale = float(config.camera_scale)
    if isinstance(camera, str) and camera == "random":
        return random_trajectory(rng, T, config.max_translation, config.max_rotation_deg), K, "random"
    if isinstance(camera, str):
        traj = None
        try:
            from flowctrl.controls import load_camera  # A's presets and files
        except ImportError:
            load_camera = None
        if load_camera is not None and camera not in _BUILTIN_PRESETS:
            traj = load_camera(camera, num_frames=T)
        elif load_camera is not None:
            try:
                traj = load_camera(camera, num_frames=T)
            except Exception:  # A's preset list may not contain our fallback names
                traj = None
        if traj is None:
            w2c = builtin_trajectory(camera, T)
            desc = camera
        else:
            camera, desc = traj, camera
    if not isinstance(camera, str):
        desc = getattr(camera, "name", "given")
        if isinstance(camera, torch.Tensor):
            w2c = camera
        elif hasattr(camera, "w2c"):
            if hasattr(camera, "resample") and camera.w2c.shape[0] != T:
                camera = camera.resample(T)
            if getattr(camera, "K_normalized", None) is not None and hasattr(camera, "intrinsics"):
                K = torch.as_tensor(camera.intrinsics(H, W), dtype=torch.float64)
            w2c = camera.w2c
        else:
            raise InputError.at(None, "SceneConfig.camera", f"unsupported camera {type(camera).__name__}",
                                "give 'random', a preset name, a CameraTrajectory or a (T,4,4) tensor")
    w2c = torch.as_tensor(w2c, dtype=torch.float64)
    if w2c.ndim == 4 and w2c.shape[0] == 1:
        w2c = w2c[0]
    if w2c.shape != (T, 4, 4):
        raise InputError.at(None, "SceneConfig.camera", f"trajectory has shape {tuple(w2c.shape)}",
                            f"give ({T}, 4, 4) world-to-camera matrices (num_frames={T})")
    w2c = w2c @ torch.linalg.inv(w2c[0])
    w2c[:, :3, 3] *= scale
    return w2c, K, str(desc)


# ------------------------------------------------------------------------------------- the scene
@dataclass
class _Surface:
    """One textured plane; pose per frame as ``origin (T,3)`` and ``axes (T,3,3)`` columns e1, e2, n."""

    origin: torch.Tensor
    axes: torch.Tensor
    half: Tuple[float, float]          # half extents along e1, e2 (scene units)
    texture: torch.Tensor              # (3, S, S)
    tex_scale: Tuple[float, float]     # local coords → texture coords (reflection-tiled beyond ±1)
    shape: str = "rect"
    shape_params: Tuple[float, ...] = ()
    layer_id: int = 0
    gain: float = 1.0


def _alpha(shape: str, params: Sequence[float], u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-test of an alpha shape in normalised local coordinates ``u, v ∈ [-1, 1]``."""
    if shape == "rect":
        return torch.ones_like(u, dtype=torch.bool)
    if shape == "disk":
        return u * u + v * v <= 1.0
    if shape == "rounded":
        return u**4 + v**4 <= 1.0
    radius = torch.sqrt(u * u + v * v)
    theta = torch.atan2(v, u)
    if shape == "star":
        points, inner, phase = params
        limit = inner + (1 - inner) * 0.5 * (1 + torch.cos(points * (theta - phase)))
        return radius <= limit
    if shape == "blob":
        limit = torch.full_like(theta, params[0])
        for k in range(1, (len(params) - 1) // 2 + 1):
            limit = limit + params[2 * k - 1] * torch.cos(k * theta + params[2 * k])
        return radius <= limit
    raise ValueError(f"unknown shape {shape}")


def _build_scene(config: SceneConfig, rng: np.random.Generator, w2c: torch.Tensor, K: torch.Tensor) -> Tuple[List[_Surface], Dict[str, Any]]:
    T, H, W = config.num_frames, config.height, config.width
    textures = tuple(config.textures)
    if not textures:
        raise InputError.at(None, "SceneConfig.textures", "is empty", "name at least one skimage.data image")
    lo, hi = config.num_layers
    if not (0 <= lo <= hi):
        raise InputError.at(None, "SceneConfig.num_layers", f"{config.num_layers} is not (min, max) with 0 ≤ min ≤ max",
                            "use e.g. (1, 3)")
    c2w = torch.linalg.inv(w2c)
    centers = c2w[:, :3, 3].numpy()
    cam_forward = float(max(centers[:, 2].max(), 0.0))
    reach = float(np.abs(centers).max())
    tan_x = (W / 2) / float(K[0, 0])
    tan_y = (H / 2) / float(K[1, 1])
    tau = torch.linspace(0, 1, T, dtype=torch.float64)

    def static(origin, axes):
        return (torch.as_tensor(origin, dtype=torch.float64).expand(T, 3).clone(),
                torch.as_tensor(axes, dtype=torch.float64).expand(T, 3, 3).clone())

    def pick_texture():
        return _texture(textures[int(rng.integers(len(textures)))])

    # foreground layers first: they decide how deep the room must be
    n_layers = int(rng.integers(lo, hi + 1))
    near = cam_forward + 1.6
    depths = np.sort(rng.uniform(near, near + 3.2, size=n_layers))[::-1]  # far → near
    for i in range(1, n_layers):  # keep layers apart so they never intersect
        depths[i] = min(depths[i], depths[i - 1] - 0.45)
    depths = np.maximum(depths, near - 0.5 + 0.1 * np.arange(n_layers)[::-1])
    back_z = float((depths.max() if n_layers else near + 2.0) + rng.uniform(1.5, 3.0))

    surfaces: List[_Surface] = []
    info: Dict[str, Any] = {"layers": [], "back_z": back_z}
    # room: walls far enough to hold the whole camera path and the layers' sweep
    half_x = max(back_z * tan_x * 1.05, reach + 1.0, 2.0)
    half_y = max(back_z * tan_y * 1.05, reach + 1.0, 1.6)
    front_z = -(reach + 1.5)
    if config.background not in ("room", "plane"):
        raise InputError.at(None, "SceneConfig.background", f"{config.background!r} is not a background",
                            "use 'room' or 'plane'")
    eye = np.eye(3)
    walls = [("back", [0, 0, back_z], eye[:, [0, 1, 2]] * [1, 1, -1], (half_x, half_y), 1.0)]
    if config.background == "plane":
        walls = [("back", [0, 0, back_z], eye * [1, 1, -1], (half_x * 20, half_y * 20), 1.0)]
    else:
        depth_c, depth_h = (back_z + front_z) / 2, (back_z - front_z) / 2
        walls += [
            ("floor", [0, half_y, depth_c], np.stack([eye[0], eye[2], -eye[1]], 1), (half_x, depth_h), 0.75),
            ("ceiling", [0, -half_y, depth_c], np.stack([eye[0], eye[2], eye[1]], 1), (half_x, depth_h), 0.9),
            ("left", [-half_x, 0, depth_c], np.stack([eye[2], eye[1], eye[0]], 1), (depth_h, half_y), 0.85),
            ("right", [half_x, 0, depth_c], np.stack([eye[2], eye[1], -eye[0]], 1), (depth_h, half_y), 0.8),
            ("front", [0, 0, front_z], np.stack([eye[0], eye[1], eye[2]], 1), (half_x, half_y), 0.7),
        ]
    for _name, origin, axes, half, gain in walls:
        o, a = static(origin, axes)
        tile = float(rng.uniform(1.2, 2.2))  # texture repeats every ~tile units
        surfaces.append(_Surface(o, a, (half[0] + 1e-3, half[1] + 1e-3), pick_texture(),
                                 (tile, tile), "rect", (), 0, gain * float(rng.uniform(0.85, 1.05))))
    info["walls"] = [w[0] for w in walls]
    info["room"] = (half_x, half_y, front_z, back_z) if config.background == "room" else None

    moving_ids = []
    for index, z in enumerate(depths):
        layer_id = index + 1
        half_w = z * tan_x * rng.uniform(0.22, 0.45)
        half_h = half_w * rng.uniform(0.7, 1.3)
        cx = z * tan_x * rng.uniform(-0.55, 0.55)
        cy = z * tan_y * rng.uniform(-0.5, 0.5)
        tilt = rng.normal(size=3) * np.array([0.25, 0.25, 0.0]) + np.array([0, 0, rng.uniform(-np.pi, np.pi)])
        base = _axis_angle(tilt) @ np.diag([1.0, 1.0, -1.0])  # normal points back at the camera
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        if shape == "star":
            params = (float(rng.integers(4, 8)), float(rng.uniform(0.4, 0.65)), float(rng.uniform(0, np.pi)))
        elif shape == "blob":
            coeffs = [0.8]
            for k in range(1, 4):
                coeffs += [float(rng.uniform(0.0, 0.12 / k)), float(rng.uniform(0, 2 * np.pi))]
            params = tuple(coeffs)
        else:
            params = ()
        origin = torch.tensor([cx, cy, z], dtype=torch.float64)
        axes = torch.from_numpy(base)
        moving = bool(config.moving_layers and rng.uniform() < config.moving_probability)
        motion = {"translation": [0.0, 0.0, 0.0], "rotation_deg": 0.0}
        if moving:
            moving_ids.append(layer_id)
            shift = rng.normal(size=3) * np.array([1.0, 1.0, 0.25])
            shift *= rng.uniform(0.25, 0.7) * half_w / max(np.linalg.norm(shift), 1e-9)
            shift[2] = float(np.clip(shift[2], -0.2, 0.2))
            curve = rng.normal(size=3) * 0.15 * half_w * np.array([1, 1, 0])
            spin = float(rng.uniform(-0.5, 0.5))  # radians about the layer normal over the clip
            offsets = tau[:, None] * torch.from_numpy(shift) + (tau**2 - tau)[:, None] * torch.from_numpy(curve)
            origins = origin[None] + offsets
            normal = axes[:, 2].numpy()
            spins = torch.from_numpy(_axis_angle(normal[None] * (spin * tau.numpy())[:, None]))
            axes_t = spins @ axes[None]
            motion = {"translation": [float(s) for s in shift], "rotation_deg": math.degrees(spin)}
        else:
            origins, axes_t = static(origin, axes)
        scale = float(rng.uniform(0.8, 1.0))
        surfaces.append(_Surface(origins, axes_t, (half_w, half_h), pick_texture(), (half_w / scale, half_h / scale),
                                 shape, params, layer_id, float(rng.uniform(0.9, 1.1))))
        info["layers"].append({"id": layer_id, "depth": float(z), "shape": shape, "moving": moving, **motion})
    info["moving_ids"] = moving_ids
    return surfaces, info


# ----------------------------------------------------------------------------------------- tracing
def _hit_plane(surf: _Surface, centers: torch.Tensor, dirs: torch.Tensor):
    """Ray ``centers (T,3) + s · dirs (T,N,3)`` against one surface → ``s (T,N)`` (inf on a miss)."""
    axes = surf.axes.to(dirs.dtype)                          # (T,3,3) columns e1, e2, n
    rel = centers - surf.origin.to(dirs.dtype)               # (T,3) camera centre in the plane frame
    proj = torch.bmm(dirs, axes)                             # (T,N,3): d·e1, d·e2, d·n
    rel_local = torch.bmm(rel[:, None], axes)[:, 0]          # (T,3)
    s = (-rel_local[:, 2:3]) / proj[..., 2]                  # ±inf/nan when parallel: rejected below
    a = torch.addcmul(rel_local[:, 0:1], s, proj[..., 0])
    b = torch.addcmul(rel_local[:, 1:2], s, proj[..., 1])
    ha, hb = surf.half
    hit = (s > 1e-6) & (a.abs() <= ha) & (b.abs() <= hb)
    if surf.shape != "rect":
        hit &= _alpha(surf.shape, surf.shape_params, a / ha, b / hb)
    return torch.where(hit, s, torch.tensor(float("inf"), dtype=dirs.dtype))


def _hit_room(room: Tuple[float, float, float, float], centers: torch.Tensor, dirs: torch.Tensor):
    """Exit of rays from the box room (slab method) → ``s (T,N)``, wall index ``(T,N)``.

    Wall order as built: 0 back (z+), 1 floor (y+), 2 ceiling (y−), 3 left (x−), 4 right (x+), 5 front (z−).
    """
    half_x, half_y, front_z, back_z = room
    c = centers[:, None]
    sx = (torch.where(dirs[..., 0] > 0, half_x, -half_x) - c[..., 0]) / dirs[..., 0]
    sy = (torch.where(dirs[..., 1] > 0, half_y, -half_y) - c[..., 1]) / dirs[..., 1]
    sz = (torch.where(dirs[..., 2] > 0, back_z, front_z) - c[..., 2]) / dirs[..., 2]
    s, axis = torch.stack([sx, sy, sz]).nan_to_num(nan=float("inf")).min(0)
    positive = torch.stack([dirs[..., 0] > 0, dirs[..., 1] > 0, dirs[..., 2] > 0]).gather(0, axis[None])[0]
    wall = torch.tensor([[3, 4], [2, 1], [5, 0]])[axis, positive.long()]
    return s, wall


def _trace(surfaces: List[_Surface], room, centers: torch.Tensor, dirs: torch.Tensor):
    """Nearest surface for rays ``centers (T,3) + s · dirs (T,N,3)`` (world frame).

    Surfaces ``0..5`` are the room walls when ``room`` is given (found in closed form), the rest are
    tested one by one. Returns ``s (T,N)`` (= z-depth for ``dirs = R · K⁻¹ [x, y, 1]``; inf on a
    miss) and the surface index ``(T,N)`` int64 (-1 on a miss).
    """
    first = 0
    if room is not None:
        best, sid = _hit_room(room, centers, dirs)
        first = 6
    else:
        best = torch.full(dirs.shape[:2], float("inf"), dtype=dirs.dtype)
        sid = torch.full(dirs.shape[:2], -1, dtype=torch.long)
    for index in range(first, len(surfaces)):
        s = _hit_plane(surfaces[index], centers, dirs)
        closer = s < best
        best = torch.where(closer, s, best)
        sid = torch.where(closer, torch.full_like(sid, index), sid)
    sid = torch.where(torch.isfinite(best), sid, torch.full_like(sid, -1))
    return best, sid


def _shade(surfaces: List[_Surface], points: torch.Tensor, sid: torch.Tensor) -> torch.Tensor:
    """Colours of hit points ``points (T,N,3)`` world on surfaces ``sid (T,N)`` → ``(T,N,3)``.

    All textures form one atlas ``(1,3,S·h,w)`` (stacked vertically), so one ``grid_sample`` looks
    every ray up in its own surface's texture.
    """
    T, N = sid.shape
    S = len(surfaces)
    dtype = points.dtype
    # per (surface, frame): origin and the two in-plane axes divided by the texture scale
    table = torch.stack([
        torch.cat([surf.origin.to(dtype), (surf.axes[..., 0] / surf.tex_scale[0]).to(dtype),
                   (surf.axes[..., 1] / surf.tex_scale[1]).to(dtype)], -1) for surf in surfaces])  # (S,T,9)
    index = (sid.clamp_min(0) * T + torch.arange(T)[:, None]).reshape(-1)
    params = table.reshape(S * T, 9).index_select(0, index)                                          # (TN,9)
    rel = points.reshape(-1, 3) - params[:, :3]
    u = (rel * params[:, 3:6]).sum(-1)
    v = (rel * params[:, 6:9]).sum(-1)
    # reflection tiling done here, so the atlas lookup never leaves [-1, 1]
    u = 1 - (torch.remainder(u + 1, 4) - 2).abs()
    v = 1 - (torch.remainder(v + 1, 4) - 2).abs()
    # atlas: textures stacked vertically; v is kept half a texel inside its tile so nothing bleeds
    edge = 1 - 1 / _TEXTURE_SIZE
    v = (v.clamp(-edge, edge) + 1 + 2 * sid.clamp_min(0).reshape(-1).to(dtype)) / S - 1
    atlas = torch.cat([surf.texture for surf in surfaces], 1)[None]      # (1,3,S·h,w)
    grid = torch.stack([u, v], -1).float().reshape(1, 1, -1, 2)
    colour = F.grid_sample(atlas, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gains = torch.tensor([surf.gain for surf in surfaces], dtype=torch.float32)[sid.clamp_min(0)]
    return (colour.reshape(3, T, N).permute(1, 2, 0) * gains[..., None]).clamp_(0, 1)


def _rays(w2c: torch.Tensor, K: torch.Tensor, pix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixels ``(T,N,2)`` → world ray centres ``(T,3)`` and directions ``(T,N,3)`` with camera z = 1."""
    Kinv = torch.linalg.inv(K)
    homo = torch.cat([pix, torch.ones_like(pix[..., :1])], -1)
    cam = homo @ Kinv.T
    rot_c2w = w2c[:, :3, :3].transpose(1, 2)
    centers = -(rot_c2w @ w2c[:, :3, 3:4])[..., 0]
    return centers, cam @ rot_c2w.transpose(1, 2)


def render_scene(seed: int, config: SceneConfig = SceneConfig()) -> SyntheticClip:
    """Render the scene drawn from ``seed`` (deterministic: same seed + config → same tensors).

    Args:
        seed: scene seed (layout, textures, shapes, motions and the random camera path).
        config: sizes, camera and layer options.

    Returns:
        :class:`SyntheticClip` with video ``(T,3,H,W)``, depth ``(T,1,H,W)``, exact flow
        ``(T,2,H,W)`` px, visibility ``(T,1,H,W)``, w2c ``(T,4,4)``, K ``(3,3)`` and masks.
    """
    T, H, W = int(config.num_frames), int(config.height), int(config.width)
    if T < 2:
        raise InputError.at(None, "SceneConfig.num_frames", f"is {T}", "use at least 2 frames")
    if H < 8 or W < 8:
        raise InputError.at(None, "SceneConfig.height/width", f"{H}x{W} is too small", "use at least 8x8 pixels")
    rng = np.random.default_rng(seed)
    w2c64, K64, cam_desc = _resolve_camera(config, rng)
    surfaces, info = _build_scene(config, rng, w2c64, K64)
    info["camera"] = cam_desc
    room = info["room"]

    # ray casting in float32 (hit points good to ~1e-5 units); reference points move in float64
    w2c, K = w2c64.float(), K64.float()
    grid = pixel_grid(H, W).reshape(2, H * W).T[None]  # (1, HW, 2)

    # 1. render every frame
    centers, dirs = _rays(w2c, K, grid.expand(T, -1, -1))
    depth, sid = _trace(surfaces, room, centers, dirs)
    if bool((sid < 0).any()):
        raise InputError.at(None, "SceneConfig.background", "some camera rays leave the scene",
                            "use background='room' or a smaller camera motion")
    points = torch.addcmul(centers[:, None], depth[..., None], dirs)
    video = _shade(surfaces, points, sid)

    # 2. move every reference point with its surface and project it into every frame
    sid0 = sid[0]
    ref = points[0].double()                                             # (N,3) world = camera 0
    world = ref[None].repeat(T, 1, 1)
    for index, surf in enumerate(surfaces):
        mask = sid0 == index
        if surf.layer_id == 0 or not bool(mask.any()):
            continue
        origin, axes = surf.origin.double(), surf.axes.double()
        local = (ref[mask] - origin[0]) @ axes[0]                        # (M,3) layer coordinates
        world[:, mask] = origin[:, None] + local[None] @ axes.transpose(1, 2)

    def project(pts):  # (T,N,3) float64 world → pixels (T,N,2), camera z (T,N)
        cam = pts @ w2c64[:, :3, :3].transpose(1, 2) + w2c64[:, None, :3, 3]
        z = cam[..., 2]
        uv = (cam / z.clamp_min(1e-6)[..., None]) @ K64.T
        return uv[..., :2], z

    gridd = grid.double()
    pix_t, z_t = project(world)
    flow = pix_t - gridd
    cam_pix, _ = project(ref[None].expand(T, -1, -1))
    camera_flow = cam_pix - gridd

    # 3. visibility: in frame, in front of the camera, and no foreground layer nearer along the ray
    #    through the new position (room walls bound a convex room and never occlude).
    c_t, d_t = _rays(w2c, K, pix_t.float())
    z_f = z_t.float()
    occluded = torch.zeros_like(z_f, dtype=torch.bool)
    for index, surf in enumerate(surfaces):
        if surf.layer_id == 0:
            continue
        s = _hit_plane(surf, c_t, d_t)
        occluded |= (s < z_f * (1 - 1e-5)) & (sid0 != index)[None]
    in_frame = (pix_t[..., 0] >= 0) & (pix_t[..., 0] <= W - 1) & (pix_t[..., 1] >= 0) & (pix_t[..., 1] <= H - 1)
    visible = in_frame & (z_t > 1e-6) & ~occluded
    if room is None:  # a background plane can be left through its edge
        visible &= _trace(surfaces, None, c_t, d_t)[1] >= 0
    visible[0] = True

    layer_of_surface = torch.tensor([s.layer_id for s in surfaces])
    layer_ids = layer_of_surface[sid0].reshape(1, H, W)
    moving = torch.tensor([s.layer_id in info["moving_ids"] for s in surfaces])[sid0].reshape(1, H, W)
    flow[0] = 0.0
    camera_flow[0] = 0.0
    return SyntheticClip(
        video=video.reshape(T, H, W, 3).permute(0, 3, 1, 2).contiguous(),
        depth=depth.reshape(T, 1, H, W).contiguous(),
        flow=flow.reshape(T, H, W, 2).permute(0, 3, 1, 2).float().contiguous(),
        visibility=visible.reshape(T, 1, H, W).float(),
        w2c=w2c64.float(),
        K=K64.float(),
        layer_ids=layer_ids,
        camera_flow=camera_flow.reshape(T, H, W, 2).permute(0, 3, 1, 2).float().contiguous(),
        moving_mask=moving,
        info=info,
    )
