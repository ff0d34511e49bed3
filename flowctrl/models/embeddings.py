"""Embeddings of scalar controls for the stage-1 models.

:class:`MotionStrengthEmbedding` implements seed 004 §3.3: the motion strength ``M_s`` (eq. 8, mean
per-frame displacement in pixels) goes through a sinusoidal projection and an MLP; the result is added
to the diffusion timestep embedding. The MLP's last layer starts at zero so adding the embedding to a
pretrained transformer changes nothing until it is trained.
"""
from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn


class MotionStrengthEmbedding(nn.Module):
    """``M_s`` (B,) pixels/frame → (B, out_dim) embedding, zero at initialisation.

    Args:
        out_dim: width of the timestep embedding it is added to.
        proj_dim: width of the sinusoidal projection.
        scale: multiplies ``M_s`` before the sinusoid so that typical strengths (0–20 px/frame) span
            many periods, like integer diffusion timesteps do.
    """

    def __init__(self, out_dim: int, proj_dim: int = 64, scale: float = 20.0) -> None:
        super().__init__()
        self.scale = scale
        self.proj = Timesteps(proj_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.mlp = TimestepEmbedding(proj_dim, out_dim, act_fn="silu")
        nn.init.zeros_(self.mlp.linear_2.weight)
        nn.init.zeros_(self.mlp.linear_2.bias)

    def forward(self, strength: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """strength (B,) float pixels/frame → (B, out_dim)."""
        emb = self.proj(strength.float().reshape(-1) * self.scale).to(dtype)
        return self.mlp(emb)
