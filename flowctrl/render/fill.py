"""Hole filling for warped frames: multi-scale push-pull (default), OpenCV inpainting, or none.

Holes are pixels that no source pixel reached during splatting (disocclusions, content entering the
view). All fills keep known pixels bit-exact and only write into holes.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from flowctrl.errors import InputError
from flowctrl_cuda import push_pull_holes

FILL_MODES = ("push-pull", "inpaint", "none")


def push_pull_fill(video: torch.Tensor, known: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Fill holes by multi-scale push-pull (Gortler et al. 1996, "The Lumigraph", pull/push).

    Pull: halve the resolution repeatedly, each level the weight-normalized 2x2 sum of the finer one,
    with weights clamped to 1, until a level has no holes. Push: from coarse to fine, each hole takes
    the bilinearly upsampled coarser colour in proportion to its missing weight. Every frame has its
    own pyramid depth, so a frame's result does not depend on the other frames it is batched with
    (a video rendered in chunks of frames equals the video rendered at once).

    Args:
        video: ``(N, C, H, W)`` float frames; values in holes are ignored.
        known: ``(N, 1, H, W)`` coverage in [0, 1] (1 = known pixel, 0 = hole; fractions blend).
    Returns:
        ``(N, C, H, W)``: equal to ``video`` where ``known == 1``. A frame with no known pixel at all
        comes back as zeros.
    """
    if video.ndim != 4 or known.ndim != 4 or known.shape[1] != 1 or known.shape[0] != video.shape[0]:
        raise ValueError(f"push_pull_fill: video {tuple(video.shape)} / known {tuple(known.shape)} mismatch")
    if video.shape[0] > 1:
        return torch.cat([push_pull_fill(video[n:n + 1], known[n:n + 1], eps) for n in range(video.shape[0])])
    w = known.to(video.dtype).clamp(0, 1)
    c = video * w
    levels = []
    while True:
        levels.append((c, w))
        h, wd = c.shape[-2:]
        if (h == 1 and wd == 1) or bool((w > 0).all()):
            break
        pad = (0, wd % 2, 0, h % 2)  # zero-weight padding so odd sizes pool correctly
        sum_c = F.avg_pool2d(F.pad(c, pad), 2) * 4.0
        sum_w = F.avg_pool2d(F.pad(w, pad), 2) * 4.0
        w_next = sum_w.clamp(max=1.0)
        c = sum_c / sum_w.clamp(min=eps) * w_next
        w = w_next
    c_top, w_top = levels[-1]
    color = c_top / w_top.clamp(min=eps)
    for c_l, w_l in reversed(levels[:-1]):
        # coarse pixel i covers fine pixels 2i, 2i+1 (odd sizes were zero-padded): exact 2x, then crop
        up = F.interpolate(color, scale_factor=2, mode="bilinear", align_corners=False)
        color = c_l + (1.0 - w_l) * up[..., : c_l.shape[-2], : c_l.shape[-1]]
    # Known pixels exactly as given (c = video * 1 + 0 * up, but keep bit-exactness explicit).
    return torch.where(known >= 1, video, color)


def push_pull_fill_holes(video: torch.Tensor, holes: torch.Tensor, inplace: bool = False,
                         eps: float = 1e-8) -> torch.Tensor:
    """Push-pull fill for a binary hole mask: the same result as :func:`push_pull_fill` with
    ``known = ~holes`` (to float rounding), computed with less work.

    The pull step is one pass per level; the push step upsamples the coarser level only inside each
    frame's bounding box of partial/missing pixels (see :func:`flowctrl_cuda.reference.push_pull_holes`), so frames whose
    holes are a border strip cost little beyond the pull. Known pixels are returned bit-exact.

    Args:
        video: ``(N, C, H, W)`` float frames.
        holes: ``(N, 1, H, W)`` bool, True where a pixel is missing.
        inplace: write into ``video`` (saves one full-size copy).
    Returns:
        ``(N, C, H, W)`` filled frames (``video`` itself when ``inplace``).
    """
    # float32 CPU frames without autograd: the same steps compiled (frames across threads); else the reference
    return push_pull_holes(video, holes, eps=eps, inplace=inplace)


