"""Tem-Cons (seed 004): mean CLIP cosine similarity of adjacent frames, CLIP by local path / hub id."""
from __future__ import annotations

import os
from typing import Any, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from flowctrl.errors import InputError, MissingWeightsError

__all__ = ["load_clip", "clip_image_features", "temporal_consistency"]

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip(path_or_id: Union[str, os.PathLike, None]) -> Any:
    """A transformers ``CLIPVisionModelWithProjection`` from a local folder or a cached hub id.

    Raises:
        MissingWeightsError: not found locally (nothing is downloaded).
    """
    from transformers import CLIPVisionModelWithProjection

    if path_or_id is None:
        raise MissingWeightsError.at(None, "clip", "no CLIP model given",
                                     "pass --clip PATH_OR_HUB_ID (e.g. openai/clip-vit-base-patch32, already cached)")
    try:
        return CLIPVisionModelWithProjection.from_pretrained(str(path_or_id), local_files_only=True,
                                                             use_safetensors=True).eval()
    except (OSError, ValueError) as error:
        raise MissingWeightsError.at(path_or_id, "clip", f"CLIP weights not available locally ({type(error).__name__})",
                                     "give a folder with config.json + weights or a hub id in the local cache") from None


def clip_image_features(frames: Tensor, model: Any) -> Tensor:
    """Unit-norm CLIP image embeddings of ``frames (N,3,H,W)`` in [0, 1] → ``(N, D)``.

    Frames are resized (bicubic, shorter side) and centre-cropped to the model's image size and
    normalized with CLIP's mean/std.
    """
    size = int(model.config.image_size)
    h, w = frames.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(frames.float(), size=(max(size, round(h * scale)), max(size, round(w * scale))),
                      mode="bicubic", align_corners=False).clamp(0, 1)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    mean = torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        emb = model(pixel_values=(x - mean) / std).image_embeds
    return F.normalize(emb.float(), dim=-1)


def temporal_consistency(video: Tensor, model: Any) -> Tuple[float, Tensor]:
    """Tem-Cons of ``video (T,3,H,W)``: mean cosine similarity of CLIP embeddings of frames t, t+1.

    Returns:
        ``(mean, per_pair (T-1,))``.
    """
    if video.dim() != 4 or video.shape[1] != 3 or video.shape[0] < 2:
        raise InputError.at(None, "video", f"shape {tuple(video.shape)}", "give (T,3,H,W) with T >= 2")
    emb = clip_image_features(video, model)
    sims = (emb[1:] * emb[:-1]).sum(-1)
    return float(sims.mean()), sims
