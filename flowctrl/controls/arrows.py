"""Arrows (seed 004, §3.2): the total motion of one pixel over the clip.

File format (JSON)::

    {"units": "px",                       # or "normalized" (coordinates in [0, 1])
     "arrows": [
        {"start": [250, 210], "end": [300, 120], "strength": 1.0, "easing": "ease-in-out",
         "mask": "arm.png"}               # strength, easing, mask optional
     ]}

A bare list of arrows is accepted too (units px). ``strength`` is M_o of eq. 5: the displacement
actually applied is ``strength * (end - start)``. ``easing`` distributes it over the frames.
``mask`` (a PNG path relative to the JSON file) limits where this arrow's motion may spread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

from flowctrl.controls._common import (
    PathLike, Size, err, expect_list, expect_object, number, number_list, parse_units, read_json,
    reject_unknown, require, rescale_points, resolve_path, to_pixels,
)
from flowctrl.controls.local import LocalControl

__all__ = ["Arrow", "EASINGS", "ease", "load_arrows", "parse_arrows"]

EASINGS = ("linear", "ease-in-out")
ARROW_FIELDS = ("start", "end", "strength", "easing", "mask")
EXAMPLE = '{"start": [x, y], "end": [x, y]}'
MAX_ARROW_STRENGTH = 100.0  # a multiplier of the arrow's displacement; beyond this the flow leaves any image


def ease(progress: torch.Tensor, easing: str = "linear") -> torch.Tensor:
    """Map linear progress in [0, 1] to eased progress in [0, 1] (0 -> 0, 1 -> 1).

    ``ease-in-out`` is the raised cosine ``(1 - cos(pi * u)) / 2``: zero speed at both ends,
    speed pi/2 times the linear one in the middle.
    """
    if easing == "linear":
        return progress
    if easing == "ease-in-out":
        return 0.5 * (1.0 - torch.cos(math.pi * progress))
    raise ValueError(f"unknown easing {easing!r}; use one of {EASINGS}")


def frame_progress(num_frames: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(T,)`` linear progress ``t / (T - 1)`` of each frame (frame 0 = 0, last frame = 1)."""
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    return torch.arange(num_frames, dtype=torch.float64).div(num_frames - 1).to(dtype)


@dataclass
class Arrow:
    """One arrow in pixels of the input image.

    start, end: ``(x, y)`` pixels (pixel ``(i, j)`` centred at ``x=j, y=i``).
    strength: M_o, scales the displacement ``end - start`` (0 = no motion, 2 = twice as far).
    easing: ``"linear"`` or ``"ease-in-out"``.
    mask: optional bool tensor ``(1, H, W)`` at the image size: where this arrow's motion may act.
    """

    start: Tuple[float, float]
    end: Tuple[float, float]
    strength: float = 1.0
    easing: str = "linear"
    mask: Optional[torch.Tensor] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.start = (float(self.start[0]), float(self.start[1]))
        self.end = (float(self.end[0]), float(self.end[1]))
        self.strength = float(self.strength)
        if not all(math.isfinite(v) for v in (*self.start, *self.end, self.strength)):
            raise ValueError("Arrow start, end and strength must be finite")
        if self.easing not in EASINGS:
            raise ValueError(f"unknown easing {self.easing!r}; use one of {EASINGS}")
        if self.mask is not None and (self.mask.dim() != 3 or self.mask.shape[0] != 1):
            raise ValueError(f"Arrow.mask must be (1, H, W), got {tuple(self.mask.shape)}")

    @property
    def displacement(self) -> Tuple[float, float]:
        """Total displacement ``strength * (end - start)`` in pixels, (dx, dy)."""
        return (self.strength * (self.end[0] - self.start[0]), self.strength * (self.end[1] - self.start[1]))

    def track(self, num_frames: int) -> torch.Tensor:
        """Displacement of the start pixel at each frame, ``(T, 2)`` float32 pixels (dx, dy).

        Frame 0 is exactly 0 and frame ``T - 1`` exactly ``strength * (end - start)``.
        """
        progress = ease(frame_progress(num_frames, torch.float64), self.easing)
        total = torch.tensor(self.displacement, dtype=torch.float64)
        return (progress[:, None] * total[None, :]).float()

    def resized(self, old_size: Size, new_size: Size) -> "Arrow":
        """The same arrow on an image resized from ``old_size`` to ``new_size`` (H, W)."""
        from flowctrl.controls.masks import resize_mask

        points = rescale_points(np.array([self.start, self.end]), old_size, new_size)
        mask = None if self.mask is None else resize_mask(self.mask, new_size)
        return replace(self, start=tuple(points[0]), end=tuple(points[1]), mask=mask)


