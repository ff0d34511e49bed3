"""Bilinear sampling used by the flow math: :func:`flowctrl.flow.warp.backward_warp` when available."""
from __future__ import annotations

import torch
import torch.nn.functional as F_nn
from flowctrl.flow.grid import pixel_grid


def _grid_sample_warp(x: torch.Tensor, flow: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
    n, _, h, w = x.shape
    xs, ys = pixel_grid(h, w, dtype=flow.dtype, device=flow.device)
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    pad = {"zeros": "zeros", "border": "border"}[padding]
    return F_nn.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=pad, align_corners=True)


def backward_warp(x: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear", padding: str = "border") -> torch.Tensor:
    """``out(p) = x(p + flow(p))``; x ``(N, C, H, W)``, flow ``(N, 2, H, W)`` in pixels.

    Delegates to the kernels area's dispatcher (:mod:`flowctrl.flow.warp`); falls back to
    ``grid_sample`` with identical semantics (pixel centres at integer coordinates) if that module
    cannot be imported (for example a partial checkout).
    """
    try:
        from flowctrl.flow.warp import backward_warp as _bw
    except ImportError:  # pragma: no cover - only without flowctrl_cuda
        return _grid_sample_warp(x, flow, mode, padding)
    return _bw(x, flow, mode=mode, padding=padding)
