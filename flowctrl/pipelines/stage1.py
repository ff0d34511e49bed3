"""Stage 1 (analytic): every control becomes one unified flow field.

``compute_unified_flow(image, controls, T)`` →  :class:`UnifiedFlow`:

1. local motion — arrows, drags and pose keypoints become tracks → sparse flow (eq. 5) → dense flow
   (Gaussian densification, eq. 6-7). Controls with their own region (an arrow's mask, a drag's
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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple, Union

import torch

from flowctrl.errors import InputError
from flowctrl.flow.camera import camera_flow
from flowctrl.flow.compose import compose_with_visibility
from flowctrl.flow.densify import THRESHOLD_R, default_sigma, densify_points
from flowctrl.flow.sparse import pose_tracks, sparse_flow_from_tracks, sparse_points_from_tracks, tracks_from_controls
from flowctrl.flow.strength import motion_strength, rescale_to_strength

if TYPE_CHECKING:  # controls import the flow math, not the other way round at import time
    from flowctrl.controls import Controls

logger = logging.getLogger("flowctrl")

Callback = Callable[[str, int, int], None]
DENSIFY_MODES = ("normalized", "gaussian")
POSE_SAMPLES_PER_LIMB = 8


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


def _disc(center: Tuple[float, float], radius: float, height: int, width: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    return ((xs - center[0]) ** 2 + (ys - center[1]) ** 2 <= radius ** 2)[None]


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


def _local_groups(controls, num_frames: int, height: int, width: int) -> List[dict]:
    """Tracks grouped by the region they act in (None = densified together, unrestricted)."""
    free_tracks, free_starts, free_valid = [], [], []
    groups: List[dict] = []
    for arrow in controls.arrows:
        tr, st = tracks_from_controls([arrow], num_frames)
        if arrow.mask is not None:
            groups.append({"tracks": tr, "starts": st, "valid": None, "region": torch.as_tensor(arrow.mask).bool(), "sigma": None})
        else:
            free_tracks.append(tr), free_starts.append(st), free_valid.append(torch.ones(1, num_frames, dtype=torch.bool))
    for drag in controls.drags:
        tr, st = tracks_from_controls([drag], num_frames)
        if drag.radius is not None:
            # the drag's motion fades to R (eq. 7) at its radius: sigma = radius / sqrt(ln(1/R))
            sigma = drag.radius / math.sqrt(math.log(1.0 / THRESHOLD_R))
            groups.append({"tracks": tr, "starts": st, "valid": None, "sigma": sigma, "radius": drag.radius,
                           "region": _disc(drag.start, drag.radius, height, width)})
        else:
            free_tracks.append(tr), free_starts.append(st), free_valid.append(torch.ones(1, num_frames, dtype=torch.bool))
    if controls.pose is not None:
        seq = controls.pose.resample(num_frames)
        tr, st, va = pose_tracks(seq.keypoints, seq.confidence, seq.limbs, samples_per_limb=POSE_SAMPLES_PER_LIMB,
                                 min_confidence=1e-6)
        free_tracks.append(tr), free_starts.append(st), free_valid.append(va)
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
                             callback=callback, flow_method=flow_method, depth_kind=depth_kind,
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
            ys, xs = torch.meshgrid(torch.arange(H, dtype=flow.dtype), torch.arange(W, dtype=flow.dtype), indexing="ij")
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
    if controls.image_size is not None and tuple(controls.image_size) != (H, W):
        controls = controls.resized(H, W)

    # 1. local motion --------------------------------------------------------------------------
    report_progress(callback, "local", 0, 1)
    groups = _local_groups(controls, T, H, W)
    local = None
    all_tracks = [g["tracks"] for g in groups]
    all_starts = [g["starts"] for g in groups]
    all_valid = [g["valid"] if g["valid"] is not None else torch.ones(g["tracks"].shape[:2], dtype=torch.bool) for g in groups]
    for g in groups:
        # the group's control pixels only: no (T, 2, H, W) sparse field per group
        idx, pv, pm = sparse_points_from_tracks(g["tracks"], g["starts"], H, W, g["valid"])
        dense = densify_points(idx, pv, pm, H, W, sigma=g.get("sigma") or default_sigma(H, W), radius=g.get("radius"),
                               normalized=(densify == "normalized"))[None]
        if g["region"] is not None:
            dense.mul_(g["region"].to(dense.dtype).reshape(1, 1, 1, H, W))
        local = dense if local is None else local.add_(dense)
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
