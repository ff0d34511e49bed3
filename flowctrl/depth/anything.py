"""Monocular depth with Depth-Anything (V1/V2) through transformers, from a local folder or a hub id.

A hub id is taken from the Hugging Face cache or downloaded on request (``HF_HUB_OFFLINE`` honoured,
safetensors only; :func:`flowctrl.depth.auto.fetch_model`); weights that cannot be had raise
:class:`MissingWeightsError` (one line, no hang).

Relative models (``depth_estimation_type="relative"``, the default checkpoints) predict an
affine-invariant *disparity* ``d``. We fix the unknown shift at the farthest point
(``d - min d``), floor it at 2 % of its maximum (sky, far walls: depth at most 50x the nearest) and
turn it into z-depth with median 1 (``depth = median(d) / max(d, 0.02 · max d)``), so camera
translations are in units of the scene's median depth (:mod:`flowctrl.depth.scale` then picks the
scene's size for trajectories of unknown scale). Metric checkpoints return depth in metres, used as is.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F_nn

from flowctrl.errors import MissingWeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DISPARITY_FLOOR = 0.02  # relative disparity below this fraction of the max (sky) is clamped


def _missing(name: str, problem: str) -> MissingWeightsError:
    return MissingWeightsError.at(
        name, "depth_model", problem,
        "pass a folder holding config.json + model.safetensors, or pre-download the hub id "
        "(e.g. depth-anything/Depth-Anything-V2-Small-hf) into the Hugging Face cache")


def _check_available(name: str) -> Path:
    """The local folder of ``name`` (cache / download on request), before importing transformers."""
    from flowctrl.depth.auto import fetch_model

    try:
        return fetch_model(name)
    except OSError as exc:
        raise _missing(name, f"Depth-Anything weights are not available locally ({exc})") from None


class DepthAnythingEstimator:
    """Depth-Anything wrapper: ``estimator(image (1, 3, H, W) in [0, 1]) -> depth (1, 1, H, W)``."""

    def __init__(self, model, processor=None, input_size: int = 518):
        self.model = model.eval()
        self.processor = processor
        self.input_size = input_size
        self.metric = getattr(model.config, "depth_estimation_type", "relative") == "metric"

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, "os.PathLike[str]"], device: Optional[str] = None,
                        input_size: int = 518) -> "DepthAnythingEstimator":
        """Load from a local folder or a hub id (cached, else downloaded when allowed); safetensors only."""
        name = str(name_or_path)
        folder = str(_check_available(name))
        try:
            from transformers import AutoModelForDepthEstimation

            model = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise _missing(name, f"Depth-Anything weights could not be loaded locally ({type(exc).__name__})") from exc
        processor = None
        try:
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError):
            processor = None  # standard ImageNet normalisation below
        est = cls(model, processor, input_size=input_size)
        if device is not None:
            est.model.to(device)
        return est

    def _prepare(self, image: torch.Tensor) -> torch.Tensor:
        patch = int(getattr(self.model.config, "patch_size", 14))
        h, w = image.shape[-2:]
        scale = self.input_size / min(h, w)
        nh = max(patch, int(round(h * scale / patch)) * patch)
        nw = max(patch, int(round(w * scale / patch)) * patch)
        x = F_nn.interpolate(image.float(), size=(nh, nw), mode="bicubic", align_corners=False).clamp(0, 1)
        mean = torch.tensor(getattr(self.processor, "image_mean", None) or IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(getattr(self.processor, "image_std", None) or IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """``image (1, 3, H, W)`` in [0, 1] → z-depth ``(1, 1, H, W)`` float32 > 0."""
        device = next(self.model.parameters()).device
        x = self._prepare(image).to(device)
        pred = self.model(pixel_values=x).predicted_depth  # (1, h, w)
        pred = F_nn.interpolate(pred[:, None].float(), size=image.shape[-2:], mode="bilinear", align_corners=False).cpu()
        if self.metric:
            return pred.clamp_min(1e-3)
        disp = pred - pred.amin()  # affine-invariant: fix the shift at the farthest point
        top = disp.amax().clamp_min(1e-12)
        disp = disp.clamp_min(DISPARITY_FLOOR * top)
        return disp.median() / disp
