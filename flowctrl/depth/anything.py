"""Monocular depth with Depth-Anything (V1/V2) through transformers, from a local folder or cached hub id.

Nothing is downloaded: the model loads with ``local_files_only=True`` (and ``HF_HUB_OFFLINE`` is
honoured by transformers), so a missing model raises :class:`MissingWeightsError` at once instead of
hanging on the network.

Relative models (``depth_estimation_type="relative"``, the default checkpoints) predict an
affine-invariant *disparity*; we turn it into z-depth with median 1
(``depth = median(d) / max(d, 0.02 · max d)``), so camera translations are in units of the scene's
median depth. Metric checkpoints return depth in metres, used as is.
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


def _check_available(name: str) -> None:
    """Fail at once (before importing transformers) when neither a local folder nor a cached hub id."""
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        if not (path / "config.json").is_file():
            raise _missing(name, "no config.json in this folder (Depth-Anything weights are not available locally)")
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise _missing(name, "Depth-Anything weights are not available locally (not in the Hugging Face cache; no downloads are made)")


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
        """Load from a local folder or an already-cached hub id; never downloads."""
        name = str(name_or_path)
        _check_available(name)
        try:
            from transformers import AutoModelForDepthEstimation

            model = AutoModelForDepthEstimation.from_pretrained(name, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise _missing(name, f"Depth-Anything weights could not be loaded locally ({type(exc).__name__})") from exc
        processor = None
        try:
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(name, local_files_only=True)
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
