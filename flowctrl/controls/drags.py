"""Drags: multi-point trajectories of one pixel, resampled to T frames by a monotone cubic (PCHIP).

JSON format::

    {"units": "px",                        # or "normalized"
     "drags": [
        {"points": [[120, 300], [160, 280], [220, 290]], "radius": 20,
         "times": [0.0, 0.4, 1.0]}          # radius, times optional
     ]}

``points[0]`` is where the dragged pixel is in the reference image; the drag passes through every
point, ``points[k]`` at clip time ``times[k]`` (0 = first frame, 1 = last frame; evenly spaced when
omitted). ``radius`` (pixels of the image, same units as the points) is how far the drag's motion
spreads; omitted = the densifier's default.

Tora / MotionCtrl text format (``.txt``): one ``x, y`` pair per line (commas or spaces), pixels,
read as one drag with evenly spaced times; ``#`` starts a comment.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

from flowctrl.controls._common import (
    PathLike, Size, err, expect_list, expect_object, number, number_list, parse_units, read_json,
    read_text, reject_unknown, require, rescale_points, to_pixels,
)
from flowctrl.controls.local import LocalControl

__all__ = ["Drag", "load_drags", "parse_drags", "parse_drag_txt"]

DRAG_FIELDS = ("points", "radius", "times")
EXAMPLE = '{"points": [[x0, y0], [x1, y1], ...], "radius": 20}'


def pchip(knots: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Monotone piecewise-cubic Hermite interpolation (Fritsch–Carlson, as SciPy's PCHIP).

    knots ``(P,)`` strictly increasing, values ``(P, D)``, query ``(Q,)`` -> ``(Q, D)``. Two knots
    give the straight line. Exact at the knots and never overshoots between them.
    """
    from scipy.interpolate import PchipInterpolator

    if len(knots) == 2:
        w = (query - knots[0]) / (knots[1] - knots[0])
        return values[0][None] + w[:, None] * (values[1] - values[0])[None]
    # near-flat segments (slopes ~1e-308) overflow inside SciPy's harmonic mean; the result is the
    # correct zero derivative, so the warning is noise
    with np.errstate(over="ignore", divide="ignore"):
        return PchipInterpolator(knots, values, axis=0, extrapolate=True)(query)


@dataclass
class Drag:
    """A dragged pixel's path in pixels of the input image.

    points: ``(P, 2)`` float64 ``(x, y)`` pixels, P >= 2, ``points[0]`` = position in the reference.
    radius: spread of the drag's motion in pixels, or None for the densifier's default.
    times: ``(P,)`` clip times in [0, 1] of the points (strictly increasing, first 0, last 1), or
        None = evenly spaced.
    """

    points: np.ndarray
    radius: Optional[float] = None
    times: Optional[np.ndarray] = field(default=None)

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
        if len(self.points) < 2:
            raise ValueError("a Drag needs at least 2 points")
        if not np.isfinite(self.points).all():
            raise ValueError("Drag.points must be finite")
        if self.radius is not None:
            self.radius = float(self.radius)
            if not (math.isfinite(self.radius) and self.radius > 0):
                raise ValueError("Drag.radius must be > 0")
        if self.times is not None:
            self.times = np.asarray(self.times, dtype=np.float64).reshape(-1)
            t = self.times
            if len(t) != len(self.points) or t[0] != 0.0 or t[-1] != 1.0 or not (np.diff(t) > 0).all():
                raise ValueError("Drag.times must rise strictly from 0 to 1, one per point")

    @property
    def start(self) -> tuple:
        """``(x, y)`` of the dragged pixel in the reference image."""
        return float(self.points[0, 0]), float(self.points[0, 1])

    def knot_times(self) -> np.ndarray:
        return self.times if self.times is not None else np.linspace(0.0, 1.0, len(self.points))

    def positions(self, num_frames: int) -> np.ndarray:
        """``(T, 2)`` float64 position of the dragged pixel at each frame (PCHIP through the points)."""
        if num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {num_frames}")
        query = np.arange(num_frames, dtype=np.float64) / (num_frames - 1)
        out = pchip(self.knot_times(), self.points, query)
        out[0] = self.points[0]
        out[-1] = self.points[-1]
        return out

    def track(self, num_frames: int) -> torch.Tensor:
        """Displacement from ``points[0]`` at each frame, ``(T, 2)`` float32 pixels; frame 0 = 0."""
        positions = self.positions(num_frames)
        return torch.from_numpy(positions - self.points[0][None]).float()

    def resized(self, old_size: Size, new_size: Size) -> "Drag":
        """The same drag on an image resized from ``old_size`` to ``new_size`` (H, W)."""
        scale = math.sqrt((new_size[0] / old_size[0]) * (new_size[1] / old_size[1]))
        return replace(self, points=rescale_points(self.points, old_size, new_size),
                       radius=None if self.radius is None else self.radius * scale,
                       times=None if self.times is None else self.times.copy())


def _parse_one(item: Any, units: str, image_size: Optional[Size], source: Any, where: str) -> Drag:
    item = expect_object(item, source, where, EXAMPLE)
    reject_unknown(item, DRAG_FIELDS, source, where)
    raw = expect_list(require(item, "points", source, where, "[[x0, y0], [x1, y1]]"), source,
                      f"{where}.points", "[[x0, y0], [x1, y1], ...]", min_len=2)
    points = [to_pixels(number_list(p, source, f"{where}.points[{k}]", 2), units, image_size, source,
                        f"{where}.points[{k}]") for k, p in enumerate(raw)]
    radius = item.get("radius")
    if radius is not None:
        radius = number(radius, source, f"{where}.radius", low=0.0, low_open=True,
                        high=MAX_RADIUS_NORMALIZED if units == "normalized" else MAX_RADIUS_PX)
        if units == "normalized":
            if image_size is None:
                raise err(source, f"{where}.radius", "normalized units need the image size", "pass image_size=(H, W)")
            radius *= math.sqrt(image_size[0] * image_size[1])
    times = item.get("times")
    if times is not None:
        times = number_list(times, source, f"{where}.times", len(points), "one time in [0, 1] per point", low=0.0, high=1.0)
        if times[0] != 0.0 or times[-1] != 1.0 or any(b <= a for a, b in zip(times, times[1:])):
            raise err(source, f"{where}.times", f"is {times}", "times must rise strictly from 0 (first point) to 1 (last)")
    return Drag(points=np.array(points), radius=radius, times=None if times is None else np.array(times))


