"""Mask images: the "motion brush" (where local motion may act) and the static region.

A mask file is any image Pillow reads (PNG recommended). White (> 50 %) = inside the mask.
An RGBA image whose alpha channel is not constant uses its alpha instead (a brush stroke painted
on a transparent layer).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from flowctrl.controls._common import PathLike, Size, err

__all__ = ["load_mask", "resize_mask", "save_mask"]


def load_mask(path: PathLike, image_size: Optional[Size] = None, what: str = "mask") -> torch.Tensor:
    """Read a mask image as a bool tensor ``(1, H, W)``.

    ``image_size = (H, W)`` resizes it (nearest-style, see :func:`resize_mask`) to that size;
    a mask whose aspect ratio differs from the image by more than 2 % is rejected, since
    stretching it would silently move the brushed region.
    """
    from flowctrl.errors import ControlFileError
    from flowctrl.io_safety import open_image

    path = Path(path)
    # a regular file whose header size is bounded; decoding errors (bombs too) are one line
    with open_image(path, what, ControlFileError) as image:
        image.load()
        if image.mode.startswith(("I", "F")):  # 16-bit / float grayscale: 50 % of the full range
            values = np.asarray(image, dtype=np.float64)
            full = 1.0 if image.mode.startswith("F") else 65535.0
            gray = np.where(values > full / 2, 255, 0).astype(np.uint8)
        elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = np.asarray(image.convert("RGBA"))
            alpha = rgba[..., 3]
            gray = alpha if alpha.min() != alpha.max() else np.asarray(image.convert("L"))
        else:
            gray = np.asarray(image.convert("L"))
    mask = torch.from_numpy(np.ascontiguousarray(gray) > 127).unsqueeze(0)
    if not bool(mask.any()):
        raise err(path, None, f"{what} is empty (no pixel is white)", "paint the region white on black")
    if image_size is not None and tuple(mask.shape[-2:]) != tuple(image_size):
        h, w = mask.shape[-2:]
        H, W = image_size
        if abs((w / h) / (W / H) - 1.0) > 0.02:
            raise err(path, None, f"{what} is {w}x{h}, its aspect ratio differs from the {W}x{H} image",
                      "draw the mask on the input image (same size or same aspect ratio)")
        mask = resize_mask(mask, image_size)
    return mask


def resize_mask(mask: torch.Tensor, size: Size) -> torch.Tensor:
    """Resize a bool mask ``(..., H, W)`` to ``size``; a target pixel is inside when at least half
    of the area it covers is inside (area averaging, threshold 0.5), which keeps thin strokes when
    upsampling and does not grow regions when downsampling."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask.clone()
    lead = mask.shape[:-2]
    x = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    if size[0] >= mask.shape[-2] and size[1] >= mask.shape[-1]:
        y = F.interpolate(x, size=tuple(size), mode="nearest-exact")
    else:
        # exact coverage fraction up to a 1/4-pixel grid: supersample, then average per target pixel
        y = F.adaptive_avg_pool2d(F.interpolate(x, scale_factor=4, mode="nearest"), tuple(size))
    return (y >= 0.5).reshape(*lead, *size)


def save_mask(path: PathLike, mask: torch.Tensor) -> None:
    """Write a bool mask ``(1, H, W)`` or ``(H, W)`` as an 8-bit PNG (255 = inside)."""
    from PIL import Image

    array = mask.reshape(mask.shape[-2:]).cpu().numpy().astype(np.uint8) * 255
    Image.fromarray(array, mode="L").save(path)
