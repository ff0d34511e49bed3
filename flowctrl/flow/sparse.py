"""Sparse flow from point tracks (seed 004, eq. 5, written with displacements).

Eq. 5 puts, at the start pixel ``(x_i, y_i)`` of every arrow ``A^s``, the arrow's motion scaled by its
object strength ``M_o^s`` and zero elsewhere. The paper writes the end point ``(x_j, y_j)``; the flow
is the *displacement* ``(x_j - x_i, y_j - y_i) * M_o^s``, which is what we store. Over a clip every
control becomes a track: the displacement of one reference-frame pixel at each frame ``t``
(``track[0] == 0``), and the sparse field holds ``track[t]`` at the start pixel of frame ``t``.

Every local control kind turns its items into tracks itself (``LocalControl.tracks``,
:mod:`flowctrl.controls.registry`); pose keypoints become one track per keypoint plus tracks sampled
along each limb (:func:`pose_tracks`).
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch

def sparse_points_from_tracks(
    tracks: torch.Tensor,
    starts: torch.Tensor,
    height: int,
    width: int,
    valid: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The non-zero part of :func:`sparse_flow_from_tracks` for one batch item, without the dense field.

    Args:
        tracks: ``(N, T, 2)`` displacements in pixels; starts: ``(N, 2)`` positions ``(x, y)``;
        valid: optional ``(N, T)`` bool (same meaning as in :func:`sparse_flow_from_tracks`).

    Returns:
        ``index (P,)`` long, the flat pixel indices (``row * W + col``, ascending) that some point
        hits at some frame; ``values (T, 2, P)`` the sparse flow there (points on one pixel averaged,
        0 where the mask is off) and ``mask (T, 1, P)`` in {0, 1}: exactly
        ``sparse.reshape(T, 2, H*W)[..., index]`` and ``mask.reshape(T, 1, H*W)[..., index]`` of
        :func:`sparse_flow_from_tracks`, at the cost of ``T × N`` instead of ``T × H × W``.
    """
    n, t, _ = tracks.shape
    dtype = tracks.dtype if tracks.is_floating_point() else torch.float32
    col = torch.round(starts[:, 0]).long()
    row = torch.round(starts[:, 1]).long()
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)  # (N,)
    use = inside[:, None].expand(n, t)
    if valid is not None:
        use = use & valid.bool()
    flat = row.clamp(0, height - 1) * width + col.clamp(0, width - 1)
    keep = use.any(dim=1)
    index, slot = torch.unique(flat[keep], sorted=True, return_inverse=True)
    p = index.numel()
    weight = use[keep].to(dtype).t()  # (T, n')
    vals = tracks[keep].to(dtype).permute(1, 2, 0) * weight[:, None, :]  # (T, 2, n')
    total = torch.zeros(t, 2, p, dtype=dtype, device=tracks.device).index_add(2, slot, vals)
    count = torch.zeros(t, 1, p, dtype=dtype, device=tracks.device).index_add(2, slot, weight[:, None, :])
    return index, total / count.clamp_min(1.0), (count > 0).to(dtype)


def sparse_flow_from_tracks(
    tracks: torch.Tensor,
    starts: torch.Tensor,
    height: int,
    width: int,
    valid: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scatter point tracks into a sparse flow field and its mask (eq. 5).

    Args:
        tracks: ``(B, N, T, 2)`` displacement in pixels of each point at each frame (dx, dy).
        starts: ``(B, N, 2)`` reference-frame position ``(x, y)`` in pixels; rounded to the nearest
            pixel centre. Points outside the image are dropped.
        height, width: size of the field in pixels.
        valid: optional ``(B, N, T)`` bool; a point contributes at frame ``t`` only where true
            (for example a keypoint with zero confidence).

    Returns:
        ``sparse (B, T, 2, H, W)`` float32 pixels (several points on one pixel are averaged) and
        ``mask (B, T, 1, H, W)`` float32 in {0, 1}. Differentiable with respect to ``tracks``.
    """
    if tracks.dim() != 4 or tracks.shape[-1] != 2:
        raise ValueError(f"tracks must be (B, N, T, 2), got {tuple(tracks.shape)}")
    b, n, t, _ = tracks.shape
    if starts.shape != (b, n, 2):
        raise ValueError(f"starts must be (B, N, 2) = {(b, n, 2)}, got {tuple(starts.shape)}")
    dtype = tracks.dtype if tracks.is_floating_point() else torch.float32
    device = tracks.device
    sparse = torch.zeros(b, t, 2, height * width, dtype=dtype, device=device)
    mask = torch.zeros(b, t, 1, height * width, dtype=dtype, device=device)
    # only the hit pixels are computed; the rest of the field stays 0 (one write of the output)
    for bi in range(b):
        index, values, hit = sparse_points_from_tracks(tracks[bi], starts[bi], height, width,
                                                       None if valid is None else valid[bi])
        if index.numel():
            sparse[bi, :, :, index] = values
            mask[bi, :, :, index] = hit
    return sparse.view(b, t, 2, height, width), mask.view(b, t, 1, height, width)


def pose_tracks(
    keypoints: torch.Tensor,
    confidence: Optional[torch.Tensor] = None,
    limbs: Iterable[Tuple[int, int]] = (),
    samples_per_limb: int = 8,
    min_confidence: float = 0.1,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tracks of pose keypoints and of points along each limb.

    Args:
        keypoints: ``(T, J, 2)`` pixel positions; frame 0 is the pose of the reference image.
        confidence: ``(T, J)`` in [0, 1] or None (all confident).
        limbs: pairs ``(j1, j2)`` of keypoint indices (``PoseSequence.limbs`` of the controls).
        samples_per_limb: interior points per limb; the point at fraction ``a`` of the limb in the
            reference pose moves with ``(1 - a) * k1(t) + a * k2(t)`` (the limb stays a rigid-ish
            segment between its moving end points).
        min_confidence: a keypoint below it is invalid at that frame (and at frame 0 for good).

    Returns:
        ``tracks (N, T, 2)`` displacements, ``starts (N, 2)`` reference positions and
        ``valid (N, T)`` bool, with ``N = J + samples_per_limb * len(limbs)``.
    """
    kp = torch.as_tensor(keypoints, dtype=torch.float32)
    t, j, _ = kp.shape
    conf = torch.ones(t, j) if confidence is None else torch.as_tensor(confidence, dtype=torch.float32)
    ok = (conf >= min_confidence) & torch.isfinite(kp).all(-1)
    ok = ok & ok[:1]  # a joint unseen in the reference image has no start pixel
    kp = torch.where(ok[..., None], kp, torch.zeros_like(kp))
    positions = [kp]
    valids = [ok]
    limbs = list(limbs)
    if limbs and samples_per_limb > 0:
        a = torch.arange(1, samples_per_limb + 1, dtype=torch.float32) / (samples_per_limb + 1)
        for j1, j2 in limbs:
            if j1 >= j or j2 >= j:
                raise ValueError(f"limb ({j1}, {j2}) refers to a keypoint beyond the {j} given")
            seg = (1 - a)[None, :, None] * kp[:, j1, None, :] + a[None, :, None] * kp[:, j2, None, :]
            positions.append(seg)  # (T, S, 2)
            valids.append((ok[:, j1] & ok[:, j2])[:, None].expand(t, samples_per_limb))
    pos = torch.cat(positions, dim=1)  # (T, N, 2)
    val = torch.cat(valids, dim=1)  # (T, N)
    tracks = (pos - pos[:1]).permute(1, 0, 2).contiguous()
    return tracks, pos[0].clone(), val.permute(1, 0).contiguous()