def parse_drags(data: Any, source: Any = "drags", image_size: Optional[Size] = None) -> List[Drag]:
    """Validate parsed drags JSON (object with ``drags``, a bare list, or one drag object)."""
    if isinstance(data, list):
        units, items = "px", data
    else:
        obj = expect_object(data, source, "(top level)", '{"units": "px", "drags": [...]}')
        if "points" in obj:  # a single drag object
            units = "px"
            return [_parse_one(obj, units, image_size, source, "(top level)")]
        reject_unknown(obj, ("units", "drags"), source, "")
        units = parse_units(obj, source)
        items = require(obj, "drags", source, "", f'"drags": [{EXAMPLE}]')
    items = expect_list(items, source, "drags", f"[{EXAMPLE}]", min_len=1)
    return [_parse_one(item, units, image_size, source, f"drags[{i}]") for i, item in enumerate(items)]


MAX_RADIUS_PX = 1e4         # a drag's Gaussian radius in pixels (a 10000 px radius already covers any image)
MAX_RADIUS_NORMALIZED = 10.0


_PAIR = re.compile(r"^\s*([^\s,;]+)\s*[,;\s]\s*([^\s,;]+)\s*$")


def parse_drag_txt(text: str, source: Any = "drag.txt", image_size: Optional[Size] = None) -> List[Drag]:
    """One drag from Tora/MotionCtrl-style text: one ``x, y`` pixel pair per line."""
    points = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PAIR.match(line.strip("[]() "))
        where = f"line {lineno}"
        if not match:
            raise err(source, where, f"{line[:40]!r} is not an 'x, y' pair", "write one 'x, y' pair per line")
        xy = []
        for token in match.groups():
            try:
                xy.append(number(float(token), source, where))
            except ValueError:
                raise err(source, where, f"{token[:20]!r} is not a number", "write one 'x, y' pair per line") from None
        points.append(to_pixels(xy, "px", image_size, source, where))
    if len(points) < 2:
        raise err(source, None, f"has {len(points)} points, a drag needs at least 2", "write one 'x, y' pair per line")
    return [Drag(points=np.array(points))]


def load_drags(path: PathLike, image_size: Optional[Size] = None) -> List[Drag]:
    """Read drags from a ``.json`` file or a Tora/MotionCtrl ``.txt`` file (pixel-unit :class:`Drag` s)."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        return parse_drag_txt(read_text(path, "drag"), path, image_size)
    return parse_drags(read_json(path, "drags"), path, image_size)


def drags_to_json(drags: Sequence[Drag]) -> dict:
    """The JSON object (pixel units) that :func:`parse_drags` reads back to ``drags``."""
    out = []
    for d in drags:
        item: dict = {"points": d.points.tolist()}
        if d.radius is not None:
            item["radius"] = d.radius
        if d.times is not None:
            item["times"] = d.times.tolist()
        out.append(item)
    return {"units": "px", "drags": out}


class DragControl(LocalControl):
    """Drags as a local control kind (``Controls.drags``): one track per drag; a drag with a radius
    moves only the disc of that radius, fading to the densifier's threshold at its edge."""

    many = True
    label = "drag"

    def parse(self, value: Any, source: Any, image_size: Optional[Size], base_dir: Optional[Path]) -> List[Drag]:
        return parse_drags(value, source, image_size)

    def load(self, path: Path, image_size: Optional[Size]) -> List[Drag]:
        return load_drags(path, image_size)

    def tracks(self, item: Drag, num_frames: int) -> Tuple[torch.Tensor, torch.Tensor, None]:
        return item.track(num_frames)[None], torch.tensor(item.start, dtype=torch.float32)[None], None

    def region(self, item: Drag, height: int, width: int) -> Optional[dict]:
        if item.radius is None:
            return None
        from flowctrl.flow.densify import THRESHOLD_R
        from flowctrl.flow.grid import pixel_grid

        xs, ys = pixel_grid(height, width)
        disc = ((xs - item.start[0]) ** 2 + (ys - item.start[1]) ** 2 <= item.radius ** 2)[None]
        # the drag's motion fades to R (eq. 7) at its radius: sigma = radius / sqrt(ln(1/R))
        return {"sigma": item.radius / math.sqrt(math.log(1.0 / THRESHOLD_R)), "radius": item.radius, "region": disc}

    def anchor(self, item: Drag) -> np.ndarray:
        return item.points[0]

    def draw(self, canvas: np.ndarray, item: Drag, thick: int, num_frames: int) -> None:
        """Blue polyline through the points with a dot on each."""
        import cv2

        pts = np.round(np.asarray(item.points, np.float64)).astype(np.int32).reshape(-1, 2)
        cv2.polylines(canvas, [pts], False, (30, 90, 230), thick, cv2.LINE_AA)
        for p in pts:
            cv2.circle(canvas, tuple(int(v) for v in p), thick + 1, (30, 90, 230), -1, cv2.LINE_AA)


CONTROL = DragControl()
