"""The pixel grid every flow computation starts from (pixel ``(i, j)`` centred at ``x = j, y = i``)."""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["pixel_grid"]


def pixel_grid(height: int, width: int, dtype: torch.dtype = torch.float32,
               device: Optional[torch.device] = None) -> torch.Tensor:
    """``(2, H, W)`` pixel coordinates: channel 0 = x (column index), channel 1 = y (row index).

    Unpacks as ``xs, ys = pixel_grid(H, W)``; the same layout as a flow field, so ``grid + flow[:, t]``
    is where each reference pixel lands.
    """
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dtype, device=device),
                            torch.arange(width, dtype=dtype, device=device), indexing="ij")
    return torch.stack([xs, ys])
