"""What the web app does, without the web: arrows sketched by clicks, controls, preview, generation.

Everything here is plain Python on numpy images and files, so it is tested without gradio; the
gradio layout in :mod:`flowctrl.app.ui` only wires these functions to widgets. Coordinates are
pixels of the image the user uploaded (``x`` right, ``y`` down), the same as in control files.
"""
from __future__ import annotations

import dataclasses
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from flowctrl.app.uploads import guard_uploads
from flowctrl.errors import InputError

Point = Tuple[float, float]
NO_CAMERA = "none"


@dataclasses.dataclass(frozen=True)
class ArrowSketch:
    """Arrows drawn by clicking: the first click of a pair sets ``pending`` (the start), the second
    closes the arrow. Immutable: every edit returns a new sketch (safe as per-session UI state)."""

    arrows: Tuple[Tuple[Point, Point], ...] = ()
    pending: Optional[Point] = None

    def click(self, x: float, y: float) -> "ArrowSketch":
        """One click at pixel ``(x, y)``: start an arrow, or end the pending one there."""
        point = (float(x), float(y))
        if self.pending is None:
            return dataclasses.replace(self, pending=point)
        if point == self.pending:  # a double click on one pixel would be a zero-length arrow
            return dataclasses.replace(self, pending=None)
        return ArrowSketch(self.arrows + ((self.pending, point),), None)

    def undo(self) -> "ArrowSketch":
        """Drop the pending start if there is one, else the last arrow."""
        if self.pending is not None:
            return dataclasses.replace(self, pending=None)
        return ArrowSketch(self.arrows[:-1], None)

    def to_arrows(self, strength: float = 1.0, easing: str = "linear") -> List[Any]:
        """The finished arrows as :class:`flowctrl.controls.Arrow` (the pending start is not one)."""
        from flowctrl.controls import Arrow

        return [Arrow(start=s, end=e, strength=strength, easing=easing) for s, e in self.arrows]


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
                   ref_video: Optional[str] = None, strength: Optional[float] = None) -> Any:
    """:class:`flowctrl.controls.Controls` from the app's inputs, in pixels of ``image_size (H, W)``.

    Clicked arrows and an uploaded arrows file add up; an uploaded camera file wins over the preset.
    ``strength``: target motion strength M_s in px/frame, None or 0 = as the controls say.
    Bad files raise :class:`~flowctrl.errors.ControlFileError` (one line naming file and field).
    """
    from flowctrl.controls import Controls

    controls = Controls.from_files(image_size=image_size, arrows=arrows_file, drags=drags_file,
                                   camera=camera_file or camera, ref_video=ref_video,
                                   strength=strength if strength else None)
    return dataclasses.replace(controls, arrows=sketch.to_arrows(arrow_strength, easing) + list(controls.arrows))


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
    return out


@guard_uploads  # error lines name no server path
def generate(image: np.ndarray, controls: Any, *, frames: int = 49, fps: float = 8.0, fill: str = "push-pull",
             size: Optional[Tuple[int, int]] = None, out_dir: Optional[str] = None,
             callback: Optional[Callable[[str, int, int], None]] = None,
             pipeline: Any = None, prompt: Optional[str] = None) -> str:
    """Render the video with the warp backend (or ``pipeline``'s, e.g. guided) and write an mp4; returns its path.

    image: ``(H, W, 3)`` uint8 (or anything :func:`flowctrl.pipelines.flowctrl_pipeline.load_image`
    takes). size: working ``(H, W)``, default the image's with the long side ≤ 512. The file appears
    only complete (written to a temp name, then renamed) in ``out_dir`` (default a new temp folder).
    """
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
    if not getattr(pipe.backend, "streams", False):  # a learned backend renders the whole clip at once
        import torch

        out = pipe(img, controls=controls, num_frames=int(frames), height=H, width=W, callback=callback,
                   generator=torch.Generator().manual_seed(0), **({"prompt": prompt} if prompt else {}))
        with VideoWriter(name, fps=fps) as writer:
            writer.write(out.frames)
        return name
    with VideoWriter(name, fps=fps) as writer:  # the file appears only when complete
        for chunk in pipe.stream(img, controls=controls, num_frames=int(frames), height=H, width=W,
                                 callback=callback):
            writer.write(chunk)
    return name


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
