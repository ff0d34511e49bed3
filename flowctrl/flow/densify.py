"""Dense flow from sparse flow by Gaussian-weighted interpolation (seed 004, §3.2, eq. 6-7).

Eq. 6: ``f̂_d(p) = Σ_i exp(-(D_i(p)/σ)²) · f_s(x_i)`` with ``D_i`` the Euclidean distance from ``p``
to the sparse point ``x_i``; eq. 7 keeps ``f̂_d`` only where it exceeds the threshold ``R`` and sets
the rest to 0. The paper (trained at 512×512) uses ``σ = 170`` and ``R = 0.05`` and says σ is
proportional to the frame size.

Our reading, stated because the paper gives no units for ``R``:

* ``σ = 170 · max(H, W) / 512`` pixels.
* ``R`` is dimensionless: flows are compared relative to the largest sparse magnitude of that frame,
  i.e. eq. 7 keeps ``|f̂_d(p)| > R · max_i |f_s(x_i)|``. A pixel-unit ``R = 0.05 px`` would cut
  nothing, and ``R`` as a fraction of the frame (25.6 px at 512) would erase every arrow shorter
  than that. For one point the rule is a spatial radius ``r = σ · sqrt(ln(1/R)) ≈ 1.73 σ``
  (294 px at 512), which is also what bounds each point's reach in the normalized mode.
* ``normalized=False`` is eq. 6-7 exactly as written (an unnormalized sum: nearby agreeing points
  add up). ``normalized=True`` is a Nadaraya-Watson average ``Σ w_i f_i / Σ w_i`` wherever the kernel
  mass ``Σ w_i ≥ 1`` (inside a cloud of control points, so agreeing points never add up), fading
  as eq. 6 (``Σ w_i f_i``) where less than one point's weight reaches; every control pixel keeps its
  exact sparse value. For a single point both modes give the same field.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from flowctrl.flow.grid import pixel_grid

SIGMA_AT_512 = 170.0
THRESHOLD_R = 0.05


def default_sigma(height: int, width: int) -> float:
    """σ of eq. 6 in pixels for a ``height × width`` frame: 170 at 512 px, proportional to the size."""
    return SIGMA_AT_512 * max(height, width) / 512.0


def default_radius(sigma: float, threshold: float = THRESHOLD_R) -> float:
    """Distance (pixels) at which one point's Gaussian weight falls to ``threshold``: ``σ·sqrt(ln 1/R)``."""
    return sigma * math.sqrt(math.log(1.0 / threshold))


def gaussian_densify(
    sparse: torch.Tensor,
    mask: torch.Tensor,
    sigma: Optional[float] = None,
    radius: Optional[float] = None,
    normalized: bool = True,
    threshold: float = THRESHOLD_R,
    max_chunk_elements: int = 1 << 24,
) -> torch.Tensor:
    """Densify a sparse flow (eq. 6-7).

    Args:
        sparse: ``(B, T, 2, H, W)`` flow in pixels, meaningful where ``mask`` is set.
        mask: ``(B, T, 1, H, W)`` (bool or {0,1}); a pixel set at any frame is a control point,
            contributing at the frames where it is set.
        sigma: Gaussian scale in pixels (default :func:`default_sigma`).
        radius: hard reach of each point in pixels (default :func:`default_radius` of σ and R).
        normalized: Nadaraya-Watson form (default) or eq. 6 as written (module docstring).
        threshold: ``R`` of eq. 7 (relative to the frame's largest sparse magnitude).
        max_chunk_elements: bound on the ``points × pixels`` weight block held at once.

    Returns:
        ``(B, T, 2, H, W)`` dense flow in pixels; differentiable with respect to ``sparse``.
    """
    if sparse.dim() != 5 or sparse.shape[2] != 2:
        raise ValueError(f"sparse must be (B, T, 2, H, W), got {tuple(sparse.shape)}")
    b, t, _, h, w = sparse.shape
    sigma = float(default_sigma(h, w) if sigma is None else sigma)
    radius = float(default_radius(sigma, threshold) if radius is None else radius)
    m = mask.to(sparse.dtype).reshape(b, t, 1, h * w)
    values = sparse.reshape(b, t, 2, h * w)
    out = []
    for bi in range(b):
        idx = torch.nonzero(m[bi, :, 0].amax(dim=0) > 0).flatten()  # control pixels
        out.append(densify_points(idx, values[bi][:, :, idx], m[bi][:, :, idx], h, w, sigma=sigma, radius=radius,
                                  normalized=normalized, threshold=threshold, max_chunk_elements=max_chunk_elements))
    return torch.stack(out).reshape(b, t, 2, h, w)


