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
from flowctrl_cuda import camera_reprojection
from flowctrl.flow.grid import pixel_grid
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
    K0_inv = torch.linalg.inv(Kt[:, 0] if K_ref is None else K_ref.to(torch.float64))
    eye = torch.eye(3, dtype=torch.float64, device=depth.device)
    E = torch.stack([Kt[:, i] @ w2c[:, i, :3, :3] @ K0_inv - eye for i in range(t)], dim=1)  # (B, T, 3, 3)
    q = torch.stack([(Kt[:, i] @ w2c[:, i, :3, 3:])[..., 0] for i in range(t)], dim=1)  # (B, T, 3)
    z0 = depth[:, 0].reshape(b, h * w).to(work)
    # float32 CPU inference runs one compiled pass per frame; autograd and other devices the reference
    return camera_reprojection(z0, E.to(work), q.to(work), h, w, MIN_DEPTH, ZBUFFER_TOLERANCE, occlusion)


def homography_flow(K: torch.Tensor, R: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flow of the homography ``K R K⁻¹`` (a pure rotation ``R`` of the camera): ``(B, 2, H, W)``.

    Args:
        K: ``(B, 3, 3)`` pixels; R: ``(B, 3, 3)`` rotation part of w2c.
    """
    Hm = K @ R @ torch.linalg.inv(K)
    xs, ys = pixel_grid(height, width, dtype=K.dtype, device=K.device)
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
    xs, ys = pixel_grid(height, width, dtype=torch.float64, device=w2c.device)
    p = torch.stack([xs, ys, torch.ones_like(xs)], dim=0).reshape(3, -1)
    dirs = R.transpose(-1, -2) @ torch.linalg.inv(Kt) @ p  # (B, T, 3, HW)
    dirs = dirs / torch.sqrt((dirs * dirs).sum(dim=2, keepdim=True))
    moment = torch.cross(origin[..., :, None].expand_as(dirs), dirs, dim=2)
    rays = torch.cat([moment, dirs], dim=2).reshape(b, t, 6, height, width)
    return rays.to(torch.float32)
