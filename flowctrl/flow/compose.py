"""Composition of local and camera flow, and the reference ↔ consecutive form conversions.

Reference form ``F (B, T, 2, H, W)``: ``F[:, t](p)`` is where reference pixel ``p`` is at frame ``t``
minus ``p`` (``F[:, 0] == 0``). Consecutive form ``C (B, T-1, 2, H, W)``: ``C[:, k](q)`` is the flow
from frame ``k`` to ``k+1`` at pixel ``q`` of frame ``k`` (the motion fields ``F_{k→k+1}`` of seed 004).

They are related by chaining with backward warping (not by adding):
``F_{k+1}(p) = F_k(p) + C_k(p + F_k(p))``  (:func:`to_reference`), and conversely
``C_k(q) = F_{k+1}(F_k⁻¹(q)) − F_k(F_k⁻¹(q))`` where ``F_k⁻¹(q)`` is the reference pixel that lands
on ``q``, found by fixed-point iteration ``p ← q − F_k(p)`` (:func:`to_consecutive`). The pair is
exact (to the iteration tolerance) for affine motion (translation, rotation, zoom), where bilinear
sampling is exact, and otherwise accurate to the bilinear interpolation error; tests check both.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from flowctrl.flow._sampling import backward_warp
from flowctrl_cuda import compose_visibility


def _warp_seq(x: torch.Tensor, flow: torch.Tensor, padding: str = "border") -> torch.Tensor:
    """Backward-warp ``x (B, T, C, H, W)`` by ``flow (B, T, 2, H, W)`` frame by frame."""
    b, t = x.shape[:2]
    out = backward_warp(x.reshape(b * t, *x.shape[2:]), flow.reshape(b * t, *flow.shape[2:]).to(x.dtype), padding=padding)
    return out.reshape(b, t, *x.shape[2:])


def compose_flows(
    local: torch.Tensor, camera: torch.Tensor, static_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``F(p) = F_obj(p) + F_cam(p + F_obj(p))``: objects move in the scene, the camera films the result.

    Args:
        local: ``(B, T, 2, H, W)`` object (local) flow in pixels, reference form.
        camera: ``(B, T, 2, H, W)`` camera flow in pixels, reference form.
        static_mask: ``(B, 1, H, W)`` or ``(B, T, 1, H, W)``; where true (> 0.5) the local motion is
            removed, so those pixels follow only the camera.

    Returns:
        ``(B, T, 2, H, W)``. With ``camera == 0`` it returns ``local`` exactly (identity).
    """
    if static_mask is not None:
        sm = static_mask.to(local.dtype)
        if sm.dim() == 4:
            sm = sm[:, None]
        local = local * (1.0 - (sm > 0.5).to(local.dtype))
    return local + _warp_seq(camera, local, padding="border")


def compose_with_visibility(
    local: torch.Tensor, camera: torch.Tensor, valid: torch.Tensor, static_mask: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`compose_flows` and the visibility of the composed motion, in one pass where compiled.

    Args:
        local, camera: ``(B, T, 2, H, W)`` pixels; valid: ``(B, T, 1, H, W)`` bool visibility of the
            camera motion (:func:`flowctrl.flow.camera.camera_flow`); static_mask as in :func:`compose_flows`.

    Returns:
        ``flow (B, T, 2, H, W)`` = :func:`compose_flows` and ``valid (B, T, 1, H, W)`` bool: a pixel
        moved by local motion is seen where the camera sees the point it moved to
        (``valid`` sampled bilinearly at ``p + local(p)``, zeros padding, ``> 0.5``), and it lands
        inside the frame (``p + flow(p)`` within ``(-0.5, W - 0.5) × (-0.5, H - 0.5)``).
    """
    b, t, _, h, w = local.shape
    if static_mask is not None:
        sm = static_mask.to(local.dtype)
        if sm.dim() == 4:
            sm = sm[:, None]
        local = local * (1.0 - (sm > 0.5).to(local.dtype))
    # float32 CPU inference runs one compiled pass; autograd and other devices the reference
    flow, vis = compose_visibility(local.reshape(b * t, 2, h, w), camera.reshape(b * t, 2, h, w).to(local.dtype),
                                   valid.reshape(b * t, 1, h, w).bool())
    return flow.reshape(b, t, 2, h, w), vis.reshape(b, t, 1, h, w)


def to_reference(consecutive: torch.Tensor) -> torch.Tensor:
    """Chain consecutive flows ``C (B, T-1, 2, H, W)`` into reference form ``(B, T, 2, H, W)``.

    ``F_0 = 0``, ``F_{k+1}(p) = F_k(p) + C_k(p + F_k(p))`` (C sampled bilinearly, border padding).
    """
    b, n, _, h, w = consecutive.shape
    out = [torch.zeros(b, 2, h, w, dtype=consecutive.dtype, device=consecutive.device)]
    for k in range(n):
        prev = out[-1]
        out.append(prev + backward_warp(consecutive[:, k], prev, padding="border"))
    return torch.stack(out, dim=1)


def invert_positions(flow: torch.Tensor, iterations: int = 20, tolerance: float = 1e-3) -> torch.Tensor:
    """For ``flow (N, 2, H, W)`` return ``u (N, 2, H, W)`` with ``q + u(q) = p`` and ``p + flow(p) = q``.

    Fixed-point iteration ``u ← −flow(q + u)``; converges where the flow is locally contracting
    (``‖∇flow‖ < 1``), i.e. for any motion that does not fold the image. Stops early once no pixel
    changes by more than ``tolerance`` pixels.
    """
    u = -flow
    for _ in range(iterations):
        nxt = -backward_warp(flow, u, padding="border")
        done = bool((nxt - u).abs().max() <= tolerance)
        u = nxt
        if done:
            break
    return u


def to_consecutive(reference: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Convert reference-form ``F (B, T, 2, H, W)`` to consecutive form ``(B, T-1, 2, H, W)``.

    ``C_k(q) = (F_{k+1} − F_k)(F_k⁻¹(q))``; the exact inverse of :func:`to_reference` for motion
    that is affine at the pixel scale (module docstring).
    """
    b, t, _, h, w = reference.shape
    out = []
    for k in range(t - 1):
        fk, fk1 = reference[:, k], reference[:, k + 1]
        u = invert_positions(fk, iterations) if k > 0 else torch.zeros_like(fk)
        out.append(backward_warp(fk1 - fk, u, padding="border"))
    if not out:
        return reference.new_zeros(b, 0, 2, h, w)
    return torch.stack(out, dim=1)
