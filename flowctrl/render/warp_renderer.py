"""The warp renderer: stage 2's default backend, CPU-friendly and weight-free.

Every output frame t is the reference image forward-splatted along the unified flow ``F[:, t]`` with
softmax splatting (Niklaus & Liu, CVPR 2020): each source pixel lands on its four bilinear neighbours
at ``p + F[:, t](p)`` and overlapping contributions are averaged with weights ``exp(Z)``, so the
source with the larger importance ``Z`` wins. Pixels no source reaches are holes, filled afterwards
(:mod:`flowctrl.render.fill`) from what lies behind them: the same splat carries every source's
importance, so the fill knows which side of a hole is background.

Sharpness: the bilinear splat blends up to four source pixels per output pixel, which halves the fine
detail of every frame with a fractional shift. The splat therefore also carries each source's
position; where those positions agree (one surface, no minification) the output pixel is sampled
once from the reference image at their mean (bicubic, ``resample="bicubic"``, the default), so every
frame is one resampling of the source and never a resampling of a resampled frame. The source under
that mean position also gives the target's depth order for the hole fill.

Importance ``Z`` (in [-alpha, 0], 0 = wins):

* depth known (``z``, optionally re-expressed in frame t's camera when ``K`` and ``w2c`` are given):
  ``Z = -alpha * (1 - z_min / z)``, i.e. normalized inverse depth, nearer wins. Inverse depth keeps
  near layers apart even when far values (sky) stretch the depth range.
* no depth: flow-magnitude consistency, ``Z = -alpha * clip(1 - |F| / max|F| + |F - box(F)| / max|F|, 0, 1)``:
  what moves more (dragged objects over a still background, near parallax under camera motion) wins,
  and pixels whose flow disagrees with their neighbourhood (blended motion boundaries) lose.

The splat itself is :func:`flowctrl.flow.warp.splat`, so a compiled CPU path or the CUDA kernel
replaces it transparently.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from flowctrl.errors import InputError
from flowctrl.render.fill import fill_holes, normalize_fill_mode
from flowctrl.flow.grid import pixel_grid

# Size limits (documented in docs/render.md). Larger inputs are refused with an InputError.
MIN_SIDE = 8
MAX_SIDE = 2048
MAX_FRAMES = 1024
MAX_VOXELS = 2048 * 2048 * 49  # T*H*W: the output video alone is 12 bytes per voxel (float32 RGB)
# Frames splatted per call: bounds the temporary memory to ~CHUNK_PIXELS * 40 bytes.
CHUNK_PIXELS = 1 << 24

DEFAULT_ALPHA = 20.0
# A pixel counts as covered when its accumulated softmax weight exceeds this fraction of the weakest
# possible single full contribution (exp(-alpha)); below, it is a hole and gets filled.
COVERAGE_EPS = 1e-3
# Importance of sources that must not be splatted (invalid flow): exp(-1e4) is exactly 0 in float32.
INVALID_Z = -1e4
# Sharp resampling: a covered pixel whose splatted sources' positions spread less than this (px^2,
# x and y variance summed; 0.5 for a half-pixel shift, more under minification or where surfaces mix)
# is re-sampled once from the source image at their mean position (bicubic) instead of keeping the
# bilinear splat's blend, which softens every frame with a fractional shift.
RESAMPLE_MAX_SPREAD = 1.0
RESAMPLE_FRAMES = 8  # frames per auxiliary splat (bounds its memory)
MAGNIFIED = 1 / 1.9  # inverse local scale below which a frame can have one-pixel splat gaps (> ~2x)

ProgressCallback = Callable[[str, int, int], None]


def check_render_size(height: int, width: int, num_frames: int, source: Optional[str] = None,
                      field: Optional[str] = "size") -> None:
    """Refuse sizes the renderer does not support (one-line :class:`InputError`).

    Limits: ``MIN_SIDE <= H, W <= MAX_SIDE`` (8..2048 px), ``2 <= T <= MAX_FRAMES`` (1024) and
    ``T*H*W <= MAX_VOXELS`` (49 frames at 2048x2048).
    """
    if num_frames < 2:
        raise InputError.at(source, "frames", f"is {num_frames}", "give at least 2 frames (default 49)")
    if num_frames > MAX_FRAMES:
        raise InputError.at(source, "frames", f"is {num_frames}, above the limit of {MAX_FRAMES}",
                            f"give at most {MAX_FRAMES} frames")
    for name, value in (("height", height), ("width", width)):
        if value < MIN_SIDE or value > MAX_SIDE:
            raise InputError.at(source, field, f"{name} {value} px is outside {MIN_SIDE}..{MAX_SIDE}",
                                f"choose a size between {MIN_SIDE} and {MAX_SIDE} px per side, e.g. 512x512")
    if num_frames * height * width > MAX_VOXELS:
        raise InputError.at(source, field, f"{num_frames} frames of {width}x{height} exceed the limit of "
                            f"{MAX_VOXELS} frame-pixels", "lower --size or --frames")


def depth_points(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Reference pixels back-projected with their z-depth: ``(B, 3, H*W)`` frame-0 camera coordinates.

    Args:
        depth: ``(B, 1, H, W)`` z-depth; K: ``(B, 3, 3)`` intrinsics in pixels.
    """
    B, _, H, W = depth.shape
    xs, ys = pixel_grid(H, W, device=depth.device)
    pix = torch.stack([xs, ys, torch.ones_like(xs)], 0).reshape(1, 3, H * W)  # (1,3,HW)
    rays = torch.linalg.solve(K.float(), pix.expand(B, 3, H * W))  # (B,3,HW), z-component 1
    return rays * depth.float().reshape(B, 1, H * W)


