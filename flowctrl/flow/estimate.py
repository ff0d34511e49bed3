"""Optical flow of a reference video, returned in reference form.

Consecutive flows ``frame k → k+1`` are estimated with OpenCV's DIS (default; CPU, no weights) or
RAFT from torchvision (only when torchvision is importable, weights from a local file), then chained
into the reference form with backward warping (:func:`flowctrl.flow.compose.to_reference`): adding
consecutive flows would sample each at the wrong pixel as soon as the motion is not uniform.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from flowctrl.errors import InputError, MissingWeightsError
from flowctrl.flow.compose import to_reference

DIS_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}
METHODS = ("dis", "raft")


def _to_gray_uint8(frame: torch.Tensor) -> np.ndarray:
    rgb = (frame.detach().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def dis_consecutive(video: torch.Tensor, preset: str = "medium") -> torch.Tensor:
    """DIS flow between consecutive frames of ``video (T, 3, H, W)`` in [0, 1] → ``(T-1, 2, H, W)`` px."""
    import cv2

    if preset not in DIS_PRESETS:
        raise InputError.at(None, "dis preset", f"unknown preset {preset!r}", f"use one of {sorted(DIS_PRESETS)}")
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    grays = [_to_gray_uint8(f) for f in video]
    flows = [dis.calc(grays[k], grays[k + 1], None) for k in range(len(grays) - 1)]
    return torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2).contiguous().float()


def raft_consecutive(video: torch.Tensor, weights: Optional[str] = None, small: bool = False,
                     iterations: int = 12) -> torch.Tensor:
    """RAFT (torchvision) flow between consecutive frames → ``(T-1, 2, H, W)`` pixels.

    ``weights`` is a local ``.pth``/``.safetensors`` state dict (torchvision's ``raft_large`` or
    ``raft_small``); nothing is downloaded. Default from ``$FLOWCTRL_RAFT_WEIGHTS``.
    """
    try:
        from torchvision.models.optical_flow import raft_large, raft_small
    except ImportError as exc:
        raise InputError.at(None, "flow method", "RAFT needs torchvision, which is not installed",
                            "pip install 'flowctrl[raft]' or use --flow-method dis") from exc
    weights = weights or os.environ.get("FLOWCTRL_RAFT_WEIGHTS")
    if not weights or not os.path.isfile(weights):
        raise MissingWeightsError.at(weights or "$FLOWCTRL_RAFT_WEIGHTS", "raft weights",
                                     "no local RAFT weights file", "set FLOWCTRL_RAFT_WEIGHTS to a torchvision RAFT state dict")
    model = (raft_small if small else raft_large)(weights=None, progress=False)
    if weights.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(weights)
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    t, _, h, w = video.shape
    ph, pw = (-h) % 8, (-w) % 8  # RAFT needs sizes divisible by 8
    x = torch.nn.functional.pad(video * 2.0 - 1.0, (0, pw, 0, ph), mode="replicate")
    out = []
    with torch.no_grad():
        for k in range(t - 1):
            pred = model(x[k:k + 1], x[k + 1:k + 2], num_flow_updates=iterations)[-1]
            out.append(pred[0, :, :h, :w])
    return torch.stack(out)


def estimate_flow(video: torch.Tensor, method: str = "dis", **kwargs) -> torch.Tensor:
    """Flow of ``video (T, 3, H, W)`` in [0, 1] in reference form ``(1, T, 2, H, W)`` pixels.

    Args:
        method: ``"dis"`` (OpenCV, ``preset="medium"``) or ``"raft"`` (torchvision; ``weights=path``).
    """
    if video.dim() != 4 or video.shape[1] != 3 or video.shape[0] < 2:
        raise InputError.at(None, "reference video", f"has shape {tuple(video.shape)}", "give (T>=2, 3, H, W) frames")
    if method == "dis":
        consecutive = dis_consecutive(video, **kwargs)
    elif method == "raft":
        consecutive = raft_consecutive(video, **kwargs)
    else:
        raise InputError.at(None, "flow method", f"unknown method {method!r}", f"use one of {METHODS}")
    return to_reference(consecutive[None])