def densify_points(
    index: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    height: int,
    width: int,
    sigma: Optional[float] = None,
    radius: Optional[float] = None,
    normalized: bool = True,
    threshold: float = THRESHOLD_R,
    max_chunk_elements: int = 1 << 24,
    min_mass: float = 1.0,
) -> torch.Tensor:
    """:func:`gaussian_densify` of one batch item given only its control pixels.

    The Gaussian weights of the points do not depend on the frame, so the dense field is the
    low-rank product ``(values · mask)(T·2 × N) @ weights(N × H·W)``: the cost is one pass over the
    output, never a ``T × H × W`` sparse field.

    Args:
        index: ``(N,)`` flat pixel indices ``row * W + col`` of the control pixels (ascending, unique).
        values: ``(T, 2, N)`` sparse flow at those pixels (pixels); mask: ``(T, 1, N)`` in {0, 1}.
        height, width, sigma, radius, normalized, threshold, max_chunk_elements: as in
            :func:`gaussian_densify`.
        min_mass: the normalized form divides by ``max(Σ w_i, min_mass)``; 1 fades far from the points
            (eq. 6), a tiny value gives the plain weighted average everywhere the weights reach (a
            rigid copy of a single point's motion, used inside an object's region).

    Returns:
        ``(T, 2, H, W)`` dense flow in pixels; differentiable with respect to ``values``.
    """
    h, w = int(height), int(width)
    t = values.shape[0]
    dtype, device = values.dtype, values.device
    sigma = float(default_sigma(h, w) if sigma is None else sigma)
    radius = float(default_radius(sigma, threshold) if radius is None else radius)
    if index.numel() == 0:
        return torch.zeros(t, 2, h, w, dtype=dtype, device=device)
    pm = mask.to(dtype)
    pv = values * pm  # (T, 2, N)
    # one weight row for all frames when every point acts at every frame (arrows, drags)
    shared = bool((pm == pm[:1]).all())
    pm_rows = pm[:1] if shared else pm
    grid = pixel_grid(h, w, dtype=dtype, device=device).reshape(2, -1).T  # (HW, 2)
    pts = grid[index]  # (N, 2)
    n = index.numel()
    num = torch.empty(t, 2, h * w, dtype=dtype, device=device)
    den = torch.empty(pm_rows.shape[0], 1, h * w, dtype=dtype, device=device)
    chunk = max(1, max_chunk_elements // max(1, n))
    first = 0
    if chunk >= h * w and not (torch.is_grad_enabled() and pv.requires_grad):
        # one block: products straight into the output, no copy
        d2 = torch.cdist(pts, grid).square_()
        wgt = torch.exp(-d2 / sigma ** 2)
        wgt.mul_(d2 <= radius ** 2)
        torch.matmul(pv, wgt, out=num)
        torch.matmul(pm_rows, wgt, out=den)
        first = h * w  # nothing left for the loop below
    for s in range(first, h * w, chunk):
        d2 = torch.cdist(pts, grid[s:s + chunk]).square()  # (N, C)
        wgt = torch.exp(-d2 / sigma ** 2) * (d2 <= radius ** 2)
        num[:, :, s:s + chunk] = pv @ wgt
        den[:, :, s:s + chunk] = pm_rows @ wgt
    if normalized:
        dense = num.div_(den.clamp_min_(min_mass)) if not num.requires_grad else num / den.clamp_min(min_mass)
        # control pixels interpolate exactly
        at = dense[:, :, index]
        dense[:, :, index] = torch.where(pm > 0, values, at)
    else:
        # explicit hypot: torch's strided vector_norm over the channel dim is very slow on CPU
        peak = torch.hypot(pv[:, 0], pv[:, 1]).amax(dim=1)[:, None, None]  # (T, 1, 1)
        keep = torch.hypot(num[:, 0], num[:, 1])[:, None] > threshold * peak
        dense = num * keep
    return dense.reshape(t, 2, h, w)
