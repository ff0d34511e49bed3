"""What the web app does, without the web: arrows sketched by clicks, controls, preview, generation.

Everything here is plain Python on numpy images and files, so it is tested without gradio; the
gradio layout in :mod:`flowctrl.app.ui` only wires these functions to widgets. Coordinates are
pixels of the image the user uploaded (``x`` right, ``y`` down), the same as in control files.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from flowctrl.app.uploads import guard_uploads
from flowctrl.errors import InputError

Point = Tuple[float, float]
NO_CAMERA = "none"


# Two clicks closer than this (pixels of the image) end a drag path: a double click sends two clicks
# on (nearly) one spot, and a drag never needs two points that close together.
DOUBLE_CLICK_PX = 2.0


@dataclasses.dataclass(frozen=True)
class ArrowSketch:
    """Arrows and drag paths drawn by clicking. Immutable: every edit returns a new sketch (safe as
    per-session UI state).

    Arrows: the first click of a pair sets ``pending`` (the start), the second closes the arrow.
    Drags: :meth:`drag_click` appends to the open ``path``; :meth:`finish_drag` (a button, or a double
    click on the last point) turns a path of >= 2 points into a drag. ``history`` records the kind of
    every finished item (``"arrow"`` / ``"drag"``) in drawing order, for :meth:`undo`.
    """

    arrows: Tuple[Tuple[Point, Point], ...] = ()
    pending: Optional[Point] = None
    drags: Tuple[Tuple[Point, ...], ...] = ()
    path: Tuple[Point, ...] = ()
    history: Tuple[str, ...] = ()

    def click(self, x: float, y: float) -> "ArrowSketch":
        """One click at pixel ``(x, y)``: start an arrow, or end the pending one there."""
        point = (float(x), float(y))
        if self.pending is None:
            return dataclasses.replace(self, pending=point)
        if point == self.pending:  # a double click on one pixel would be a zero-length arrow
            return dataclasses.replace(self, pending=None)
        return dataclasses.replace(self, arrows=self.arrows + ((self.pending, point),), pending=None,
                                   history=self.history + ("arrow",))

    def drag_click(self, x: float, y: float) -> "ArrowSketch":
        """One click in drag mode: the next point of the open path; a click on the last point
        (a double click) finishes the path instead. A double click sends two clicks: on the last
        point, the first finishes the path and the second is ignored; elsewhere, the first adds the
        final point and the second finishes."""
        point = (float(x), float(y))
        if self.path and math.dist(point, self.path[-1]) <= DOUBLE_CLICK_PX:
            return self.finish_drag()
        if (not self.path and self.history[-1:] == ("drag",)
                and math.dist(point, self.drags[-1][-1]) <= DOUBLE_CLICK_PX):
            return self  # the other click of a double click that just finished this drag, not a new path
        return dataclasses.replace(self, path=self.path + (point,))

    def finish_drag(self) -> "ArrowSketch":
        """Close the open path: a drag if it has >= 2 points, else it is dropped."""
        if len(self.path) < 2:
            return dataclasses.replace(self, path=())
        return dataclasses.replace(self, drags=self.drags + (self.path,), path=(),
                                   history=self.history + ("drag",))

    def undo(self) -> "ArrowSketch":
        """Drop the pending arrow start or the open path's last point if there is one, else the
        last finished arrow or drag."""
        if self.pending is not None:
            return dataclasses.replace(self, pending=None)
        if self.path:
            return dataclasses.replace(self, path=self.path[:-1])
        if not self.history:
            return self
        last, history = self.history[-1], self.history[:-1]
        if last == "drag":
            return dataclasses.replace(self, drags=self.drags[:-1], history=history)
        return dataclasses.replace(self, arrows=self.arrows[:-1], history=history)

    def to_arrows(self, strength: float = 1.0, easing: str = "linear") -> List[Any]:
        """The finished arrows as :class:`flowctrl.controls.Arrow` (the pending start is not one)."""
        from flowctrl.controls import Arrow

        return [Arrow(start=s, end=e, strength=strength, easing=easing) for s, e in self.arrows]

    def to_drags(self) -> List[Any]:
        """The finished drag paths as :class:`flowctrl.controls.Drag` (points evenly spaced in time)."""
        from flowctrl.controls import Drag

        return [Drag(points=np.asarray(path, dtype=np.float64)) for path in self.drags]

    def describe(self) -> str:
        """The sketch as a Markdown list, one line per arrow / drag, in pixels of the image."""
        def pt(p: Point) -> str:
            return f"({p[0]:.0f}, {p[1]:.0f})"

        lines = [f"- arrow {i}: {pt(s)} → {pt(e)}" for i, (s, e) in enumerate(self.arrows, 1)]
        lines += [f"- drag {i}: " + " → ".join(pt(p) for p in path) for i, path in enumerate(self.drags, 1)]
        if self.pending is not None:
            lines.append(f"- arrow start at {pt(self.pending)}: click the end")
        if self.path:
            lines.append(f"- drag in progress: {' → '.join(pt(p) for p in self.path)} "
                         "(click the next point; double-click or *finish drag* to end)")
        return "\n".join(lines) if lines else "no arrows or drags yet"


def brush_mask(editor: Any, image_size: Tuple[int, int]) -> Optional[Any]:
    """The region painted in a motion-brush editor as a bool tensor ``(1, H, W)`` at ``image_size``
    (H, W), or None when nothing is painted.

    editor: a gradio ``ImageEditor`` value, ``{"background", "layers": [(h, w, 4) uint8 RGBA],
    "composite"}`` or None; a pixel is painted where any layer's alpha is > 0.
    """
    import torch

    layers = [np.asarray(layer) for layer in ((editor or {}).get("layers") or []) if layer is not None]
    layers = [layer for layer in layers if layer.ndim == 3 and layer.shape[2] == 4]
    if not layers:
        return None
    painted = np.zeros(layers[0].shape[:2], dtype=bool)
    for layer in layers:
        if layer.shape[:2] == painted.shape:
            painted |= layer[..., 3] > 0
    if not painted.any():
        return None
    mask = torch.from_numpy(painted)[None]
    if tuple(mask.shape[-2:]) != tuple(image_size):
        from flowctrl.controls.masks import resize_mask

        mask = resize_mask(mask, tuple(image_size))
    return mask


def camera_spec(preset: Optional[str], parameters: str = "") -> Optional[str]:
    """Dropdown choice + ``"degrees=20, frames=..."`` text → a preset spec for ``load_camera``
    (``"orbit:degrees=20"``), or None for no camera."""
    if not preset or preset == NO_CAMERA:
        return None
    params = ",".join(p.strip() for p in parameters.replace(";", ",").split(",") if p.strip())
    return f"{preset}:{params}" if params else preset


@guard_uploads  # names inside uploads stay in their folder; errors show the user's file names
def build_controls(image_size: Tuple[int, int], sketch: ArrowSketch, *, arrow_strength: float = 1.0,
                   easing: str = "linear", camera: Optional[str] = None, camera_file: Optional[str] = None,
                   arrows_file: Optional[str] = None, drags_file: Optional[str] = None,
                   ref_video: Optional[str] = None, strength: Optional[float] = None,
                   pose_file: Optional[str] = None, mask_file: Optional[str] = None,
                   depth_file: Optional[str] = None, brush: Optional[Any] = None,
                   control_files: Optional[Dict[str, str]] = None) -> Any:
    """:class:`flowctrl.controls.Controls` from the app's inputs, in pixels of ``image_size (H, W)``.

    Clicked arrows / drags and uploaded arrows / drags files add up; an uploaded camera file wins over
    the preset; the painted motion brush ``brush`` (bool ``(1, H, W)``, :func:`brush_mask`) and an
    uploaded mask file add up to one motion mask. ``control_files``: uploaded files of any other local
    control kind by bundle field (``{"pose": path}``, :mod:`flowctrl.controls.registry`). ``strength``:
    target motion strength M_s in px/frame, None or 0 = as the controls say. Bad files raise
    :class:`~flowctrl.errors.ControlFileError` (one line naming file and field).
    """
    from flowctrl.controls import Controls

    files = {"pose": pose_file, **(control_files or {})}
    controls = Controls.from_files(image_size=image_size, arrows=arrows_file, drags=drags_file,
                                   camera=camera_file or camera, ref_video=ref_video, mask=mask_file,
                                   depth=depth_file, strength=strength if strength else None, **files)
    motion_mask = controls.motion_mask
    if brush is not None:
        motion_mask = brush if motion_mask is None else (motion_mask | brush)
    return dataclasses.replace(controls, arrows=sketch.to_arrows(arrow_strength, easing) + list(controls.arrows),
                               drags=sketch.to_drags() + list(controls.drags), motion_mask=motion_mask)


def preview(image: np.ndarray, controls: Any, sketch: ArrowSketch, num_frames: int = 16,
            segment: Any = "auto") -> np.ndarray:
    """``image (H, W, 3)`` uint8 with the controls drawn (arrows, drags, camera inset), the region that
    will move tinted (``segment`` as in generation) and the pending arrow start as a ring →
    ``(H, W, 3)`` uint8 at the same size, so clicks on it are image pixels."""
    import cv2
    import torch

    from flowctrl.flow.viz import draw_controls

    rgb = _as_rgb_uint8(image)
    chw = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
    moving = None
    if controls is not None:
        from flowctrl.pipelines.regions import local_motion_region

        moving = local_motion_region(chw[None], controls, num_frames, segment=segment)
    drawn = draw_controls(chw, controls, num_frames=num_frames, moving=moving)
    out = np.ascontiguousarray((drawn.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8))
    if sketch.pending is not None:
        radius = max(3, round(max(out.shape[:2]) / 96))
        center = tuple(int(round(v)) for v in sketch.pending)
        cv2.circle(out, center, radius + 1, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.circle(out, center, radius, (230, 30, 30), 2, cv2.LINE_AA)
    if sketch.path:  # the open drag path: a dotted polyline with its points as rings
        radius = max(2, round(max(out.shape[:2]) / 128))
        pts = [tuple(int(round(v)) for v in p) for p in sketch.path]
        for p, q in zip(pts, pts[1:]):
            cv2.line(out, p, q, (255, 200, 0), 1, cv2.LINE_AA)
        for p in pts:
            cv2.circle(out, p, radius, (255, 200, 0), 2, cv2.LINE_AA)
    return out


@guard_uploads  # error lines name no server path
def generate(image: np.ndarray, controls: Any, *, frames: int = 49, fps: float = 8.0, fill: str = "push-pull",
             size: Optional[Tuple[int, int]] = None, out_dir: Optional[str] = None,
             callback: Optional[Callable[[str, int, int], None]] = None,
             pipeline: Any = None, prompt: Optional[str] = None, seed: int = 0) -> str:
    """Render the video with the warp backend (or ``pipeline``'s, e.g. guided) and write an mp4; returns its path.

    image: ``(H, W, 3)`` uint8 (or anything :func:`flowctrl.pipelines.flowctrl_pipeline.load_image`
    takes). size: working ``(H, W)``, default the image's with the long side ≤ 512. pipeline: a
    :class:`~flowctrl.pipelines.FlowCtrlPipeline` to render with (default: the warp backend with
    ``fill``, streamed chunk by chunk into the encoder); a learned backend renders the whole clip with
    ``prompt`` and ``seed``. The file appears only complete (written to a temp name, then renamed) in
    ``out_dir`` (default a new temp folder).
    """
    import torch

    from flowctrl.pipelines.flowctrl_pipeline import FlowCtrlPipeline, load_image, resolve_size
    from flowctrl.render.warp_renderer import MAX_FRAMES, check_render_size
    from flowctrl.video_io import VideoWriter

    if not 2 <= int(frames) <= MAX_FRAMES:
        raise InputError.at("frames", None, f"is {frames}", f"give 2 to {MAX_FRAMES} frames")
    if not fps > 0:
        raise InputError.at("fps", None, f"is {fps}", "give a positive frame rate, e.g. 8")
    if controls is None or controls.is_empty():
        raise InputError.at("controls", None, "none given",
                            "click twice on the image to draw an arrow, pick a camera preset, or upload a control file")
    img = load_image(image)
    H, W = resolve_size(tuple(img.shape[-2:]), *(size if size is not None else (None, None)))
    check_render_size(H, W, int(frames), source="image", field="size")
    pipe = pipeline if pipeline is not None else FlowCtrlPipeline(backend="warp", fill=fill)
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="flowctrl-app-"))
    name = str(folder / f"flowctrl-{uuid.uuid4().hex[:12]}.mp4")
    with VideoWriter(name, fps=fps) as writer:  # the file appears only when complete
        if getattr(pipe.backend, "streams", False) and pipe.flow_model is None:
            for chunk in pipe.stream(img, controls=controls, num_frames=int(frames), height=H, width=W,
                                     callback=callback):
                writer.write(chunk)
        else:
            extra = {"prompt": prompt} if prompt else {}
            out = pipe(img, controls=controls, num_frames=int(frames), height=H, width=W,
                       generator=torch.Generator().manual_seed(int(seed)), callback=callback, **extra)
            writer.write(out.frames)
    return name


def prune_outputs(folder: str, max_age_s: float) -> int:
    """Delete the videos :func:`generate` wrote into ``folder`` more than ``max_age_s`` seconds ago
    (and stale temp files of interrupted runs); returns how many were removed. gradio copies every
    result into its own cache when the handler returns, so an app only needs its files for seconds."""
    removed = 0
    now = time.time()
    for entry in Path(folder).glob("*flowctrl-*.mp4*"):
        try:
            if now - entry.stat().st_mtime > max_age_s:
                entry.unlink()
                removed += 1
        except FileNotFoundError:  # another session's prune got it first
            continue
    return removed


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """``(H, W)``, ``(H, W, 3|4)`` uint8 or float in [0, 1] → ``(H, W, 3)`` uint8."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InputError.at("image", None, f"has shape {arr.shape}", "upload an RGB image")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(arr)
