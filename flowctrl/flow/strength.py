"""Global motion strength (seed 004, eq. 8) and rescaling local motion to a target strength.

``M_s = (1/N) Σ_{k=0}^{N-1} |F_{k→k+1}|`` with ``|·|`` the mean per-pixel flow magnitude of the
consecutive field (pixels per frame); ``N = T - 1`` steps of a ``T``-frame clip.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from flowctrl.flow.compose import compose_flows, to_consecutive


def motion_strength(flow: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eq. 8 of a reference-form flow ``(B, T, 2, H, W)`` → ``(B,)`` pixels per frame.

    Args:
        flow: reference form, ``T ≥ 2``.
        mask: optional ``(B, 1, H, W)`` region (of each frame's grid) to average over instead of
            the whole frame.
    """
    if flow.shape[1] < 2:
        return flow.new_zeros(flow.shape[0])
    mag = to_consecutive(flow).norm(dim=2)  # (B, N, H, W)
    if mask is None:
        return mag.mean(dim=(1, 2, 3))
    m = mask.to(flow.dtype)[:, None, 0]  # (B, 1, H, W)
    return (mag * m).sum(dim=(1, 2, 3)) / (m.sum(dim=(1, 2, 3)) * mag.shape[1]).clamp_min(1e-12)


def rescale_to_strength(
    local: torch.Tensor,
    target: float,
    camera: Optional[torch.Tensor] = None,
    static_mask: Optional[torch.Tensor] = None,
    iterations: int = 30,
    tolerance: float = 1e-3,
) -> Tuple[torch.Tensor, float]:
    """Scale the local flow by ``α`` so that eq. 8 of the composed flow equals ``target``.

    ``M_s(compose(α·local, camera))`` grows with ``α``; ``α`` is found by bisection on a bracket
    grown by doubling. If the camera alone already moves faster than ``target``, ``α = 0``.

    Args:
        local: ``(1, T, 2, H, W)`` local flow; camera: same shape or None (static camera).
        target: desired ``M_s`` in pixels per frame (≥ 0).

    Returns:
        ``(α · local, α)``.
    """
    if target < 0:
        raise ValueError("target motion strength must be >= 0")

    def strength(alpha: float) -> float:
        f = alpha * local
        if camera is not None:
            f = compose_flows(f, camera, static_mask)
        return float(motion_strength(f).mean())

    if float(local.abs().max()) == 0.0 or strength(0.0) >= target:
        return local * 0.0, 0.0
    lo, hi = 0.0, 1.0
    grow = 0
    while strength(hi) < target and grow < 40:
        lo, hi = hi, hi * 2.0
        grow += 1
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if strength(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= tolerance * max(hi, 1e-12):
            break
    alpha = 0.5 * (lo + hi)
    return local * alpha, alpha
