"""Camera flow: depth + intrinsics + relative poses → reprojection flow, visibility, Plücker rays.

Conventions: OpenCV camera axes (x right, y down, z forward); ``w2c`` world-to-camera 4×4 relative
to frame 0 (``w2c[:, 0] == I``, so "world" is the frame-0 camera); intrinsics ``K`` in pixels of the
working resolution, either one ``(B, 3, 3)`` for the clip or per frame ``(B, T, 3, 3)`` (zoom);
depth is z-depth ``(B, 1, H, W)`` in the units of the camera translation.

A reference pixel ``p`` with depth ``z`` back-projects (with ``K_0``) to ``X = z K_0⁻¹ [p, 1]``,
moves to camera ``t`` as ``X_t = R_t X + t_t`` and projects (with ``K_t``) to ``p_t``; the flow is
``p_t − p``.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from kornia.geometry.depth import depth_to_3d_v2
from kornia.geometry.linalg import transform_points

# A reference pixel is hidden at frame t when some other reference pixel lands on the same target
# pixel more than this fraction closer to the camera.
ZBUFFER_TOLERANCE = 0.02
MIN_DEPTH = 1e-6


DEFAULT_FOV_DEG = 60.0  # horizontal field of view assumed wherever a camera carries no intrinsics


def default_intrinsics(height: int, width: int, fov_deg: float = DEFAULT_FOV_DEG,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pinhole ``K`` ``(3, 3)`` in pixels of ``height x width``: square pixels, horizontal field of view
    ``fov_deg`` (degrees), principal point at the image centre ``((W-1)/2, (H-1)/2)``."""
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]], dtype=dtype)


def _per_frame_K(K: torch.Tensor, t: int) -> torch.Tensor:
    if K.dim() == 3:
        return K[:, None].expand(-1, t, 3, 3)
    if K.dim() == 4 and K.shape[1] == t:
        return K
    raise ValueError(f"K must be (B, 3, 3) or (B, T={t}, 3, 3), got {tuple(K.shape)}")