def parse_arrows(data: Any, source: Any = "arrows", image_size: Optional[Size] = None,
                 base_dir: Optional[Path] = None) -> List[Arrow]:
    """Validate parsed arrows JSON (object with ``arrows`` or a bare list) into :class:`Arrow` s.

    Coordinates are converted to pixels of ``image_size`` (required for normalized units) and must
    lie on the image. Mask paths are resolved against ``base_dir``.
    """
    from flowctrl.controls.masks import load_mask

    if isinstance(data, list):
        units, items, prefix = "px", data, "arrows"
    else:
        obj = expect_object(data, source, "(top level)", '{"units": "px", "arrows": [...]}')
        reject_unknown(obj, ("units", "arrows"), source, "")
        units = parse_units(obj, source)
        items = require(obj, "arrows", source, "", f'"arrows": [{EXAMPLE}]')
        prefix = "arrows"
    items = expect_list(items, source, prefix, f"[{EXAMPLE}]", min_len=1)
    arrows = []
    for i, item in enumerate(items):
        where = f"{prefix}[{i}]"
        item = expect_object(item, source, where, EXAMPLE)
        reject_unknown(item, ARROW_FIELDS, source, where)
        start = number_list(require(item, "start", source, where, "[x, y]"), source, f"{where}.start", 2)
        end = number_list(require(item, "end", source, where, "[x, y]"), source, f"{where}.end", 2)
        start = to_pixels(start, units, image_size, source, f"{where}.start")
        end = to_pixels(end, units, image_size, source, f"{where}.end")
        strength = number(item.get("strength", 1.0), source, f"{where}.strength", low=0.0, high=MAX_ARROW_STRENGTH)
        easing = item.get("easing", "linear")
        if easing not in EASINGS:
            raise err(source, f"{where}.easing", f"is {easing!r}", f"use one of {', '.join(EASINGS)}")
        mask = None
        if item.get("mask") is not None:
            mask_path = resolve_path(item["mask"], base_dir, source, f"{where}.mask")
            if not mask_path.exists():
                raise err(source, f"{where}.mask", f"{item['mask']!r} does not exist (resolved to {mask_path})",
                          "mask paths are relative to the arrows file")
            mask = load_mask(mask_path, image_size, what=f"{where}.mask")
        arrows.append(Arrow(start=start, end=end, strength=strength, easing=easing, mask=mask))
    return arrows


def load_arrows(path: PathLike, image_size: Optional[Size] = None) -> List[Arrow]:
    """Read an arrows JSON file (format in the module docstring) into pixel-unit :class:`Arrow` s."""
    path = Path(path)
    return parse_arrows(read_json(path, "arrows"), path, image_size, path.parent)


def arrows_to_json(arrows: Sequence[Arrow]) -> dict:
    """The JSON object (pixel units) that :func:`parse_arrows` reads back to ``arrows``; masks are dropped."""
    return {"units": "px", "arrows": [
        {"start": list(a.start), "end": list(a.end), "strength": a.strength, "easing": a.easing} for a in arrows]}


class ArrowControl(LocalControl):
    """Arrows as a local control kind (``Controls.arrows``): one track per arrow, its mask its region."""

    many = True
    label = "arrow"

    def parse(self, value: Any, source: Any, image_size: Optional[Size], base_dir: Optional[Path]) -> List[Arrow]:
        return parse_arrows(value, source, image_size, base_dir)

    def load(self, path: Path, image_size: Optional[Size]) -> List[Arrow]:
        return load_arrows(path, image_size)

    def tracks(self, item: Arrow, num_frames: int) -> Tuple[torch.Tensor, torch.Tensor, None]:
        track = torch.as_tensor(item.track(num_frames), dtype=torch.float32)
        return track[None], torch.tensor(item.start, dtype=torch.float32)[None], None

    def region(self, item: Arrow, height: int, width: int) -> Optional[dict]:
        return None if item.mask is None else {"region": torch.as_tensor(item.mask).bool(), "sigma": None}

    def anchor(self, item: Arrow) -> Tuple[float, float]:
        return item.start

    def own_mask(self, item: Arrow) -> Optional[torch.Tensor]:
        return item.mask

    def draw(self, canvas: np.ndarray, item: Arrow, thick: int, num_frames: int) -> None:
        """Red arrow with a white halo (visible on any colour), strength applied."""
        import cv2

        track = torch.as_tensor(item.track(num_frames), dtype=torch.float64)
        s = torch.as_tensor(item.start, dtype=torch.float64)
        e = s + track[-1]
        a0 = (int(round(float(s[0]))), int(round(float(s[1]))))
        a1 = (int(round(float(e[0]))), int(round(float(e[1]))))
        cv2.arrowedLine(canvas, a0, a1, (255, 255, 255), thick + 2, cv2.LINE_AA, tipLength=0.2)
        cv2.arrowedLine(canvas, a0, a1, (230, 30, 30), thick, cv2.LINE_AA, tipLength=0.2)


CONTROL = ArrowControl()
