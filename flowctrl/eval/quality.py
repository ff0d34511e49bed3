"""Frame quality of a video against a reference video: PSNR, SSIM, LPIPS (weights by path)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import torch
from torch import Tensor

from flowctrl.errors import InputError, MissingWeightsError

__all__ = ["psnr", "ssim", "load_lpips", "frame_quality"]


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
        raise InputError.at(None, "video", f"shapes {tuple(a.shape)} and {tuple(b.shape)} differ or are not (N,3,H,W)",
                            "give two videos of the same size (T,3,H,W)")


def psnr(a: Tensor, b: Tensor, max_val: float = 1.0) -> Tensor:
    """Per-frame PSNR in dB of ``a`` vs ``b``, both ``(N, 3, H, W)`` in [0, max_val] → ``(N,)``.

    Identical frames give ``inf``.
    """
    _check_pair(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(max_val**2 / mse)).float()


def ssim(a: Tensor, b: Tensor, window_size: int = 11, max_val: float = 1.0) -> Tensor:
    """Per-frame SSIM (Gaussian window σ=1.5, kornia) of ``(N,3,H,W)`` frames → ``(N,)`` in [-1, 1]."""
    import kornia

    _check_pair(a, b)
    ssim_map = kornia.metrics.ssim(a.float(), b.float(), window_size, max_val=max_val, padding="valid")
    return ssim_map.flatten(1).mean(1)


def load_lpips(path: Union[str, os.PathLike, None]) -> Callable[[Tensor, Tensor], Tensor]:
    """An LPIPS network from a TorchScript file: ``net(x, y)`` with images in [-1, 1] → distances.

    The file is a ``torch.jit`` export of an LPIPS model (e.g. ``torch.jit.trace`` of
    ``lpips.LPIPS(net="alex")``), taking two ``(N,3,H,W)`` tensors in [-1, 1] and returning ``(N,)`` or
    ``(N,1,1,1)``. No weights ship with flowctrl and nothing is downloaded.

    Raises:
        MissingWeightsError: ``path`` is None or not a file.
    """
    if path is None or not Path(path).is_file():
        raise MissingWeightsError.at(path, "lpips", "LPIPS weights not found",
                                     "pass --lpips PATH to a TorchScript LPIPS model (e.g. a traced lpips.LPIPS('alex'))")
    net = torch.jit.load(str(path), map_location="cpu").eval()

    def distance(a: Tensor, b: Tensor) -> Tensor:
        _check_pair(a, b)
        with torch.no_grad():
            return net(a.float() * 2 - 1, b.float() * 2 - 1).reshape(a.shape[0]).float()

    return distance


def frame_quality(video: Tensor, reference: Tensor,
                  lpips: Optional[Callable[[Tensor, Tensor], Tensor]] = None) -> Dict[str, Tensor]:
    """PSNR / SSIM (/ LPIPS) per frame of ``video`` vs ``reference``, both ``(T,3,H,W)`` in [0, 1].

    Returns:
        ``{"PSNR": (T,), "SSIM": (T,)[, "LPIPS": (T,)]}``.
    """
    out = {"PSNR": psnr(video, reference), "SSIM": ssim(video, reference)}
    if lpips is not None:
        out["LPIPS"] = lpips(video, reference)
    return out
