"""Flow visualization: the Middlebury (Baker et al. 2011) color wheel, and controls drawn over an image.

Color wheel: hue = flow direction (right = red, down = yellow-green side, as in the Middlebury
``flowToColor``), saturation = magnitude / ``max_norm``; magnitudes above ``max_norm`` are darkened.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

# Segment lengths of the Baker et al. color wheel: RY, YG, GC, CB, BM, MR (55 colors in all).
_SEGMENTS = (15, 6, 4, 11, 13, 6)


def color_wheel() -> torch.Tensor:
    """The ``(55, 3)`` color wheel in [0, 1]."""
    ry, yg, gc, cb, bm, mr = _SEGMENTS
    cols = []
    for i in range(ry):
        cols.append((1.0, i / ry, 0.0))
    for i in range(yg):
        cols.append((1.0 - i / yg, 1.0, 0.0))
    for i in range(gc):
        cols.append((0.0, 1.0, i / gc))
    for i in range(cb):
        cols.append((0.0, 1.0 - i / cb, 1.0))
    for i in range(bm):
        cols.append((i / bm, 0.0, 1.0))
    for i in range(mr):
        cols.append((1.0, 0.0, 1.0 - i / mr))
    return torch.tensor(cols, dtype=torch.float32)


def flow_to_color(flow: torch.Tensor, max_norm: Optional[float] = None) -> torch.Tensor:
    """Color-code ``flow (..., 2, H, W)`` pixels → ``(..., 3, H, W)`` in [0, 1].

    ``max_norm`` (pixels) maps to full saturation; default: the largest magnitude in the whole tensor,
    so all frames of a clip share one scale. Zero flow is white.
    """
    flow = flow.detach().to(torch.float32)
    u, v = flow[..., 0, :, :], flow[..., 1, :, :]
    rad = torch.sqrt(u * u + v * v)
    if max_norm is None:
        max_norm = float(rad.max()) if rad.numel() else 1.0
    max_norm = max(float(max_norm), 1e-6)
    rad = rad / max_norm
    u, v = u / max_norm, v / max_norm
    wheel = color_wheel().to(flow.device)
    ncols = wheel.shape[0]
    a = torch.atan2(-v, -u) / math.pi  # in [-1, 1]
    fk = (a + 1.0) / 2.0 * (ncols - 1)
    k0 = fk.floor().long().clamp(0, ncols - 1)
    k1 = (k0 + 1) % ncols
    f = (fk - k0.to(fk.dtype))[..., None]
    col = (1 - f) * wheel[k0] + f * wheel[k1]  # (..., H, W, 3)
    r = rad[..., None]
    col = torch.where(r <= 1, 1 - r * (1 - col), col * 0.75)
    return col.movedim(-1, -3).clamp(0, 1)


def _to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray((image.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy())


def _camera_inset(w2c: torch.Tensor, size: int) -> np.ndarray:
    """Top-down (x right, z forward) plot of the camera path with a frustum wedge per key frame."""
    import cv2

    inset = np.full((size, size, 3), 255, np.uint8)
    w2c = torch.as_tensor(w2c, dtype=torch.float64)
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]
    centres = -(R.transpose(1, 2) @ t[..., None])[..., 0]  # (T, 3) in frame-0 camera coordinates
    forward = R.transpose(1, 2)[:, :, 2]  # camera z axis in world
    xz = torch.stack([centres[:, 0], centres[:, 2]], 1)
    extent = float(max(xz.abs().max(), 1e-3)) * 1.6
    margin = size * 0.12

    def to_px(p: torch.Tensor) -> tuple:
        x = size / 2 + float(p[0]) / extent * (size / 2 - margin)
        y = size / 2 - float(p[1]) / extent * (size / 2 - margin)
        return int(round(x)), int(round(y))

    cv2.rectangle(inset, (0, 0), (size - 1, size - 1), (80, 80, 80), 1)
    path = [to_px(p) for p in xz]
    for a, b in zip(path[:-1], path[1:]):
        cv2.line(inset, a, b, (40, 40, 200), 1, cv2.LINE_AA)
    n = len(path)
    keys = sorted({0, n // 2, n - 1})
    wedge = extent * 0.18
    for k in keys:
        d = forward[k]
        ang = math.atan2(float(d[0]), float(d[2]))
        half = math.radians(30)
        c = xz[k]
        left = c + wedge * torch.tensor([math.sin(ang - half), math.cos(ang - half)], dtype=torch.float64)
        right = c + wedge * torch.tensor([math.sin(ang + half), math.cos(ang + half)], dtype=torch.float64)
        pts = np.array([to_px(c), to_px(left), to_px(right)], np.int32)
        color = (0, 160, 0) if k == 0 else (200, 40, 40)
        cv2.polylines(inset, [pts], True, color, 1, cv2.LINE_AA)
    cv2.putText(inset, "top view", (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return inset


MOVING_TINT = (0, 200, 255)  # RGB of the region that will move


def moving_region(local_flow: torch.Tensor, min_px: float = 0.5, min_fraction: float = 0.05) -> torch.Tensor:
    """``(H, W)`` bool: where the local (object) flow ``(T, 2, H, W)`` or ``(1, T, 2, H, W)`` (pixels) moves a
    pixel by more than ``max(min_px, min_fraction ·`` the largest local motion ``)`` at some frame."""
    f = torch.as_tensor(local_flow).detach().float()
    f = f.reshape(-1, *f.shape[-3:])
    mag = torch.hypot(f[:, 0], f[:, 1]).amax(dim=0)
    peak = float(mag.max()) if mag.numel() else 0.0
    return mag > max(min_px, min_fraction * peak)


def draw_controls(image: torch.Tensor, controls: object, flow: Optional[torch.Tensor] = None,
                  num_frames: int = 16, moving: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Draw the controls over ``image (3, H, W)`` → ``(3, H', W')`` in [0, 1].

    Arrows (red, with strength applied), drag paths (blue polylines with a dot per point), pose of the
    reference frame (green limbs), the motion mask outline (yellow), and the camera path as a small
    top-down inset with frustum wedges. With ``flow (T, 2, H, W)`` (or ``(1, T, 2, H, W)``) the color
    wheel of its last frame is placed to the right (``W' = 2W``). Coordinates are in pixels of the
    image (call ``controls.resized(H, W)`` first when they refer to another size). ``moving`` ``(H, W)``
    (bool or [0, 1], e.g. :func:`moving_region`) is the region that will move: tinted cyan and outlined.
    """
    import cv2

    canvas = _to_uint8_hwc(image).copy()
    h, w = canvas.shape[:2]
    thick = max(1, round(max(h, w) / 256))
    if moving is not None:
        m = torch.as_tensor(moving).detach().float().reshape(-1, *torch.as_tensor(moving).shape[-2:])[0].cpu().numpy()
        if m.shape == (h, w):
            a = 0.35 * np.clip(m, 0, 1)[..., None]
            canvas = np.round(canvas * (1 - a) + np.array(MOVING_TINT, np.float64) * a).astype(np.uint8)
            contours, _ = cv2.findContours((m > 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, MOVING_TINT, thick, cv2.LINE_AA)
    for arrow in getattr(controls, "arrows", None) or []:
        track = torch.as_tensor(arrow.track(num_frames), dtype=torch.float64)
        s = torch.as_tensor(arrow.start, dtype=torch.float64)
        e = s + track[-1]
        a0 = (int(round(float(s[0]))), int(round(float(s[1]))))
        a1 = (int(round(float(e[0]))), int(round(float(e[1]))))
        cv2.arrowedLine(canvas, a0, a1, (255, 255, 255), thick + 2, cv2.LINE_AA, tipLength=0.2)  # halo: visible on any colour
        cv2.arrowedLine(canvas, a0, a1, (230, 30, 30), thick, cv2.LINE_AA, tipLength=0.2)
    for drag in getattr(controls, "drags", None) or []:
        pts = np.round(np.asarray(drag.points, np.float64)).astype(np.int32).reshape(-1, 2)
        cv2.polylines(canvas, [pts], False, (30, 90, 230), thick, cv2.LINE_AA)
        for p in pts:
            cv2.circle(canvas, tuple(int(v) for v in p), thick + 1, (30, 90, 230), -1, cv2.LINE_AA)
    pose = getattr(controls, "pose", None)
    if pose is not None:
        kp = torch.as_tensor(pose.keypoints)[0].numpy()
        conf = getattr(pose, "confidence", None)
        conf = np.ones(len(kp)) if conf is None else torch.as_tensor(conf)[0].numpy()
        for j1, j2 in getattr(pose, "limbs", ()):
            if j1 < len(kp) and j2 < len(kp) and conf[j1] > 0.1 and conf[j2] > 0.1:
                cv2.line(canvas, tuple(int(round(v)) for v in kp[j1]), tuple(int(round(v)) for v in kp[j2]),
                         (30, 200, 60), thick, cv2.LINE_AA)
    mask = getattr(controls, "motion_mask", None)
    if mask is not None:
        m = (torch.as_tensor(mask).reshape(-1, *torch.as_tensor(mask).shape[-2:])[0].cpu().numpy() > 0).astype(np.uint8)
        if m.shape == (h, w):
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, (240, 220, 0), thick, cv2.LINE_AA)
    camera = getattr(controls, "camera", None)
    if camera is not None and getattr(camera, "w2c", None) is not None:
        size = max(48, min(h, w) // 4)
        if size < min(h, w):
            canvas[h - size - 4:h - 4, w - size - 4:w - 4] = _camera_inset(camera.w2c, size)
    out = torch.from_numpy(canvas).permute(2, 0, 1).float() / 255.0
    if flow is not None:
        f = torch.as_tensor(flow)
        f = f.reshape(-1, *f.shape[-3:])[-1]
        if tuple(f.shape[-2:]) == (h, w):
            out = torch.cat([out, flow_to_color(f)], dim=2)
    return out


def color_wheel_legend(size: int = 64) -> torch.Tensor:
    """A ``(3, size, size)`` legend disc of the color coding (radius = ``max_norm``)."""
    r = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2) / ((size - 1) / 2)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    col = flow_to_color(torch.stack([xx, yy])[None], max_norm=1.0)[0]
    outside = (xx.square() + yy.square()) > 1
    return torch.where(outside[None], torch.ones_like(col), col)


def flow_video(flow: torch.Tensor, max_norm: Optional[float] = None, legend: bool = True) -> torch.Tensor:
    """``flow (1, T, 2, H, W)`` or ``(T, 2, H, W)`` → color video ``(T, 3, H, W)`` with one shared scale."""
    f = flow.reshape(-1, *flow.shape[-3:])
    video = flow_to_color(f, max_norm=max_norm)
    h, w = video.shape[-2:]
    size = min(h, w) // 5
    if legend and size >= 16:
        video = video.clone()
        video[:, :, 2:2 + size, 2:2 + size] = color_wheel_legend(size)
    return video
