"""FID / FVD: Fréchet distance between Gaussian fits of network features, in float64.

Feature networks are loaded from a user path (nothing is downloaded):

* FVD: the I3D TorchScript used by StyleGAN-V (``i3d_torchscript.pt``), called as
  ``net(videos, rescale=False, resize=True, return_features=True)`` on ``(N,3,T,H,W)`` in [-1, 1]
  → ``(N,400)`` logits features. Clips must have at least 10 frames (I3D's temporal receptive field).
* FID: the Inception TorchScript used by StyleGAN2-ADA (``inception-2015-12-05.pt``), called as
  ``net(images_uint8, return_features=True)`` on ``(N,3,H,W)`` uint8 → ``(N,2048)``.

Any other TorchScript / ``nn.Module`` mapping a batch to ``(N,D)`` features works through
:func:`feature_statistics` with ``extractor=``.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from flowctrl.errors import InputError, MissingWeightsError

logger = logging.getLogger("flowctrl")

__all__ = ["frechet_distance", "feature_statistics", "load_feature_net", "i3d_features", "inception_features",
           "fvd", "fid", "MIN_RELIABLE_SAMPLES", "FVD_MIN_FRAMES"]

MIN_RELIABLE_SAMPLES = 256  # below this the covariance estimate dominates the score (warn)
FVD_MIN_FRAMES = 10


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``‖μ1−μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2})`` in float64.

    ``scipy.linalg.sqrtm`` may return a complex matrix with tiny imaginary parts from round-off
    (dropped) or fail on singular products (retried with ``1e-6·I`` added to both covariances).
    A large imaginary component is an error, as in the reference implementation.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise InputError.at(None, "statistics", f"mismatched shapes mu {mu1.shape}/{mu2.shape}, "
                            f"sigma {sigma1.shape}/{sigma2.shape}", "compute both with the same feature network")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular products are handled below
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in the Fréchet sqrtm")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def feature_statistics(features: Union[Tensor, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D,D)`` (float64, unbiased) of ``(N, D)`` features."""
    feats = np.asarray(features.detach().cpu().double() if isinstance(features, Tensor) else features, np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise InputError.at(None, "features", f"shape {feats.shape}", "give (N, D) features of at least 2 samples")
    if feats.shape[0] < MIN_RELIABLE_SAMPLES:
        logger.warning("Fréchet statistics from only %d samples (< %d): the score is biased upwards and "
                       "not comparable with published numbers", feats.shape[0], MIN_RELIABLE_SAMPLES)
    return feats.mean(0), np.cov(feats, rowvar=False)


def load_feature_net(path: Union[str, os.PathLike, None], what: str) -> torch.jit.ScriptModule:
    """Load a TorchScript feature network from ``path`` (``what`` names it in errors)."""
    if path is None or not Path(path).is_file():
        raise MissingWeightsError.at(path, what, "feature network not found",
                                     f"pass the path of the {what} TorchScript file (nothing is downloaded)")
    return torch.jit.load(str(path), map_location="cpu").eval()


def _batches(items: Tensor, batch_size: int) -> Iterable[Tensor]:
    for start in range(0, items.shape[0], batch_size):
        yield items[start:start + batch_size]


def i3d_features(videos: Tensor, net: Callable, batch_size: int = 8) -> Tensor:
    """I3D features of ``videos (N,T,3,H,W)`` in [0, 1] → ``(N, D)`` float64.

    Raises:
        InputError: fewer than :data:`FVD_MIN_FRAMES` frames or frames smaller than 32 px.
    """
    if videos.dim() != 5 or videos.shape[2] != 3:
        raise InputError.at(None, "videos", f"shape {tuple(videos.shape)}", "give (N,T,3,H,W) in [0,1]")
    if videos.shape[1] < FVD_MIN_FRAMES:
        raise InputError.at(None, "videos", f"{videos.shape[1]} frames per clip",
                            f"FVD needs clips of at least {FVD_MIN_FRAMES} frames (16 as in StyleGAN-V)")
    if min(videos.shape[-2:]) < 32:
        raise InputError.at(None, "videos", f"frames of {tuple(videos.shape[-2:])} px", "give frames of at least 32 px")
    out = []
    with torch.no_grad():
        for batch in _batches(videos, batch_size):
            x = batch.float().permute(0, 2, 1, 3, 4) * 2 - 1  # (N,3,T,H,W) in [-1,1]
            out.append(net(x, rescale=False, resize=True, return_features=True).double())
    return torch.cat(out)


def inception_features(images: Tensor, net: Callable, batch_size: int = 32) -> Tensor:
    """Inception features of ``images (N,3,H,W)`` in [0, 1] → ``(N, D)`` float64 (uint8 input, as StyleGAN)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise InputError.at(None, "images", f"shape {tuple(images.shape)}", "give (N,3,H,W) in [0,1]")
    out = []
    with torch.no_grad():
        for batch in _batches(images, batch_size):
            x = (batch.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
            out.append(net(x, return_features=True).double())
    return torch.cat(out)


def fvd(real: Tensor, fake: Tensor, net: Union[Callable, str, os.PathLike]) -> float:
    """FVD between two sets of videos ``(N,T,3,H,W)`` in [0, 1] with an I3D network (or its path)."""
    if real.shape[1:] != fake.shape[1:]:
        raise InputError.at(None, "videos", f"real clips {tuple(real.shape[1:])} vs generated {tuple(fake.shape[1:])}",
                            "compare clips of the same length and resolution")
    net = load_feature_net(net, "I3D (FVD)") if isinstance(net, (str, os.PathLike)) else net
    return frechet_distance(*feature_statistics(i3d_features(real, net)), *feature_statistics(i3d_features(fake, net)))


def fid(real: Tensor, fake: Tensor, net: Union[Callable, str, os.PathLike]) -> float:
    """FID between two sets of images ``(N,3,H,W)`` in [0, 1] with an Inception network (or its path)."""
    net = load_feature_net(net, "Inception (FID)") if isinstance(net, (str, os.PathLike)) else net
    return frechet_distance(*feature_statistics(inception_features(real, net)),
                            *feature_statistics(inception_features(fake, net)))
