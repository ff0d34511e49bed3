"""Loss terms shared by several training tasks (:mod:`flowctrl.train.tasks`)."""
from __future__ import annotations

import torch


def epe_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean end-point error (px) of (B,T,2,H,W) flows — the benchmark metric, used as T's loss."""
    return (pred - target).pow(2).sum(dim=2).add(1e-8).sqrt().mean()


def diffusion_target(scheduler, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the model regresses for the scheduler's ``prediction_type``: v (``v_prediction``), the clean
    latent z0 (``sample``) or ε (``epsilon``); same shape as ``z0``. Shared by the FGM and video tasks."""
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        return scheduler.get_velocity(z0, noise, t)
    return z0 if kind == "sample" else noise
