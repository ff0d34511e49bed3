"""Flow fidelity: EPE between a requested flow and the flow measured on a video, and ObjMC for drags."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from flowctrl.errors import InputError

__all__ = ["epe", "measure_flow", "flow_fidelity", "track_points", "objmc"]


def epe(a: Tensor, b: Tensor, mask: Optional[Tensor] = None) -> float:
    """Mean end-point error ``‖a − b‖₂`` in pixels over the pixels where ``mask`` is true.

    Args:
        a, b: flows ``(..., 2, H, W)`` of the same shape (e.g. ``(B,T,2,H,W)`` or ``(T,2,H,W)``).
        mask: bool/0-1 tensor broadcastable to ``(..., 1, H, W)``; None = every pixel.

    Returns:
        The mean EPE in pixels, NaN when the mask selects nothing.
    """
    if a.shape != b.shape or a.dim() < 3 or a.shape[-3] != 2:
        raise InputError.at(None, "flow", f"shapes {tuple(a.shape)} and {tuple(b.shape)} differ or have no 2-channel axis",
                            "give two flows (...,2,H,W) of the same shape")
    err = (a.double() - b.double()).norm(dim=-3, keepdim=True)
    if mask is None:
        return float(err.mean())
    weight = torch.broadcast_to(mask.to(torch.float64), err.shape)
    total = weight.sum()
    return float((err * weight).sum() / total) if total > 0 else float("nan")


def measure_flow(video: Tensor, method: str = "dis") -> Tensor:
    """Reference-form flow measured on ``video (T,3,H,W)`` → ``(T,2,H,W)`` px (B's estimator)."""
    from flowctrl.flow.estimate import estimate_flow

    return estimate_flow(video, method=method)[0]


def flow_fidelity(requested: Tensor, video: Tensor, control_mask: Optional[Tensor] = None,
                  valid: Optional[Tensor] = None, method: str = "dis") -> Dict[str, float]:
    """EPE of the flow measured on a generated video against the requested unified flow.

    Args:
        requested: ``(T,2,H,W)`` reference-form flow the video was asked to follow (px); a leading
            batch of 1 (``UnifiedFlow.flow``, ``FlowCtrlOutput.video``) is accepted on every tensor.
        video: ``(T,3,H,W)`` generated video in [0, 1].
        control_mask: ``(T|1,1,H,W)`` bool, where the local controls act (``UnifiedFlow.local_mask``).
        valid: ``(T|1,1,H,W)`` bool, pixels that stay in view (others are excluded everywhere).
        method: ``"dis"`` (default) or ``"raft"``.

    Returns:
        ``{"EPE": all pixels, "EPE_inside": inside the control mask, "EPE_outside": outside}`` (px);
        frame 0 (zero flow by definition) is left out.
    """
    # accept the pipeline's batched tensors (1,T,...) as well
    requested, video = (x[0] if x.dim() == 5 else x for x in (requested, video))
    control_mask, valid = (x[0] if x is not None and x.dim() == 5 else x for x in (control_mask, valid))
    measured = measure_flow(video, method)
    shape = requested[:, :1].shape  # (T,1,H,W)
    base = torch.ones(shape, dtype=torch.bool, device=requested.device)
    if valid is not None:
        base = base & torch.broadcast_to(valid.bool(), shape)
    req, meas, base = requested[1:], measured[1:], base[1:]
    out = {"EPE": epe(req, meas, base)}
    if control_mask is not None:
        inside = torch.broadcast_to(control_mask.bool(), shape)[1:]
        out["EPE_inside"] = epe(req, meas, base & inside)
        out["EPE_outside"] = epe(req, meas, base & ~inside)
    return out


def track_points(flow: Tensor, points: Tensor) -> Tensor:
    """Positions over time of reference points carried by a reference-form flow.

    Args:
        flow: ``(T,2,H,W)`` px. points: ``(P,2)`` (x, y) pixels of the reference frame.

    Returns:
        ``(T,P,2)`` positions ``p + F[t](p)`` (bilinear lookup of the flow at ``p``).
    """
    T, _, H, W = flow.shape
    grid = points.to(flow.dtype).clone()
    grid[:, 0] = grid[:, 0] / max(W - 1, 1) * 2 - 1
    grid[:, 1] = grid[:, 1] / max(H - 1, 1) * 2 - 1
    grid = grid.view(1, 1, -1, 2).expand(T, 1, -1, 2)
    disp = torch.nn.functional.grid_sample(flow, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return points.to(flow.dtype).unsqueeze(0) + disp[:, :, 0].permute(0, 2, 1)


def objmc(requested_tracks: Tensor, video: Tensor, method: str = "dis",
          measured_flow: Optional[Tensor] = None) -> float:
    """ObjMC: mean distance (px) between requested drag trajectories and the tracked ones.

    Args:
        requested_tracks: ``(P,T,2)`` requested positions (x, y) in pixels; ``[:, 0]`` are the
            start points in the reference frame.
        video: ``(T,3,H,W)`` generated video; its flow is measured with ``method`` unless
            ``measured_flow (T,2,H,W)`` is given.

    Returns:
        Mean over points and frames 1..T-1 of ``‖requested − tracked‖₂``.
    """
    flow = measured_flow if measured_flow is not None else measure_flow(video, method)
    tracked = track_points(flow.double(), requested_tracks[:, 0].double())  # (T,P,2)
    requested = requested_tracks.double().permute(1, 0, 2)
    return float((tracked[1:] - requested[1:]).norm(dim=-1).mean())