def importance_from_depth(depth: torch.Tensor, alpha: float = DEFAULT_ALPHA, K: Optional[torch.Tensor] = None,
                          w2c: Optional[torch.Tensor] = None, points: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax-splatting importance from z-depth (nearer wins).

    Args:
        depth: ``(B, 1, H, W)`` positive z-depth of the reference frame.
        alpha: importance range; ``Z`` lies in ``[-alpha, 0]``.
        K: optional ``(B, 3, 3)`` intrinsics in pixels, and
        w2c: optional ``(B, T, 4, 4)`` world(=frame 0)-to-camera; with both, the depth of every
            reference pixel is taken in frame t's camera.
        points: optional :func:`depth_points` ``(depth, K)``, computed once by callers that render a
            video chunk by chunk.
    Returns:
        ``(B, T, 1, H, W)`` when ``w2c`` is given, else ``(B, 1, 1, H, W)`` (broadcast over frames).
    """
    B, _, H, W = depth.shape
    if K is not None and w2c is not None:
        points = depth_points(depth, K) if points is None else points
        R_z = w2c[..., 2, :3].float().unsqueeze(-1)  # (B,T,3,1): the z row of each rotation
        t_z = w2c[..., 2, 3].float().unsqueeze(-1)  # (B,T,1)
        # z in frame t's camera, (B,T,HW). Elementwise in a fixed order (not a batched matmul, whose
        # rounding may depend on T), so every frame's value is the same however frames are batched.
        z = torch.addcmul(t_z, R_z[:, :, 0], points[:, None, 0])
        z.addcmul_(R_z[:, :, 1], points[:, None, 1]).addcmul_(R_z[:, :, 2], points[:, None, 2])
        z = z.reshape(B, -1, 1, H, W)
    else:
        z = depth.float().clone().unsqueeze(1)  # (B,1,1,H,W)
    # Z = -alpha * (1 - z_min / z) = alpha * (d / d_max - 1) with inverse depth d = 1/z, computed in
    # place; points behind the camera get d = 0, i.e. the lowest importance -alpha.
    z.masked_fill_(z <= 0, float("inf"))
    inv = z.reciprocal_()
    d_max = inv.flatten(2).amax(-1).clamp(min=1e-30)[..., None, None, None]  # (B,T,1,1,1)
    return inv.mul_(alpha / d_max).sub_(alpha)


def importance_from_flow(flow: torch.Tensor, alpha: float = DEFAULT_ALPHA, kernel: int = 5) -> torch.Tensor:
    """Softmax-splatting importance without depth, from flow magnitude and local flow consistency.

    Args:
        flow: ``(N, 2, H, W)`` displacement in pixels.
        alpha: importance range; ``Z`` lies in ``[-alpha, 0]``.
        kernel: box size (px) of the neighbourhood the consistency term compares against.
    Returns:
        ``(N, 1, H, W)``; all zeros for a frame without motion.
    """
    mag = flow.norm(dim=1, keepdim=True)
    scale = mag.flatten(1).amax(-1).clamp(min=1e-6)[:, None, None, None]
    smooth = F.avg_pool2d(F.pad(flow, [kernel // 2] * 4, mode="replicate"), kernel, stride=1)
    inconsistency = (flow - smooth).norm(dim=1, keepdim=True)
    score = (1.0 - mag / scale + inconsistency / scale).clamp(0, 1)
    moving = (mag.flatten(1).amax(-1) > 1e-6)[:, None, None, None]
    return torch.where(moving, -alpha * score, torch.zeros_like(score))


@dataclass
class WarpRender:
    """Result of :func:`render_warp`.

    video: ``(1, T, 3, H, W)`` float in [0, 1]; holes: ``(1, T, 1, H, W)`` bool (before filling);
    timings: seconds per stage (``"splat"``, ``"fill"``).
    """

    video: torch.Tensor
    holes: torch.Tensor
    timings: Dict[str, float] = field(default_factory=dict)


def render_warp(image: torch.Tensor, flow: torch.Tensor, *, depth: Optional[torch.Tensor] = None,
                valid: Optional[torch.Tensor] = None, K: Optional[torch.Tensor] = None,
                w2c: Optional[torch.Tensor] = None, fill: str = "push-pull", alpha: float = DEFAULT_ALPHA,
                importance: Optional[torch.Tensor] = None,
                callback: Optional[ProgressCallback] = None, resample: str = "bicubic") -> WarpRender:
    """Render a video by softmax-splatting ``image`` along every frame of ``flow``.

    Args:
        image: ``(1, 3, H, W)`` float in [0, 1], the reference frame.
        flow: ``(1, T, 2, H, W)`` pixels, ``F[:, t]`` maps reference pixels to frame t (T >= 2).
        depth: optional ``(1, 1, H, W)`` z-depth; selects depth importance (nearer wins).
        valid: optional ``(1, T, 1, H, W)`` bool; reference pixels marked False are not splatted
            (behind the camera, out of view).
        K, w2c: optional ``(1,3,3)`` / ``(1,T,4,4)`` camera; with depth, importance uses frame-t depth.
        fill: ``"push-pull"`` | ``"inpaint"`` | ``"none"``.
        alpha: importance range of the softmax weights.
        importance: optional explicit ``Z`` ``(1, T|1, 1, H, W)`` overriding depth/flow importance.
        callback: ``callback(stage, done, total)`` progress over frames for stages ``"splat"``, ``"fill"``.
    Returns:
        :class:`WarpRender` with the filled video and the hole masks.
    """
    if image.ndim != 4 or image.shape[:2] != (1, 3):
        raise InputError.at(None, "image", f"has shape {tuple(image.shape)}", "give (1, 3, H, W)")
    if flow.ndim != 5 or flow.shape[0] != 1 or flow.shape[2] != 2 or flow.shape[-2:] != image.shape[-2:]:
        raise InputError.at(None, "flow", f"has shape {tuple(flow.shape)} for an image of {tuple(image.shape)}",
                            "give (1, T, 2, H, W) at the image's size")
    check_render_size(image.shape[-2], image.shape[-1], flow.shape[1])
    return render_warp_frames(image, flow, depth=depth, valid=valid, K=K, w2c=w2c, fill=fill, alpha=alpha,
                              importance=importance, callback=callback, resample=resample)


def render_warp_frames(image: torch.Tensor, flow: torch.Tensor, *, depth: Optional[torch.Tensor] = None,
                       valid: Optional[torch.Tensor] = None, K: Optional[torch.Tensor] = None,
                       w2c: Optional[torch.Tensor] = None, fill: str = "push-pull", alpha: float = DEFAULT_ALPHA,
                       importance: Optional[torch.Tensor] = None,
                       callback: Optional[ProgressCallback] = None,
                       points: Optional[torch.Tensor] = None, resample: str = "bicubic") -> WarpRender:
    """:func:`render_warp` for any run of frames ``flow (1, n, 2, H, W)``, ``n >= 1``, without the size limits.

    Every output frame depends only on its own flow, validity and camera (importance, splat and fill
    are per frame), so a video rendered chunk by chunk (``flow[:, a:b]`` with ``w2c[:, a:b]``) equals
    the video rendered at once; :mod:`flowctrl.pipelines.streaming` relies on it. Arguments as
    :func:`render_warp`, plus ``points``: optional :func:`depth_points` of ``(depth, K)``, the same for
    every chunk of a video, and ``resample``: ``"bicubic"`` (default) | ``"bilinear"`` re-samples
    single-surface pixels once from the source (module doc), ``"splat"`` keeps the splat's blend.
    """
    from flowctrl.flow.warp import splat

    fill = normalize_fill_mode(fill)
    if resample not in ("bicubic", "bilinear", "splat"):
        raise InputError.at(None, "resample", f"unknown mode {resample!r}", "use bicubic, bilinear or splat")
    T = flow.shape[1]
    H, W = image.shape[-2:]
    image = image.float()
    flow = flow.float()
    timings = {"splat": 0.0, "fill": 0.0}
    t0 = time.perf_counter()
    if importance is not None:
        importance = importance.float().clamp(-alpha, 0)  # own copy, safe to edit below
    elif depth is not None:
        importance = importance_from_depth(depth, alpha, K, w2c, points=points)  # (1,T|1,1,H,W)
    if importance is not None and valid is not None:
        importance = importance.expand(1, T, 1, H, W).contiguous() if importance.shape[1] != T else importance
        importance.masked_fill_(~valid.bool(), INVALID_Z)
    timings["splat"] += time.perf_counter() - t0
    video = torch.empty(1, T, 3, H, W, dtype=image.dtype, device=image.device)
    holes = torch.zeros(1, T, 1, H, W, dtype=torch.bool, device=image.device)
    far = torch.zeros(1, T, 1, H, W, dtype=image.dtype, device=image.device)  # -importance at every target
    chunk = max(1, CHUNK_PIXELS // (H * W))
    # The splat shifts Z by its per-frame max, so the weakest valid source contributes at least
    # exp(-alpha) per unit of bilinear coverage; invalid sources get INVALID_Z (weight exactly 0).
    hole_eps = COVERAGE_EPS * math.exp(-alpha)
    for start in range(0, T, chunk):
        stop = min(T, start + chunk)
        t0 = time.perf_counter()
        f = flow[0, start:stop]  # (n,2,H,W)
        # Frames without motion (always frame 0) are the image itself, exactly.
        still = ~f.flatten(1).any(dim=1)
        moving_idx = torch.nonzero(~still).flatten()
        video[0, start:stop][still] = image[0]
        m = moving_idx.numel()
        if m:
            # Usually the moving frames are one contiguous run (all but frame 0): use views, not copies.
            lo = int(moving_idx[0])
            run = slice(lo, lo + m) if int(moving_idx[-1]) == lo + m - 1 else moving_idx
            fm = f[run]
            if importance is not None:
                Z = importance[0, start:stop][run] if importance.shape[1] > 1 else importance[0].expand(m, -1, -1, -1)
            else:
                Z = importance_from_flow(fm, alpha)
                if valid is not None:
                    Z.masked_fill_(~valid[0, start:stop][run].bool(), INVALID_Z)
            src = image.expand(m, -1, -1, -1)  # broadcast: the compiled splat reads it without a copy
            # a convex combination of the image: in [0, 1] up to rounding. Written straight into the
            # video when the moving frames are a contiguous run.
            target = video[0, start:stop][run] if isinstance(run, slice) else None
            out, norm = splat(src, fm, weight=Z.contiguous(), mode="softmax", return_norm=True, out=target)
            if target is None:
                video[0, start:stop][run] = out
            torch.le(norm, hole_eps, out=holes[0, start:stop][run]) if isinstance(run, slice) else \
                holes[0, start:stop].index_put_((run,), norm <= hole_eps)
            frames_idx = torch.arange(start, stop, device=flow.device)[run]
            _resample_and_far(image, fm, Z, video[0], holes[0], far[0], frames_idx, resample)
        timings["splat"] += time.perf_counter() - t0
        if callback is not None:
            callback("splat", stop, T)
    t1 = time.perf_counter()
    for start in range(0, T, chunk):
        stop = min(T, start + chunk)
        h = holes[0, start:stop]
        if bool(h.any()):
            view = video[0, start:stop]
            filled = fill_holes(view, h, fill, inplace=True, far=far[0, start:stop])
            if filled.data_ptr() != view.data_ptr():
                view.copy_(filled)
        if callback is not None:
            callback("fill", stop, T)
    timings["fill"] = time.perf_counter() - t1
    return WarpRender(video=video, holes=holes, timings=timings)


def _resample_and_far(image: torch.Tensor, flow: torch.Tensor, Z: torch.Tensor, video: torch.Tensor,
                      holes: torch.Tensor, far: torch.Tensor, frames: torch.Tensor, resample: str) -> None:
    """Splat each source's position along ``flow (m, 2, H, W)`` with weights ``Z``; at every target,
    the source under the mean position gives ``far = -Z`` (written into ``far[frames]``) and, unless
    ``resample == "splat"``, single-surface pixels of ``video[frames]`` are re-sampled once from
    ``image (1, 3, H, W)`` there (module doc)."""
    from flowctrl.flow.warp import splat

    H, W = image.shape[-2:]
    m = flow.shape[0]
    xs, ys = pixel_grid(H, W, dtype=image.dtype, device=image.device)
    # centred positions keep x^2 + y^2 small enough for a float32 variance
    cx, cy = (W - 1) / 2.0, (H - 1) / 2.0
    xs, ys = xs - cx, ys - cy
    pos = torch.stack([xs, ys, xs * xs + ys * ys])[None]  # (1, 3, H, W), the same for every frame
    for a in range(0, m, RESAMPLE_FRAMES):
        b = min(m, a + RESAMPLE_FRAMES)
        n = b - a
        z = Z[a:b]
        z = z.expand(n, 1, H, W) if z.shape[0] != n else z
        fl = flow[a:b]
        magnified = _magnified(fl)  # per frame: whether one-pixel splat gaps can occur
        out = splat(pos.expand(n, 3, H, W), fl.contiguous(), weight=z.contiguous(), mode="softmax")
        mx, my = out[:, 0:1], out[:, 1:2]
        spread = out[:, 2:3] - mx * mx - my * my
        single = spread < 1e-4
        # the source nearest the mean position (flat index per target)
        near = ((my + cy).round_().clamp_(0, H - 1) * W + (mx + cx).round().clamp_(0, W - 1)).long().reshape(n, 1, H * W)
        if bool(single.any()):
            # a target reached by one (magnified) source gets that source's integer position; the exact
            # inverse is off by (target - landing) / local scale, looked up at that source
            src_idx = near.expand(n, 2, H * W)
            f_at = torch.gather(fl.reshape(n, 2, H * W), 2, src_idx).reshape(n, 2, H, W)
            inv_at = torch.gather(_inverse_scale(fl).reshape(n, 2, H * W), 2, src_idx).reshape(n, 2, H, W)
            mx = torch.where(single, mx + (xs - mx - f_at[:, 0:1]) * inv_at[:, 0:1], mx)
            my = torch.where(single, my + (ys - my - f_at[:, 1:2]) * inv_at[:, 1:2], my)
        idx = frames[a:b]
        if int(idx[-1]) - int(idx[0]) == n - 1:  # consecutive frames: views instead of copies
            idx = slice(int(idx[0]), int(idx[0]) + n)
        grid = torch.cat([(mx + cx) / max(W - 1, 1), (my + cy) / max(H - 1, 1)], dim=1).mul_(2).sub_(1)
        grid = grid.permute(0, 2, 3, 1)
        # the source under the mean position gives the target's depth order: NaN where it was not
        # splatted (invalid sources have no depth)
        z_at = torch.gather(z.reshape(n, 1, H * W), 2, near).reshape(n, 1, H, W)
        far[idx] = torch.where(z_at > INVALID_Z / 2, -z_at, torch.full_like(z_at, float("nan")))
        if resample == "splat":
            continue
        # ... and whether a motion edge is near it
        edge_at = torch.gather(_motion_edges(fl).reshape(n, 1, H * W), 2, near).reshape(n, 1, H, W)
        # one surface only: positions agree, and the bicubic footprint holds no motion edge (it would
        # pull in the other side of an occlusion boundary)
        hole = holes[idx]
        sharp = (spread < RESAMPLE_MAX_SPREAD) & (edge_at < 0.5) & ~hole
        gap = _magnification_gaps(hole, sharp, grid, magnified)
        if bool(gap.any()):
            # one-pixel gaps between the sources of a magnified surface: sampled like their neighbours
            sharp |= gap
            holes[idx] = hole & ~gap
            f = far[idx]
            far[idx] = torch.where(gap, _neighbour_mean(f, gap), f)
        if not bool(sharp.any()):
            continue
        sampled = F.grid_sample(image.expand(n, -1, -1, -1), grid, mode=resample, padding_mode="border",
                                align_corners=True)
        if resample == "bicubic":
            sampled = sampled.clamp_(0, 1)
        video[idx] = torch.where(sharp, sampled, video[idx])


def _motion_edges(flow: torch.Tensor, reach: int = 3, jump: float = 0.5) -> torch.Tensor:
    """``(n, 1, H, W)`` 1.0 at source pixels within ``reach`` px (x or y) of a flow discontinuity, else 0:
    where a bicubic sample (2 px footprint, plus one for the nearest-source lookup at the mean
    position) could mix two surfaces. A discontinuity is a change of the flow's neighbour difference
    by more than ``jump`` px (a second difference, so a smooth zoom or pan is no edge)."""
    dx = flow[..., :, 1:] - flow[..., :, :-1]
    dy = flow[..., 1:, :] - flow[..., :-1, :]
    jx = (dx[..., :, 1:] - dx[..., :, :-1]).abs_().amax(1, keepdim=True) > jump  # centred at x = 1..W-2
    jy = (dy[..., 1:, :] - dy[..., :-1, :]).abs_().amax(1, keepdim=True) > jump
    edge = torch.zeros(flow.shape[0], 1, *flow.shape[-2:], dtype=torch.bool, device=flow.device)
    H, W = flow.shape[-2], flow.shape[-1]
    for k in range(-reach, reach + 1):  # pixels x + k around a discontinuity at x
        lo, hi = max(0, 1 + k), min(W, W - 1 + k)
        edge[..., :, lo:hi] |= jx[..., :, lo - 1 - k:hi - 1 - k]
        lo, hi = max(0, 1 + k), min(H, H - 1 + k)
        edge[..., lo:hi, :] |= jy[..., lo - 1 - k:hi - 1 - k, :]
    return edge.to(flow.dtype)


def _magnified(flow: torch.Tensor) -> torch.Tensor:
    """``(n,)`` bool: frames whose map ``p -> p + F(p)`` stretches some neighbourhood by more than
    1 / :data:`MAGNIFIED` along x or y (checked on 2-px differences of every other row / column)."""
    gx = (flow[:, 0, ::2, 2:] - flow[:, 0, ::2, :-2]) / 2
    gy = (flow[:, 1, 2:, ::2] - flow[:, 1, :-2, ::2]) / 2
    limit = 1 / MAGNIFIED - 1
    return (gx.flatten(1).amax(1) > limit) | (gy.flatten(1).amax(1) > limit)


def _inverse_scale(flow: torch.Tensor) -> torch.Tensor:
    """``(n, 2, H, W)`` 1 / (1 + dF_x/dx), 1 / (1 + dF_y/dy) of the map ``p -> p + F(p)`` (central
    differences; clamped to [0.05, 1]: only magnification is corrected)."""
    gx = torch.zeros_like(flow[:, :1])
    gy = torch.zeros_like(flow[:, :1])
    gx[..., :, 1:-1] = (flow[:, 0:1, :, 2:] - flow[:, 0:1, :, :-2]) / 2
    gy[..., 1:-1, :] = (flow[:, 1:2, 2:, :] - flow[:, 1:2, :-2, :]) / 2
    gx[..., :, :1], gx[..., :, -1:] = gx[..., :, 1:2], gx[..., :, -2:-1]
    gy[..., :1, :], gy[..., -1:, :] = gy[..., 1:2, :], gy[..., -2:-1, :]
    return torch.cat([(1 + gx).clamp(min=1.0).reciprocal(), (1 + gy).clamp(min=1.0).reciprocal()], dim=1).clamp(min=0.05)


def _magnification_gaps(hole: torch.Tensor, sharp: torch.Tensor, grid: torch.Tensor,
                        frames: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One-pixel holes between two single-surface pixels (left/right or above/below) whose source
    positions are within 3 px of each other: the gaps a forward splat leaves when it magnifies more
    than 2x. Their source position (the mean of the two, written into ``grid (n, H, W, 2)``, normalized
    coordinates) is exact for a smooth surface. ``frames``: optional ``(n,)`` bool, the frames that
    can have gaps (magnified ones); others are skipped. Returns ``(n, 1, H, W)`` bool."""
    n, H, W, _ = grid.shape
    if frames is not None:
        gap = torch.zeros_like(hole)
        sel = torch.nonzero(frames).flatten()
        if sel.numel():
            sub = grid[sel]
            gap[sel] = _magnification_gaps(hole[sel], sharp[sel], sub)
            grid[sel] = sub
        return gap
    scale = torch.tensor([(W - 1) / 2.0, (H - 1) / 2.0], dtype=grid.dtype)
    gap = torch.zeros_like(hole)
    pos = grid.clone()
    for mask_dim, grid_dim in ((3, 2), (2, 1)):  # pairs along x, then along y
        def part(t: torch.Tensor, dim: int, sl: slice) -> tuple:
            index = [slice(None)] * t.dim()
            index[dim] = sl
            return tuple(index)

        lo, hi, mid = slice(None, -2), slice(2, None), slice(1, -1)
        cand = hole[part(hole, mask_dim, mid)] & sharp[part(sharp, mask_dim, lo)] & sharp[part(sharp, mask_dim, hi)]
        if not bool(cand.any()):  # bool test first: the position arithmetic only where gaps exist
            continue
        pa, pb = grid[part(grid, grid_dim, lo)], grid[part(grid, grid_dim, hi)]
        close = (((pa - pb) * scale).abs().amax(-1) < 3.0)[:, None]  # within 3 source px
        ok = cand & close & ~gap[part(gap, mask_dim, mid)]
        inner = part(pos, grid_dim, mid)
        pos[inner] = torch.where(ok[:, 0, ..., None], (pa + pb) / 2, pos[inner])
        gap[part(gap, mask_dim, mid)] |= ok
    grid.copy_(pos)
    return gap


def _neighbour_mean(x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Mean of the finite 4-neighbours of ``x (n, 1, H, W)`` outside ``where`` (for one-pixel gaps)."""
    use = ~where & torch.isfinite(x)
    padded = F.pad(torch.where(use, x, torch.zeros_like(x)), (1, 1, 1, 1))
    weight = F.pad(use.to(x.dtype), (1, 1, 1, 1))
    acc = padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]
    cnt = weight[..., :-2, 1:-1] + weight[..., 2:, 1:-1] + weight[..., 1:-1, :-2] + weight[..., 1:-1, 2:]
    return torch.where(cnt > 0, acc / cnt.clamp(min=1), torch.full_like(x, float("nan")))