def inpaint_fill(video: torch.Tensor, holes: torch.Tensor, radius: float = 3.0, method: str = "telea") -> torch.Tensor:
    """Fill holes with OpenCV inpainting (``cv2.inpaint``), frame by frame.

    Args:
        video: ``(N, 3, H, W)`` float in [0, 1].
        holes: ``(N, 1, H, W)`` bool, True where a pixel is missing.
        radius: inpainting neighbourhood radius in pixels.
        method: ``"telea"`` (Telea 2004) or ``"ns"`` (Navier-Stokes).
    Returns:
        ``(N, 3, H, W)`` float; known pixels unchanged, holes quantized to 1/255 steps.
    """
    import cv2

    flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[method]
    out = video.clone()
    frames = (video.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    masks = holes[:, 0].cpu().numpy().astype(np.uint8)
    for i in range(frames.shape[0]):
        if not masks[i].any():
            continue
        filled = cv2.inpaint(np.ascontiguousarray(frames[i]), masks[i], radius, flag)
        filled_t = torch.from_numpy(filled).to(video.device, video.dtype).permute(2, 0, 1) / 255.0
        out[i] = torch.where(holes[i], filled_t, video[i])
    return out


def fill_holes(video: torch.Tensor, holes: torch.Tensor, mode: str = "push-pull",
               known: Optional[torch.Tensor] = None, inplace: bool = False,
               far: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fill ``holes`` in ``video`` with the chosen ``mode``.

    Args:
        video: ``(N, 3, H, W)`` float in [0, 1].
        holes: ``(N, 1, H, W)`` bool.
        mode: ``"push-pull"`` (default, fast, smooth), ``"inpaint"`` (OpenCV Telea, slower, sharper
            near edges), or ``"none"`` (holes stay black, for debugging).
        known: optional soft coverage ``(N,1,H,W)`` for push-pull; defaults to ``~holes``.
        inplace: allowed to overwrite ``video`` (push-pull and none modes).
        far: optional ``(N,1,H,W)`` farness of the known pixels (minus the splatting importance): in
            frames whose known pixels span more than one surface, holes between surfaces are filled
            from behind (:func:`behind_fill`) over the push-pull / inpainting result.
    """
    mode = normalize_fill_mode(mode)
    if mode == "none" or not bool(holes.any()):
        return video.masked_fill_(holes, 0.0) if inplace else video.masked_fill(holes, 0.0)
    layered = _layered_frames(holes, far) if far is not None and known is None else None
    if layered is not None and bool(layered.any()):
        # the fill mode everywhere, then the disocclusions of the layered frames from behind (known
        # pixels are unchanged by the fill, so the scans read the same values)
        out = push_pull_fill_holes(video, holes, inplace=inplace) if mode == "push-pull" else inpaint_fill(video, holes)
        idx = torch.nonzero(layered).flatten()
        v = out[idx]
        out[idx] = behind_fill(v, holes[idx], far[idx], base=v)
        return out
    if mode == "push-pull":
        if known is not None:
            return push_pull_fill(video, known)
        return push_pull_fill_holes(video, holes, inplace=inplace)
    return inpaint_fill(video, holes)


def normalize_fill_mode(mode: str) -> str:
    """Canonical fill mode name; accepts ``push_pull``/``pushpull`` and ``opencv`` aliases."""
    key = str(mode).lower().replace("_", "-")
    key = {"pushpull": "push-pull", "opencv": "inpaint"}.get(key, key)
    if key not in FILL_MODES:
        raise InputError.at(None, "fill", f"unknown mode '{mode}'", f"use one of {', '.join(FILL_MODES)}")
    return key


# Importance units (Z in [-alpha, 0], alpha = 20 by default) within which two surfaces count as one
# when filling from behind: 1 unit is 5 % of the nearest inverse depth with depth importance.
BEHIND_TOLERANCE = 1.0
# A hole counts as a disocclusion (filled from behind) when the known pixels around it differ by more
# than this in importance (15 % of the nearest inverse depth): a depth edge, not one slanted surface
# (a panned plane's entering strip spans < 2 units along its border).
BEHIND_SPLIT = 3.0
# ... found as a jump of more than BEHIND_SPLIT between neighbouring known pixels next to the
# hole (where the two surfaces meet at its ends), or as a spread of more than BEHIND_SPREAD around it
# (a hole that separates two surfaces along its whole length). One smooth slanted surface has neither.
BEHIND_SPREAD = 8.0


def _nearest_known(known: torch.Tensor, reverse: bool):
    """Index of the nearest known pixel left of (``reverse=False``) / right of each pixel along the
    last dim, its distance, and whether there is one. ``known``: ``(..., W)`` bool (contiguous rows:
    a running max along the last dim is several times faster than along a strided one)."""
    n = known.shape[-1]
    ar = torch.arange(n, device=known.device, dtype=torch.int32)
    none = torch.tensor(-1, dtype=torch.int32, device=known.device)
    if not reverse:
        idx = torch.where(known, ar, none).cummax(-1).values
        return idx.clamp(min=0).long(), (ar - idx).to(torch.float32), idx >= 0
    rev = torch.where(known.flip(-1), ar, none).cummax(-1).values.flip(-1)  # index counted from the right
    idx = n - 1 - rev
    return idx.clamp(max=n - 1).long(), (idx - ar).to(torch.float32), rev >= 0


def _row_candidates(video: torch.Tensor, known: torch.Tensor, far: torch.Tensor):
    """Nearest known pixel left and right along rows: ``[(colour, far, distance, ok), ...]``."""
    out = []
    for reverse in (False, True):
        idx, dist, ok = _nearest_known(known, reverse)
        out.append((torch.gather(video, -1, idx.expand_as(video)), torch.gather(far, -1, idx), dist.clamp(min=1.0), ok))
    return out


def _grow(mask: torch.Tensor, reach: int = 1) -> torch.Tensor:
    """``mask (N, 1, H, W)`` bool grown by ``reach`` px along x and y (shifts, no float max-pool)."""
    out = mask.clone()
    for d in range(1, reach + 1):
        out[..., d:, :] |= mask[..., :-d, :]
        out[..., :-d, :] |= mask[..., d:, :]
        out[..., :, d:] |= mask[..., :, :-d]
        out[..., :, :-d] |= mask[..., :, d:]
    return out


def depth_jumps(holes: torch.Tensor, far: torch.Tensor, split: float = BEHIND_SPLIT, reach: int = 1) -> torch.Tensor:
    """Known pixels next to a hole that have a known pixel at most ``reach`` px away (along x or y)
    lying more than ``split`` farther or nearer: where two surfaces meet at a hole. ``(N, 1, H, W)`` bool."""
    known = ~holes & ~torch.isnan(far)
    edge = torch.zeros_like(holes)
    for d in range(1, reach + 1):
        jx = known[..., :, d:] & known[..., :, :-d] & ((far[..., :, d:] - far[..., :, :-d]).abs() > split)
        edge[..., :, d:] |= jx
        edge[..., :, :-d] |= jx
        jy = known[..., d:, :] & known[..., :-d, :] & ((far[..., d:, :] - far[..., :-d, :]).abs() > split)
        edge[..., d:, :] |= jy
        edge[..., :-d, :] |= jy
    return edge & known & _grow(holes, 1)


def disocclusions(holes: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """Hole pixels whose hole (8-connected component) lies between two surfaces: its border holds a
    depth jump (:func:`depth_jumps`) or spans more than :data:`BEHIND_SPREAD` in ``far``. ``(N,1,H,W)``."""
    from scipy import ndimage

    out = torch.zeros_like(holes)
    jumps = depth_jumps(holes, far)
    ring_mask = _grow(holes, 1) & ~holes & ~torch.isnan(far)
    h_np = holes[:, 0].cpu().numpy()
    for n in range(h_np.shape[0]):
        if not h_np[n].any():
            continue
        labels, count = ndimage.label(h_np[n], structure=np.ones((3, 3), bool))
        lab = torch.from_numpy(labels.astype(np.int64))
        # known pixels next to a hole take its label (components are 8-separated: one label each)
        ring = torch.nn.functional.max_pool2d(lab[None, None].float(), 3, stride=1, padding=1)[0, 0].long()
        ring = torch.where(ring_mask[n, 0], ring, torch.zeros_like(ring)).flatten()
        f = far[n, 0].flatten().to(torch.float32)
        hi = torch.full((count + 1,), float("-inf")).scatter_reduce(0, ring, f, reduce="amax")
        lo = torch.full((count + 1,), float("inf")).scatter_reduce(0, ring, f, reduce="amin")
        jump = torch.zeros(count + 1).scatter_reduce(0, ring, jumps[n, 0].flatten().float(), reduce="amax") > 0
        split = jump | (torch.nan_to_num(hi - lo, nan=0.0, posinf=0.0, neginf=0.0) > BEHIND_SPREAD)
        split[0] = False
        out[n, 0] = split[lab]
    return out


def behind_fill(video: torch.Tensor, holes: torch.Tensor, far: torch.Tensor, tol: float = BEHIND_TOLERANCE,
                base: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fill holes from what lies behind them (depth-ordered, background first).

    A disocclusion is the background the foreground moved off, so its colour must come from the far
    side of the hole, not be a blend of both sides. Hole pixels whose hole lies between two surfaces
    (:func:`disocclusions`) look for the nearest known pixel left, right, above and
    below; of those they keep the ones within ``tol`` of the farthest (largest ``far``) and blend them
    by inverse distance. Other hole pixels keep ``base`` (a smooth fill, e.g. push-pull).

    Args:
        video: ``(N, C, H, W)`` float; holes: ``(N, 1, H, W)`` bool, True where missing.
        far: ``(N, 1, H, W)`` how far behind each known pixel lies (larger = farther), e.g. minus the
            splatting importance ``Z`` (minus normalized inverse depth); ignored in holes.
        tol: ``far`` differences up to ``tol`` count as one surface.
        base: ``(N, C, H, W)`` fill used elsewhere (default: push-pull of ``video``).
    Returns:
        ``(N, C, H, W)``: ``video`` where known (bit-exact), the fill in holes.
    """
    if video.ndim != 4 or holes.shape != (video.shape[0], 1, *video.shape[2:]) or far.shape != holes.shape:
        raise ValueError(f"behind_fill: video {tuple(video.shape)} / holes {tuple(holes.shape)} / "
                         f"far {tuple(far.shape)} mismatch")
    if base is None:
        base = push_pull_fill_holes(video, holes)
    out = torch.where(holes, base, video)
    flagged = holes & disocclusions(holes, far)
    far = torch.nan_to_num(far.to(video.dtype), nan=float("-inf"))  # unknown order: never "behind"
    for n in torch.nonzero(flagged.flatten(1).any(1)).flatten().tolist():
        out[n] = _behind_frame(video[n], ~holes[n], far[n], flagged[n], tol, out[n])
    return out


def _behind_frame(video: torch.Tensor, known: torch.Tensor, far: torch.Tensor, flagged: torch.Tensor,
                  tol: float, out: torch.Tensor) -> torch.Tensor:
    """:func:`behind_fill` of one frame ``(C, H, W)`` at its ``flagged (1, H, W)`` pixels; the scans run
    only over the rows and columns that hold a flagged pixel."""
    rows = torch.nonzero(flagged[0].any(1)).flatten()
    cols = torch.nonzero(flagged[0].any(0)).flatten()
    C, H, W = video.shape
    neg = torch.tensor(float("-inf"), dtype=video.dtype)
    acc = torch.zeros(C, H, W, dtype=video.dtype)
    wsum = torch.zeros(1, H, W, dtype=video.dtype)
    f_hi = torch.full((1, H, W), float("-inf"), dtype=video.dtype)
    cands = []
    for c in _row_candidates(video[:, rows], known[:, rows], far[:, rows]):
        cands.append(("r", c))
    def t(x: torch.Tensor) -> torch.Tensor:  # columns as rows
        return x.transpose(-1, -2).contiguous()

    for c in _row_candidates(t(video[:, :, cols]), t(known[:, :, cols]), t(far[:, :, cols])):
        cands.append(("c", tuple(t(x) for x in c)))
    for kind, (_col, f, _dist, ok) in cands:
        view = f_hi[:, rows] if kind == "r" else f_hi[:, :, cols]
        view = torch.maximum(view, torch.where(ok, f, neg))
        if kind == "r":
            f_hi[:, rows] = view
        else:
            f_hi[:, :, cols] = view
    for kind, (col, f, dist, ok) in cands:
        sel = (slice(None), rows) if kind == "r" else (slice(None), slice(None), cols)
        weight = (ok & (f >= f_hi[sel] - tol)).to(video.dtype) / dist
        acc[sel] += col * weight
        wsum[sel] += weight
    use = flagged & (wsum > 0)
    return torch.where(use, acc / wsum.clamp(min=1e-12), out)


def _layered_frames(holes: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: frames where some hole borders two surfaces (a cheap test before :func:`disocclusions`)."""
    known = ~holes
    ring = _grow(holes, 1) & known & ~torch.isnan(far)
    hi = torch.where(ring, far, torch.full_like(far, float("-inf"))).flatten(1).amax(1)
    lo = torch.where(ring, far, torch.full_like(far, float("inf"))).flatten(1).amin(1)
    out = ring.flatten(1).any(1) & (hi - lo > BEHIND_SPREAD)
    maybe = torch.nonzero(ring.flatten(1).any(1) & (hi - lo > BEHIND_SPLIT) & ~out).flatten()
    if maybe.numel():  # a jump needs a spread above the split: only those frames are scanned
        out[maybe] = depth_jumps(holes[maybe], far[maybe]).flatten(1).any(1)
    return out
