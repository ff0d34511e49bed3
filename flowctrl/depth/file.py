"""Depth from a file: 16-bit PNG, ``.npy``, or a disparity map with a scale.

* ``kind="depth"``: ``depth = value · scale``. For 16-bit PNGs the default scale is 1/1000 (the
  common millimetre convention); for ``.npy`` / float images it is 1.
* ``kind="disparity"``: ``depth = scale / value`` (``scale = f · B``: focal length in pixels of the
  file times the baseline, so depth comes out in baseline units). Disparity 0 is invalid.

Invalid pixels (≤ 0, NaN, inf) are filled from the nearest valid pixel; a file with fewer than 1% valid
pixels is rejected. The map is resized to the working size (bilinear on inverse depth for smooth
interpolation that keeps depth edges from bulging towards the camera).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F_nn

from flowctrl.errors import ControlFileError

PathLike = Union[str, "os.PathLike[str]"]
DEPTH_KINDS = ("depth", "disparity")
PNG16_DEFAULT_SCALE = 1.0 / 1000.0
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".exr", ".pfm")


def read_depth_array(path: PathLike) -> Tuple[np.ndarray, bool]:
    """Raw ``(H, W)`` float64 values of a depth / disparity file and whether it was a 16-bit image."""
    from flowctrl.io_safety import MAX_IMAGE_PIXELS, check_regular, open_image

    path = check_regular(path, "depth", ControlFileError, missing="depth file not found")
    suffix = path.suffix.lower()
    if suffix in (".png", ".tif", ".tiff"):
        try:
            with open_image(path, "depth", ControlFileError):
                pass  # the header's size is within MAX_IMAGE_PIXELS (OpenCV decodes it below)
        except ControlFileError as error:
            if "cannot be read" not in str(error):  # too large: refuse; unidentified: OpenCV says so below
                raise
    if suffix == ".npy":
        try:
            header = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header only
            if header.size > MAX_IMAGE_PIXELS:
                raise ControlFileError.at(path, "depth", f"holds {header.size} values, above the limit of "
                                          f"{MAX_IMAGE_PIXELS}", "give an (H, W) map of at most 8192x8192")
            del header
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise ControlFileError.at(path, "depth", f"unreadable .npy ({type(exc).__name__})", "save a float array with numpy.save") from exc
        arr = np.squeeze(np.asarray(arr))
        is16 = False
    elif suffix in IMAGE_SUFFIXES:
        import cv2

        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
        if arr is None:
            raise ControlFileError.at(path, "depth", "unreadable image", "give a 16-bit PNG, .pfm/.exr or .npy")
        is16 = arr.dtype == np.uint16
        if arr.ndim == 3:
            arr = arr[..., 0]
    else:
        raise ControlFileError.at(path, "depth", f"unsupported depth format {suffix or '(none)'}", "give a 16-bit PNG or .npy")
    if arr.ndim != 2:
        raise ControlFileError.at(path, "depth", f"has shape {arr.shape}", "give a single-channel (H, W) map")
    return arr.astype(np.float64), is16


def _fill_invalid(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    if valid.all():
        return values
    from scipy.ndimage import distance_transform_edt

    _, (iy, ix) = distance_transform_edt(~valid, return_indices=True)
    return values[iy, ix]


def depth_from_values(values: np.ndarray, kind: str = "depth", scale: float = 1.0,
                      size: Optional[Tuple[int, int]] = None, source: object = "depth") -> torch.Tensor:
    """Turn raw depth / disparity values into z-depth ``(1, 1, H, W)`` at ``size`` (H, W)."""
    if kind not in DEPTH_KINDS:
        raise ControlFileError.at(source, "depth kind", f"unknown kind {kind!r}", f"use one of {DEPTH_KINDS}")
    if not (np.isfinite(scale) and scale > 0):
        raise ControlFileError.at(source, "depth scale", f"is {scale}", "give a positive scale")
    values = np.asarray(values, np.float64)
    valid = np.isfinite(values) & (values > 0)
    if valid.mean() < 0.01:
        raise ControlFileError.at(source, "depth", "fewer than 1% of the pixels hold a positive finite value",
                                  "check the file and --depth-kind (depth or disparity)")
    inv = np.where(valid, values / scale if kind == "disparity" else 1.0 / (values * scale), 0.0)
    inv = _fill_invalid(inv, valid)  # inverse depth
    t = torch.from_numpy(inv).to(torch.float32)[None, None]
    if size is not None and tuple(t.shape[-2:]) != tuple(size):
        t = F_nn.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return 1.0 / t.clamp_min(1e-12)


def load_depth_file(path: PathLike, size: Optional[Tuple[int, int]] = None, kind: str = "depth",
                    scale: Optional[float] = None) -> torch.Tensor:
    """Read a depth / disparity file → z-depth ``(1, 1, H, W)`` float32 resized to ``size`` (H, W)."""
    values, is16 = read_depth_array(path)
    if scale is None:
        scale = PNG16_DEFAULT_SCALE if (is16 and kind == "depth") else 1.0
    return depth_from_values(values, kind=kind, scale=float(scale), size=size, source=path)


def save_depth_png16(path: PathLike, depth: torch.Tensor, scale: float = PNG16_DEFAULT_SCALE) -> Path:
    """Write z-depth ``(..., H, W)`` as a 16-bit PNG holding ``round(depth / scale)``."""
    import cv2

    path = Path(path)
    arr = np.round(torch.as_tensor(depth).detach().reshape(depth.shape[-2:]).cpu().numpy() / scale)
    if arr.max() > 65535 or arr.min() < 1:
        raise ValueError("depth / scale must lie in [1, 65535] for a 16-bit PNG; choose another scale")
    from flowctrl.io_safety import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), arr.astype(np.uint16)):
            raise OSError(f"could not write {path}")
    return path
