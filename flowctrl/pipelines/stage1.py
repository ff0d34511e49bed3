"""Stage 1 (analytic): every control becomes one unified flow field.

``compute_unified_flow(image, controls, T)`` →  :class:`UnifiedFlow`:

1. local motion — arrows, drags and pose keypoints become tracks → sparse flow (eq. 5) → dense flow
   (Gaussian densification, eq. 6-7), by default limited to the object under each control's start
   point (``segment=``, :mod:`flowctrl.segment`; ``"none"`` = the densification alone). Controls with their own region (an arrow's mask, a drag's
   radius) are densified alone and limited to that region; the rest are densified together. A
   reference video adds its estimated flow (DIS by default). The motion brush (``motion_mask``)
   limits the sum.
2. camera motion — the trajectory is resampled to ``T`` frames; depth comes from
   :func:`flowctrl.depth.resolve_depth` (file / Depth-Anything / plane fallback); reprojection flow
   and the visibility mask follow (:func:`flowctrl.flow.camera.camera_flow`).
3. composition ``F(p) = F_obj(p) + F_cam(p + F_obj(p))`` with the static mask honoured, and the
   motion-strength target (eq. 8 of the local motion, as seed 004 measures it with a static camera)
   met by rescaling the local motion.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple, Union

import torch

from flowctrl.errors import InputError
from flowctrl.flow.camera import camera_flow
from flowctrl.flow.compose import compose_with_visibility
from flowctrl.flow.densify import default_sigma, densify_points
from flowctrl.flow.sparse import sparse_flow_from_tracks, sparse_points_from_tracks
from flowctrl.flow.strength import motion_strength, rescale_to_strength
from flowctrl.flow.grid import pixel_grid

if TYPE_CHECKING:  # controls import the flow math, not the other way round at import time
    from flowctrl.controls import Controls

logger = logging.getLogger("flowctrl")

Callback = Callable[[str, int, int], None]
DENSIFY_MODES = ("normalized", "gaussian")


class ControlWarning(UserWarning):
    """A control that will not do what it looks like (no motion, or motion that vanishes)."""


@dataclass
class UnifiedFlow:
    """The output of stage 1 (all tensors float32 unless noted, batch 1).

    flow: ``(1, T, 2, H, W)`` pixels, reference form (``flow[:, 0] == 0``).
    depth: ``(1, 1, H, W)`` z-depth used for the camera flow, or None (no camera, no depth given).
    local_mask: ``(1, T, 1, H, W)`` where local controls (arrows, drags, pose, video) act.
    valid: ``(1, T, 1, H, W)`` bool; false where the reference pixel leaves the view or is occluded.
    K: ``(1, 3, 3)`` pixel intrinsics of frame 0, or None without a camera.
    w2c: ``(1, T, 4, 4)`` world-to-camera relative to frame 0, or None without a camera.
    sparse_flow, sparse_mask: ``(1, T, 2, H, W)`` / ``(1, T, 1, H, W)`` the eq. 5 sparse condition.
    K_frames: ``(1, T, 3, 3)`` per-frame intrinsics (differs from K for zooms), or None.
    local_flow, camera_flow: the two components before composition ``(1, T, 2, H, W)``.
    strength_scale: factor applied to the local flow to meet ``controls.strength`` (1 if none).
    """

    flow: torch.Tensor
    depth: Optional[torch.Tensor]
    local_mask: torch.Tensor
    valid: torch.Tensor
    K: Optional[torch.Tensor]
    w2c: Optional[torch.Tensor]
    sparse_flow: torch.Tensor
    sparse_mask: torch.Tensor
    K_frames: Optional[torch.Tensor] = None
    local_flow: Optional[torch.Tensor] = None
    camera_flow: Optional[torch.Tensor] = None
    strength_scale: float = 1.0

    @property
    def num_frames(self) -> int:
        return int(self.flow.shape[1])

    @property
    def size(self) -> Tuple[int, int]:
        return int(self.flow.shape[-2]), int(self.flow.shape[-1])

    def motion_strength(self) -> float:
        """Eq. 8 of the unified flow, pixels per frame."""
        return float(motion_strength(self.flow)[0])

    def to(self, device: Union[None, str, torch.device] = None, dtype: Optional[torch.dtype] = None) -> "UnifiedFlow":
        """A copy on ``device``; floating tensors cast to ``dtype`` when given (bool masks stay bool)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
            out[f.name] = v
        return UnifiedFlow(**out)

    def tensors(self) -> Dict[str, torch.Tensor]:
        """Every tensor field by name (for saving with :func:`flowctrl.flow.io.save_flow`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}


def report_progress(callback: Optional[Callback], stage: str, done: int, total: int = 1) -> None:
    """``callback(stage, done, total)`` when a progress callback is given (stage 1 and the learned flow model)."""
    if callback is not None:
        callback(stage, done, total)


def _acting(local: torch.Tensor, smask: torch.Tensor) -> torch.Tensor:
    """``(1, 1, 1, H, W)`` bool: where ``local (1, T, 2, H, W)`` is non-zero or ``smask (1, T, 1, H, W)`` > 0 at some frame.

    Same result as ``(local != 0).any((1, 2)) | (smask > 0).any(1)`` (NaN counts as acting), reduced one
    ``(H*W,)`` row at a time instead of through ``(T, 2, H, W)`` bool temporaries.
    """
    h, w = local.shape[-2:]
    rows = local.reshape(-1, h * w)
    peak = rows[0].abs()
    buf = torch.empty_like(peak)
    for row in rows[1:]:
        torch.maximum(peak, torch.abs(row, out=buf), out=peak)  # NaN propagates, and NaN != 0
    acting = peak != 0
    for row in smask.reshape(-1, h * w):
        acting |= row > 0
    return acting.reshape(1, 1, 1, h, w)


def _warn_outside(name: str, start, mask: Optional[torch.Tensor], what: str, fix: str) -> None:
    if mask is None:
        return
    m = torch.as_tensor(mask).reshape(-1, *torch.as_tensor(mask).shape[-2:])[0]
    x, y = int(round(float(start[0]))), int(round(float(start[1])))
    inside = 0 <= y < m.shape[0] and 0 <= x < m.shape[1] and bool(m[y, x])
    if not inside:
        warnings.warn(f"{name} starts at ({float(start[0]):.0f}, {float(start[1]):.0f}), outside {what}: its motion "
                      f"vanishes there ({fix})", ControlWarning, stacklevel=3)


def _local_groups(controls, num_frames: int, height: int, width: int, segmented: bool = False) -> List[dict]:
    """Tracks grouped by the region they act in (None = densified together, unrestricted).

    Every local control kind of :mod:`flowctrl.controls.registry` in turn (``controls.local_items()``):
    an item with its own region (an arrow's mask, a drag's radius) is a group of its own; with
    ``segmented`` every other item is a group with ``"seeds"`` ``(N, 2)``: its region is the object
    under those points (filled in by the caller).
    """
    free_tracks, free_starts, free_valid = [], [], []
    groups: List[dict] = []
    counts: Dict[str, int] = {}
    for control, item in controls.local_items():
        i = counts[control.label] = counts.get(control.label, -1) + 1
        tr, st, va = control.tracks(item, num_frames)
        anchor = control.anchor(item)
        if anchor is not None:
            _warn_outside(f"{control.label} {i}", anchor, control.own_mask(item), "its own mask",
                          "move its start into the mask or fix the mask")
            _warn_outside(f"{control.label} {i}", anchor, controls.motion_mask, "the motion brush", "paint the brush over it")
        own = control.region(item, height, width)
        if own is not None:
            groups.append({"tracks": tr, "starts": st, "valid": va, "sigma": None, **own})
        elif segmented:
            groups.append({"tracks": tr, "starts": st, "valid": va, "region": None, "sigma": None,
                           "seeds": control.seeds(tr, st, va)})
        else:
            free_tracks.append(tr), free_starts.append(st)
            free_valid.append(va if va is not None else torch.ones(tr.shape[:2], dtype=torch.bool))
    if free_tracks:
        groups.insert(0, {"tracks": torch.cat(free_tracks), "starts": torch.cat(free_starts),
                          "valid": torch.cat(free_valid), "region": None, "sigma": None})
    return groups


def _load_video(ref_video, num_frames: int, height: int, width: int) -> torch.Tensor:
    if isinstance(ref_video, torch.Tensor):
        video = ref_video.detach().float()
        if video.dim() == 5:
            video = video[0]
        if video.dim() != 4 or video.shape[1] != 3:
            raise InputError.at(None, "ref_video", f"tensor has shape {tuple(ref_video.shape)}", "give (T, 3, H, W) in [0, 1]")
        if video.shape[0] != num_frames:
            idx = torch.linspace(0, video.shape[0] - 1, num_frames).round().long()
            video = video[idx]
        if tuple(video.shape[-2:]) != (height, width):
            video = torch.nn.functional.interpolate(video, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        return video.clamp(0, 1)
    from flowctrl.controls import load_reference_video

    return load_reference_video(ref_video, num_frames=num_frames, size=(height, width))


def compute_unified_flow(
    image: torch.Tensor,
    controls: Optional["Controls"] = None,
    num_frames: int = 16,
    *,
    depth: Union[None, str, Path, torch.Tensor] = None,
    depth_model: Union[None, str, Path, Callable[[torch.Tensor], torch.Tensor]] = "auto",
    densify: str = "normalized",
    generator: Optional[torch.Generator] = None,
    segment: Union[None, str, Callable] = "auto",
    callback: Optional[Callback] = None,
    flow_method: str = "dis",
    depth_kind: str = "depth",
    depth_scale: Optional[float] = None,
    plane_distance: Optional[float] = None,
) -> UnifiedFlow:
    """Turn the controls into one unified flow (stage 1, analytic; deterministic, no weights).

    Args:
        image: ``(1, 3, H, W)`` in [0, 1]; its size is the working size.
        controls: :class:`flowctrl.controls.Controls` (pixels of ``controls.image_size``; rescaled
            here to ``(H, W)``) or None (static).
        num_frames: ``T ≥ 2``.
        depth: overrides ``controls.depth`` (path or tensor), see :func:`flowctrl.depth.resolve_depth`.
        depth_model: ``"auto"`` (default; Depth Anything V2 Small when it can be had, else the plane
            with one warning), ``"none"`` (the plane), a Depth-Anything hub id / folder, or a callable
            ``image -> (1,1,H,W)``. Depth is only computed for camera controls (or when asked by name).
        densify: ``"normalized"`` (Nadaraya-Watson) or ``"gaussian"`` (eq. 6-7 as written).
        segment: where a local control's motion spreads (:mod:`flowctrl.segment`): ``"auto"`` (SAM
            when cached, else edges), ``"sam"``, ``"edges"``, a SAM folder / hub id, a callable, or
            ``"none"`` (the densification alone, unrestricted, as before segmentation existed).
        generator: unused (the analytic stage is deterministic); accepted for a uniform API.
        callback: ``callback(stage, done, total)`` progress.
        flow_method: ``"dis"`` or ``"raft"`` for a reference video.
        depth_kind, depth_scale: how to read a depth file (:mod:`flowctrl.depth.file`).
        plane_distance: distance of the fallback plane when no depth is available, in the units of
            the camera translation; with estimated depth, its median. None: the trajectory's
            ``scene_depth`` (an orbit's look-at depth) when it has one; for a camera file of unknown
            scale (RealEstate10K, MotionCtrl) the size :mod:`flowctrl.depth.scale` picks from the
            path; else 1 (presets).
    """
    del generator
    plan = plan_unified_flow(image, controls, num_frames, depth=depth, depth_model=depth_model, densify=densify,
                             segment=segment, callback=callback, flow_method=flow_method, depth_kind=depth_kind,
                             depth_scale=depth_scale, plane_distance=plane_distance)
    sparse, smask = plan.sparse_condition()
    local_mask = _acting(plan.local_unscaled, smask).to(torch.float32).expand(1, plan.num_frames, 1, plan.height,
                                                                              plan.width).contiguous()
    # camera flow and composition run together, frame by frame
    report_progress(callback, "compose", 0, 1)
    flow, valid, cam = plan.frames(0, plan.num_frames, with_camera_flow=True)
    report_progress(callback, "compose", 1, 1)
    return UnifiedFlow(flow=flow.contiguous(), depth=plan.depth, local_mask=local_mask, valid=valid, K=plan.K,
                       w2c=plan.w2c, sparse_flow=sparse, sparse_mask=smask, K_frames=plan.K_frames,
                       local_flow=plan.local, camera_flow=cam, strength_scale=float(plan.strength_scale))


@dataclass
class Stage1Plan:
    """Everything of stage 1 that spans all frames, computed once; :meth:`frames` finishes any run of frames.

    The composed flow and visibility of frame ``t`` depend only on ``local[:, t]``, the depth and
    frame ``t``'s camera, so a renderer can evaluate and consume the video a few frames at a time
    (:mod:`flowctrl.pipelines.streaming`) with results equal to :func:`compute_unified_flow`'s.

    local: ``(1, T, 2, H, W)`` local (object) flow after masks and strength, pixels.
    local_unscaled: the same before the strength rescale (what ``local_mask`` is computed from).
    depth: ``(1, 1, H, W)`` or None; K ``(1, 3, 3)``, K_frames ``(1, T, 3, 3)``, w2c ``(1, T, 4, 4)`` or None.
    static: ``(1, 1, H, W)`` static mask or None. strength_scale: factor applied to the local flow.
    """

    num_frames: int
    height: int
    width: int
    local: torch.Tensor
    local_unscaled: torch.Tensor
    depth: Optional[torch.Tensor]
    K: Optional[torch.Tensor]
    K_frames: Optional[torch.Tensor]
    w2c: Optional[torch.Tensor]
    static: Optional[torch.Tensor]
    strength_scale: float
    tracks: Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]
    video_flow: Optional[torch.Tensor]
    motion_mask: Optional[torch.Tensor]

    @property
    def has_camera(self) -> bool:
        return self.w2c is not None

    def frames(self, start: int, stop: int, with_camera_flow: bool = False
               ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """The unified flow of frames ``start..stop-1``.

        Returns:
            ``flow (1, n, 2, H, W)`` pixels (frame 0 exactly zero), ``valid (1, n, 1, H, W)`` bool and,
            with ``with_camera_flow``, the camera flow ``(1, n, 2, H, W)`` (else None). Without a camera
            the flow is a view of :attr:`local` (zeroing frame 0 writes through, as before composition).
        """
        H, W = self.height, self.width
        local = self.local[:, start:stop]
        cam = None
        if self.has_camera:
            # a pixel moved by local motion is seen where the camera sees the point it moved to, and
            # must land inside the frame (one compiled pass on CPU)
            cam, cam_valid = camera_flow(self.depth, self.K_frames[:, start:stop], self.w2c[:, start:stop],
                                         K_ref=self.K_frames[:, 0])
            flow, valid = compose_with_visibility(local, cam, cam_valid, self.static)
        else:
            flow = local
            xs, ys = pixel_grid(H, W, dtype=flow.dtype)
            tx, ty = xs + flow[:, :, 0], ys + flow[:, :, 1]
            valid = ((tx > -0.5) & (tx < W - 0.5) & (ty > -0.5) & (ty < H - 0.5))[:, :, None]
        if start == 0:
            flow[:, 0] = 0.0
        return flow, valid, cam if with_camera_flow else None

    def sparse_condition(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The eq. 5 sparse condition ``(1, T, 2, H, W)`` and its mask ``(1, T, 1, H, W)``, masks and strength applied."""
        T, H, W = self.num_frames, self.height, self.width
        all_tracks, all_starts, all_valid = self.tracks
        if all_tracks:
            sparse, smask = sparse_flow_from_tracks(torch.cat(all_tracks)[None], torch.cat(all_starts)[None], H, W,
                                                    torch.cat(all_valid)[None])
        else:
            sparse, smask = torch.zeros(1, T, 2, H, W), torch.zeros(1, T, 1, H, W)
        if self.video_flow is not None:
            sparse = torch.where(smask > 0, sparse, self.video_flow)  # the video is a dense condition
            smask = torch.ones_like(smask)
        # the sparse condition obeys the same masks as the dense field it stands for
        if self.motion_mask is not None:
            smask = smask * self.motion_mask.to(smask.dtype).reshape(1, 1, 1, H, W)
        if self.static is not None:
            smask = smask * (1.0 - self.static.to(smask.dtype)[:, None])
        if self.motion_mask is not None or self.static is not None:
            # without these masks smask is in {0, 1} and sparse is already 0 wherever smask is 0
            sparse = sparse * smask
        if self.strength_scale != 1.0:
            sparse = sparse * self.strength_scale
        return sparse, smask


def plan_unified_flow(
    image: torch.Tensor,
    controls: Optional["Controls"] = None,
    num_frames: int = 16,
    *,
    depth: Union[None, str, Path, torch.Tensor] = None,
    depth_model: Union[None, str, Path, Callable[[torch.Tensor], torch.Tensor]] = "auto",
    densify: str = "normalized",
    segment: Union[None, str, Callable] = "auto",
    callback: Optional[Callback] = None,
    flow_method: str = "dis",
    depth_kind: str = "depth",
    depth_scale: Optional[float] = None,
    plane_distance: Optional[float] = None,
) -> Stage1Plan:
    """The all-frames part of :func:`compute_unified_flow` (same arguments): local flow, depth, camera, strength."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[:2] != (1, 3):
        raise InputError.at(None, "image", f"has shape {tuple(getattr(image, 'shape', ()))}", "give a (1, 3, H, W) tensor in [0, 1]")
    camera = controls.camera if controls is not None else None
    user_distance = plane_distance is not None
    if plane_distance is None:
        plane_distance = getattr(camera, "scene_depth", None) or 1.0
    if not (math.isfinite(plane_distance) and plane_distance > 0):
        raise InputError.at(None, "plane_distance", f"is {plane_distance}", "give a positive distance")
    if int(num_frames) < 2:
        raise InputError.at(None, "num_frames", f"is {num_frames}", "give at least 2 frames")
    if densify not in DENSIFY_MODES:
        raise InputError.at(None, "densify", f"unknown mode {densify!r}", f"use one of {DENSIFY_MODES}")
    T = int(num_frames)
    _, _, H, W = image.shape
    image = image.detach().float().cpu()
    if controls is None:
        from flowctrl.controls import Controls

        controls = Controls(image_size=(H, W))
    if controls.is_empty():
        warnings.warn("no control given (no arrow, drag, pose, reference video or camera): the video will be still",
                      ControlWarning, stacklevel=3)
    if controls.image_size is not None and tuple(controls.image_size) != (H, W):
        controls = controls.resized(H, W)

    # 1. local motion --------------------------------------------------------------------------
    report_progress(callback, "local", 0, 1)
    segmenter = None
    if controls.local_items() and segment not in (None, "none"):
        from flowctrl.segment import resolve_segmenter

        segmenter = resolve_segmenter(segment)
    groups = _local_groups(controls, T, H, W, segmented=segmenter is not None)
    seg_groups = [g for g in groups if "seeds" in g]
    seg_num = seg_den = None
    if seg_groups:
        from flowctrl.segment import object_regions, same_objects

        report_progress(callback, "segment", 0, 1)
        regions = object_regions(image, [g["seeds"] for g in seg_groups], segmenter)
        groups = [g for g in groups if "seeds" not in g]
        for members in same_objects(regions):
            # controls on one object spread together over it (their motions interpolate across it)
            parts = [seg_groups[k] for k in members]
            groups.append({"tracks": torch.cat([p["tracks"] for p in parts]), "starts": torch.cat([p["starts"] for p in parts]),
                           "valid": torch.cat([p["valid"] if p["valid"] is not None else
                                               torch.ones(p["tracks"].shape[:2], dtype=torch.bool) for p in parts]),
                           "region": None, "sigma": None, "seeds": None,
                           "soft_region": regions[members].amax(dim=0).reshape(1, 1, 1, H, W)})
        report_progress(callback, "segment", 1, 1)
    local = None
    all_tracks = [g["tracks"] for g in groups]
    all_starts = [g["starts"] for g in groups]
    all_valid = [g["valid"] if g["valid"] is not None else torch.ones(g["tracks"].shape[:2], dtype=torch.bool) for g in groups]
    for g in groups:
        # the group's control pixels only: no (T, 2, H, W) sparse field per group
        idx, pv, pm = sparse_points_from_tracks(g["tracks"], g["starts"], H, W, g["valid"])
        if "soft_region" in g:
            # inside its object a control moves every pixel (a weighted average of its points' motion,
            # no fading): the region, not the distance, bounds the spread
            dense = densify_points(idx, pv, pm, H, W, sigma=default_sigma(H, W), radius=float(H + W), normalized=True,
                                   min_mass=1e-6)[None].mul_(g["soft_region"])
            seg_num = dense if seg_num is None else seg_num.add_(dense)
            seg_den = g["soft_region"].clone() if seg_den is None else seg_den.add_(g["soft_region"])
            continue
        dense = densify_points(idx, pv, pm, H, W, sigma=g.get("sigma") or default_sigma(H, W), radius=g.get("radius"),
                               normalized=(densify == "normalized"))[None]
        if g["region"] is not None:
            dense.mul_(g["region"].to(dense.dtype).reshape(1, 1, 1, H, W))
        local = dense if local is None else local.add_(dense)
    if seg_num is not None:
        # where objects' regions overlap, their motions are averaged rather than added
        seg_flow = seg_num.div_(seg_den.clamp_min(1.0))
        local = seg_flow if local is None else local.add_(seg_flow)
    if local is None:
        local = torch.zeros(1, T, 2, H, W)
    video_flow = None
    if controls.ref_video is not None:
        report_progress(callback, "reference video", 0, 1)
        from flowctrl.flow.estimate import estimate_flow

        video_flow = estimate_flow(_load_video(controls.ref_video, T, H, W), method=flow_method)
        local = local + video_flow
        report_progress(callback, "reference video", 1, 1)
    if controls.motion_mask is not None:
        brush = controls.motion_mask.to(local.dtype).reshape(1, 1, 1, H, W)
        local = local * brush
    static = None
    if controls.static_mask is not None:
        static = controls.static_mask.reshape(1, 1, H, W)
        local = local * (1.0 - static.to(local.dtype)[:, None])
    report_progress(callback, "local", 1, 1)

    # 2. camera ---------------------------------------------------------------------------------
    depth_src = depth if depth is not None else controls.depth
    depth_map, K, w2c, K_frames = None, None, None, None
    from flowctrl.depth import depth_source

    if controls.camera is not None or depth_src is not None or depth_source(depth_model) in ("model", "callable"):
        report_progress(callback, "depth", 0, 1)
        from flowctrl.depth import resolve_depth
        from flowctrl.depth.scale import plane_distance_for, scene_scale

        cam = controls.camera
        # the scene's size: a given distance (flag, or the path's scene_depth) is the median depth; a
        # camera file of unknown scale is sized from its path (flowctrl.depth.scale)
        fixed = user_distance or getattr(cam, "scene_depth", None) is not None
        rule = depth_src is None and cam is not None and not fixed and cam.scale_free
        if rule:
            plane_distance = plane_distance_for(cam.w2c)
        depth_map = resolve_depth(image, depth_src, depth_model, depth_kind=depth_kind, depth_scale=depth_scale,
                                  plane_distance=plane_distance)
        if depth_src is None and cam is not None and (rule or fixed):
            factor = scene_scale(depth_map, cam.w2c) if rule else plane_distance / float(depth_map.median())
            if abs(factor - 1.0) > 1e-6:  # the plane is already at the right distance
                depth_map = depth_map * factor
        report_progress(callback, "depth", 1, 1)
    if controls.camera is not None:
        traj = controls.camera.resample(T)
        K_frames = traj.intrinsics_all(H, W).to(torch.float32)[None]
        w2c = traj.w2c.to(torch.float32)[None]
        K = K_frames[:, 0].clone()

    # 3. strength (camera flow and composition are per frame: Stage1Plan.frames) -----------------
    scale = 1.0
    unscaled = local
    if controls.strength is not None:
        if float(local.abs().max()) > 0:
            # the target is eq. 8 of the local (object) motion: seed 004 measures M_s with a static
            # camera, and the camera's own speed is set by its trajectory
            local, scale = rescale_to_strength(local, controls.strength)
        else:
            logger.warning("motion strength %.3g requested but there is no local motion to rescale", controls.strength)
    return Stage1Plan(num_frames=T, height=H, width=W, local=local, local_unscaled=unscaled, depth=depth_map, K=K,
                      K_frames=K_frames, w2c=w2c, static=static, strength_scale=float(scale),
                      tracks=(all_tracks, all_starts, all_valid), video_flow=video_flow,
                      motion_mask=controls.motion_mask)
