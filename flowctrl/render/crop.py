"""Crop camera moves to the area that stays valid (``--crop-valid``).

A camera move uncovers content the reference image never saw (a pan's entering strip, an orbit's
sides); any fill there is invented. :func:`valid_crop` finds the largest rectangle with the image's
aspect ratio that every frame covers, and :func:`zoom_flow` re-targets the flow so each frame shows
only that rectangle, scaled up to the full size. The zoom is part of the flow, so the renderer still
samples the reference image once per frame (no resampling of a rendered frame).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import torch

from flowctrl.flow.grid import pixel_grid

GRID_CELLS = 64  # coverage grid along the longer side
MAX_ZOOM = 2.5


def coverage_grid(flow: torch.Tensor, valid: Optional[torch.Tensor], cells: int = GRID_CELLS) -> torch.Tensor:
    """Cells of a coarse grid over the frame that every frame covers: ``(gh, gw)`` bool.

    Args:
        flow: ``(1, T, 2, H, W)`` pixels; valid: ``(1, T, 1, H, W)`` bool or None (all valid).
    """
    _, T, _, H, W = flow.shape
    cells = max(1, min(cells, max(H, W) // 4))  # cells of >= 4 px: every covered cell receives a source
    gw = cells if W >= H else max(1, round(cells * W / H))
    gh = cells if H >= W else max(1, round(cells * H / W))
    xs, ys = pixel_grid(H, W, dtype=flow.dtype)
    every = torch.ones(gh * gw, dtype=torch.bool)
    for t in range(T):
        tx = xs + flow[0, t, 0]
        ty = ys + flow[0, t, 1]
        ok = (tx > -0.5) & (tx < W - 0.5) & (ty > -0.5) & (ty < H - 0.5)
        if valid is not None:
            ok &= valid[0, t, 0].bool()
        cx = ((tx[ok] + 0.5) * gw / W).long().clamp(0, gw - 1)
        cy = ((ty[ok] + 0.5) * gh / H).long().clamp(0, gh - 1)
        hit = torch.zeros(gh * gw, dtype=torch.bool)
        hit[cy * gw + cx] = True
        every &= hit
    return every.reshape(gh, gw)


def largest_aspect_rect(mask: torch.Tensor) -> Optional[Tuple[int, int, int, int]]:
    """The largest all-True rectangle of ``mask (gh, gw)`` with the grid's own aspect ratio, nearest the
    centre among the largest: ``(row, col, height, width)`` in cells, or None when no cell is True."""
    gh, gw = mask.shape
    sat = torch.zeros(gh + 1, gw + 1, dtype=torch.int64)
    sat[1:, 1:] = mask.to(torch.int64).cumsum(0).cumsum(1)
    best = None
    for h in range(gh, 0, -1):
        w = max(1, round(h * gw / gh))
        if w > gw:
            continue
        full = sat[h:, w:] - sat[:-h, w:] - sat[h:, :-w] + sat[:-h, :-w]  # (gh-h+1, gw-w+1) sums
        rows, cols = torch.nonzero(full == h * w, as_tuple=True)
        if rows.numel():
            d = (rows.float() + h / 2 - gh / 2) ** 2 + (cols.float() + w / 2 - gw / 2) ** 2
            k = int(d.argmin())
            best = (int(rows[k]), int(cols[k]), h, w)
            break
    return best


def valid_crop(flow: torch.Tensor, valid: Optional[torch.Tensor] = None, max_zoom: float = MAX_ZOOM,
               cells: int = GRID_CELLS) -> Tuple[float, float, float]:
    """The crop every frame covers: ``(x0, y0, zoom)``, top-left corner in pixels and the scale factor.

    The rectangle is shrunk by one grid cell on each side (cells at its border may be partly
    uncovered). A zoom above ``max_zoom`` is capped (about the rectangle's centre) with a warning.
    """
    _, _, _, H, W = flow.shape
    mask = coverage_grid(flow, valid, cells)
    gh, gw = mask.shape
    rect = largest_aspect_rect(mask)
    if rect is None:
        warnings.warn(f"crop to the valid area: no area stays visible in every frame; zooming {max_zoom:g}x on "
                      "the centre", stacklevel=2)
        return (W - W / max_zoom) / 2, (H - H / max_zoom) / 2, max_zoom
    r, c, h, w = rect
    if h < gh:  # an inner crop: keep one cell away from the uncovered border
        r, c, h, w = r + 1, c + 1, max(1, h - 2), max(1, w - 2)
    cell_y, cell_x = H / gh, W / gw
    width = w * cell_x
    zoom = W / width
    cx, cy = (c + w / 2) * cell_x, (r + h / 2) * cell_y
    if zoom > max_zoom:
        warnings.warn(f"crop to the valid area: the move needs a {zoom:.1f}x zoom to stay inside the image; "
                      f"capped at {max_zoom:g}x, some uncovered area remains", stacklevel=2)
        zoom = max_zoom
    if h >= gh:
        zoom = 1.0
    x0 = min(max(cx - W / zoom / 2, 0.0), W - W / zoom)
    y0 = min(max(cy - H / zoom / 2, 0.0), H - H / zoom)
    return float(x0), float(y0), float(zoom)


def zoom_flow(flow: torch.Tensor, x0: float, y0: float, zoom: float) -> torch.Tensor:
    """Flow to the crop ``[x0, x0 + W/zoom] x [y0, y0 + H/zoom]`` scaled to the full frame.

    A reference pixel ``p`` that lands at ``q = p + F(p)`` lands at ``q' = (q - x0 + 0.5)·zoom - 0.5`` in
    the cropped frame (pixel centres at integers); returns ``q' - p`` ``(1, T, 2, H, W)``. Frame 0 is no
    longer the identity: it is the crop of the reference image.
    """
    _, _, _, H, W = flow.shape
    if zoom == 1.0 and x0 == 0.0 and y0 == 0.0:
        return flow
    xs, ys = pixel_grid(H, W, dtype=flow.dtype)
    out = torch.empty_like(flow)
    out[:, :, 0] = (xs + flow[:, :, 0] - x0 + 0.5) * zoom - 0.5 - xs
    out[:, :, 1] = (ys + flow[:, :, 1] - y0 + 0.5) * zoom - 0.5 - ys
    return out


def crop_to_valid(flow: torch.Tensor, valid: Optional[torch.Tensor] = None,
                  max_zoom: float = MAX_ZOOM) -> Tuple[torch.Tensor, Tuple[float, float, float]]:
    """:func:`valid_crop` then :func:`zoom_flow`: the cropped flow and ``(x0, y0, zoom)``."""
    x0, y0, zoom = valid_crop(flow, valid, max_zoom)
    if not math.isfinite(zoom) or zoom <= 0:
        return flow, (0.0, 0.0, 1.0)
    return zoom_flow(flow, x0, y0, zoom), (x0, y0, zoom)