def camera_points(depth: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    """Reference pixels in each frame's camera coordinates.

    Args:
        depth: ``(B, 1, H, W)`` z-depth of the reference frame.
        K: ``(B, 3, 3)`` or ``(B, T, 3, 3)`` pixels (the reference frame uses ``K[:, 0]``).
        w2c: ``(B, T, 4, 4)`` relative to frame 0.

    Returns:
        ``(B, T, H, W, 3)`` float64 points ``X_t`` (same units as the depth).
    """
    t = w2c.shape[1]
    Kt = _per_frame_K(K, t).to(torch.float64)
    pts0 = depth_to_3d_v2(depth[:, 0].to(torch.float64), Kt[:, 0])  # (B, H, W, 3)
    return torch.stack([_move(pts0, w2c[:, i]) for i in range(t)], dim=1)


def _move(pts0: torch.Tensor, w2c_t: torch.Tensor) -> torch.Tensor:
    b, h, w, _ = pts0.shape
    return transform_points(w2c_t.to(torch.float64), pts0.reshape(b, h * w, 3)).reshape(b, h, w, 3)


def camera_flow(
    depth: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, occlusion: bool = True,
    K_ref: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reprojection flow of the reference frame under a camera trajectory.

    Args:
        depth: ``(B, 1, H, W)`` z-depth > 0.
        K: ``(B, 3, 3)`` or ``(B, T, 3, 3)`` intrinsics in pixels.
        w2c: ``(B, T, 4, 4)`` world-to-camera relative to frame 0.
        occlusion: also mark pixels hidden by nearer reference pixels (a z-buffer test).
        K_ref: optional ``(B, 3, 3)`` intrinsics of the reference frame (default ``K[:, 0]``); give it
            when ``K``/``w2c`` are a run of frames ``a..b`` of a longer trajectory (chunked
            rendering): every frame's result depends only on its own camera and the reference.

    Returns:
        ``flow (B, T, 2, H, W)`` float32 pixels and ``valid (B, T, 1, H, W)`` bool: false where the
        point is behind the camera, projects outside the frame, or (with ``occlusion``) is occluded
        at frame ``t`` by another reference pixel. Computed frame by frame (memory is one frame of
        points), matrices in float64, pixels in float32 (float64 for float64 depth); differentiable
        in depth, K and w2c.
    """
    b, _, h, w = depth.shape
    t = w2c.shape[1]
    Kt = _per_frame_K(K, t).to(torch.float64)
    w2c = w2c.to(torch.float64)
    # The 3x3 products are composed in float64; the per-pixel work runs in float32 (half the memory
    # traffic), except when the caller passes float64 depth.
    work = torch.float64 if depth.dtype == torch.float64 else torch.float32
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=work, device=depth.device),
        torch.arange(w, dtype=work, device=depth.device),
        indexing="ij",
    )
    ones = torch.ones_like(xs)
    pix = torch.stack([xs, ys, ones], dim=0).reshape(3, h * w)
    z0 = depth[:, 0].reshape(b, h * w).to(work)
    grid = pix[:2]
    K0_inv = torch.linalg.inv(Kt[:, 0] if K_ref is None else K_ref.to(torch.float64))
    eye = torch.eye(3, dtype=torch.float64, device=depth.device)
    if _compiled_ok(depth, Kt, w2c):
        # inference on float32 CPU: the per-pixel work (flow, visibility, z-buffer) in one compiled
        # pass per frame instead of ~30 tensor passes; same formulas in the same order.
        from flowctrl_cuda import _cpu

        E = torch.stack([Kt[:, i] @ w2c[:, i, :3, :3] @ K0_inv - eye for i in range(t)], dim=1)  # (B, T, 3, 3)
        q = torch.stack([(Kt[:, i] @ w2c[:, i, :3, 3:])[..., 0] for i in range(t)], dim=1)  # (B, T, 3)
        outs = [_cpu.camera_flow(z0[bi], E[bi].to(work), q[bi].to(work), h, w, MIN_DEPTH, ZBUFFER_TOLERANCE, occlusion)
                for bi in range(b)]
        if b == 1:  # a view, not a 100 MB copy
            return outs[0][0][None], outs[0][1][None]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])
    flows, valids = [], []
    for i in range(t):
        # Written as a deviation from the identity so small motions keep full float32 precision
        # (no cancellation of p·z against itself): with E = K_t R_t K_0⁻¹ − I and q = K_t t_t,
        # z_t = z0 + dz, dz = z0 (E p̃)_z + q_z and flow = (z0 (E p̃)_xy + q_xy − p dz) / z_t.
        E = (Kt[:, i] @ w2c[:, i, :3, :3] @ K0_inv - eye).to(work)
        q = (Kt[:, i] @ w2c[:, i, :3, 3:]).to(work)[..., 0]  # (B, 3)
        Ep = E @ pix  # (B, 3, HW)
        dz = z0 * Ep[:, 2] + q[:, 2:3]
        z = z0 + dz
        safe_z = torch.where(z > MIN_DEPTH, z, ones.reshape(1, -1))  # no division by ~0 behind the camera
        flow = (z0[:, None] * Ep[:, :2] + q[:, :2, None] - grid * dz[:, None]) / safe_z[:, None]  # (B, 2, HW)
        proj = grid + flow
        valid = (z > MIN_DEPTH) & (proj[:, 0] > -0.5) & (proj[:, 0] < w - 0.5)
        valid = valid & (proj[:, 1] > -0.5) & (proj[:, 1] < h - 0.5)
        if occlusion:
            occ = _occluded(proj.detach().transpose(1, 2).reshape(b, 1, h, w, 2), z.detach().reshape(b, 1, h, w),
                            valid.reshape(b, 1, h, w))
            valid = valid & ~occ.reshape(b, h * w)
        flows.append(flow.reshape(b, 2, h, w).to(torch.float32))
        valids.append(valid.reshape(b, 1, h, w))
    return torch.stack(flows, dim=1), torch.stack(valids, dim=1)


def _compiled_ok(depth: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor) -> bool:
    if depth.dtype != torch.float32 or depth.device.type != "cpu":
        return False
    if torch.is_grad_enabled() and any(x.requires_grad for x in (depth, K, w2c)):
        return False
    try:
        from flowctrl_cuda import _cpu
    except ImportError:  # pragma: no cover - partial install
        return False
    return _cpu.available()


def _occluded(proj: torch.Tensor, z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Z-buffer test: ``(B, T, H, W)`` true where a nearer reference pixel lands on the same target pixel."""
    b, t, h, w = z.shape
    col = torch.round(proj[..., 0]).long().clamp(0, w - 1)
    row = torch.round(proj[..., 1]).long().clamp(0, h - 1)
    target = (row * w + col).reshape(b * t, h * w)
    depth = torch.where(valid, z, torch.full_like(z, float("inf"))).reshape(b * t, h * w)
    zbuf = torch.full((b * t, h * w), float("inf"), dtype=z.dtype, device=z.device)
    zbuf = zbuf.scatter_reduce(1, target, depth, reduce="amin", include_self=True)
    nearest = torch.gather(zbuf, 1, target)
    return (depth > nearest * (1.0 + ZBUFFER_TOLERANCE)).reshape(b, t, h, w)


def homography_flow(K: torch.Tensor, R: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flow of the homography ``K R K⁻¹`` (a pure rotation ``R`` of the camera): ``(B, 2, H, W)``.

    Args:
        K: ``(B, 3, 3)`` pixels; R: ``(B, 3, 3)`` rotation part of w2c.
    """
    Hm = K @ R @ torch.linalg.inv(K)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=K.dtype, device=K.device),
        torch.arange(width, dtype=K.dtype, device=K.device),
        indexing="ij",
    )
    p = torch.stack([xs, ys, torch.ones_like(xs)], dim=0).reshape(3, -1)
    q = Hm @ p  # (B, 3, HW)
    q = q[:, :2] / q[:, 2:]
    return (q - p[:2]).reshape(-1, 2, height, width)


def plucker_rays(K: torch.Tensor, w2c: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Plücker embedding of every pixel's viewing ray in every frame.

    The ray of pixel ``p`` in camera ``t`` has origin ``o_t`` (camera centre) and unit direction
    ``d = R_tᵀ K_t⁻¹ [p, 1] / ‖·‖`` in world (= frame-0 camera) coordinates; the embedding is
    ``(o × d, d)``.

    Args:
        K: ``(B, 3, 3)`` or ``(B, T, 3, 3)`` pixels; w2c: ``(B, T, 4, 4)``.

    Returns:
        ``(B, T, 6, H, W)`` float32.
    """
    b, t = w2c.shape[:2]
    Kt = _per_frame_K(K, t).to(torch.float64)
    w2c = w2c.to(torch.float64)
    R = w2c[..., :3, :3]
    trans = w2c[..., :3, 3:]
    origin = -(R.transpose(-1, -2) @ trans)[..., 0]  # (B, T, 3)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=w2c.device),
        torch.arange(width, dtype=torch.float64, device=w2c.device),
        indexing="ij",
    )
    p = torch.stack([xs, ys, torch.ones_like(xs)], dim=0).reshape(3, -1)
    dirs = R.transpose(-1, -2) @ torch.linalg.inv(Kt) @ p  # (B, T, 3, HW)
    dirs = dirs / torch.sqrt((dirs * dirs).sum(dim=2, keepdim=True))
    moment = torch.cross(origin[..., :, None].expand_as(dirs), dirs, dim=2)
    rays = torch.cat([moment, dirs], dim=2).reshape(b, t, 6, height, width)
    return rays.to(torch.float32)
