"""The interface of one kind of *local* control (arrows, drags, pose, ...): what stage 1, the preview,
bundles, the CLI and the app need from it. Kept free of torch so the CLI can list the kinds cheaply.

A kind is one module that defines ``CONTROL = MyControl()`` (a :class:`LocalControl` subclass) and
one :func:`flowctrl.controls.registry.register` line (docs/CONTRACTS.md, "How to add a control").
Items of a kind are plain objects in pixels of the input image with a method
``item.resized(old_size, new_size) -> item`` (sizes ``(H, W)``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

__all__ = ["LocalControl"]


class LocalControl:
    """How one kind of local control is read, rescaled, turned into point tracks and drawn.

    ``many``: the bundle field holds a list of items (``Controls.arrows``) rather than one item or
    None (``Controls.pose``). ``label``: one item's name in warnings (``"arrow 0"``).
    Subclasses override :meth:`parse` and :meth:`tracks`; the rest have working defaults.
    """

    many: bool = True
    label: str = "control"

    # ------------------------------------------------------------------ reading
    def parse(self, value: Any, source: Any, image_size: Optional[Tuple[int, int]],
              base_dir: Optional[Path]) -> Any:
        """A parsed JSON value (inline in a bundle, or a file's content) → a list of items (``many``)
        or one item, in pixels of ``image_size (H, W)``. Bad values raise ``ControlFileError``
        (``flowctrl.controls._common.err``) naming ``source`` and the field."""
        raise NotImplementedError(f"{type(self).__name__}.parse")

    def load(self, path: Path, image_size: Optional[Tuple[int, int]]) -> Any:
        """Read a control file: by default JSON, parsed by :meth:`parse` with paths relative to the file."""
        from flowctrl.controls._common import read_json

        path = Path(path)
        return self.parse(read_json(path, self.label), path, image_size, path.parent)

    # ------------------------------------------------------------------ geometry
    def resized(self, item: Any, old_size: Tuple[int, int], new_size: Tuple[int, int]) -> Any:
        """``item`` on an image resized from ``old_size`` to ``new_size`` (H, W)."""
        return item.resized(old_size, new_size)

    def tracks(self, item: Any, num_frames: int) -> Tuple[Any, Any, Any]:
        """Point tracks of one item: ``tracks (N, T, 2)`` float32 displacement in pixels (frame 0 = 0),
        ``starts (N, 2)`` float32 reference-frame positions ``(x, y)`` and ``valid (N, T)`` bool or
        None (all valid)."""
        raise NotImplementedError(f"{type(self).__name__}.tracks")

    def region(self, item: Any, height: int, width: int) -> Optional[dict]:
        """The item's own region, or None when it has none (it then spreads by densification, or
        over the object under it when segmentation is on). A dict with ``"region"`` bool
        ``(1, H, W)`` (or ``(H, W)``) and optional ``"sigma"`` / ``"radius"`` in pixels for its densification."""
        return None

    def seeds(self, tracks: Any, starts: Any, valid: Any) -> Any:
        """``(S, 2)`` points whose object the item moves when segmentation is on: its start points."""
        return starts

    def anchor(self, item: Any) -> Optional[Sequence[float]]:
        """``(x, y)`` checked against the motion brush (a warning when it lies outside), or None."""
        return None

    def own_mask(self, item: Any) -> Any:
        """A mask ``(1, H, W)`` the item's :meth:`anchor` must lie in (warned otherwise), or None."""
        return None

    # ------------------------------------------------------------------ preview
    def draw(self, canvas: Any, item: Any, thick: int, num_frames: int) -> None:
        """Draw ``item`` in place on ``canvas`` ``(H, W, 3)`` uint8 RGB (OpenCV), lines ``thick`` px.

        Default: every track as a line from its start to where it ends, with a dot at the start.
        """
        import cv2

        tracks, starts, _ = self.tracks(item, num_frames)
        for track, start in zip(tracks, starts):
            s = (int(round(float(start[0]))), int(round(float(start[1]))))
            e = (int(round(float(start[0] + track[-1, 0]))), int(round(float(start[1] + track[-1, 1]))))
            cv2.line(canvas, s, e, (200, 60, 200), thick, cv2.LINE_AA)
            cv2.circle(canvas, s, thick + 1, (200, 60, 200), -1, cv2.LINE_AA)
