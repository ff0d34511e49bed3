"""Light condition encoders in the style of Animate Anyone's pose guider.

Animate Anyone (seeds 001–003) encodes pose images with four 4×4 stride-2 convolutions
(16/32/64/128 channels) and a zero-initialised output layer, and adds the result to the noise latent.
:class:`ConditionEncoder` does the same per video frame, then groups frames the way the 3D causal VAE
groups them (latent frame 0 = frame 0, latent frame k = frames 4k-3 … 4k) so that its output lines up
with the DiT's patch tokens, and projects to the token width through a zero-initialised 1×1 layer.
The FGM uses it for the sparse-flow condition, the CRM for Plücker camera rays.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def latent_num_frames(num_frames: int, temporal_compression: int = 4) -> int:
    """Number of latent frames of the causal 3D VAE for ``num_frames`` input frames (padded to 4k+1)."""
    return math.ceil((num_frames - 1) / temporal_compression) + 1 if num_frames > 1 else 1


def group_frames(x: torch.Tensor, temporal_compression: int = 4) -> torch.Tensor:
    """(B, T, C, h, w) → (B, T', r·C, h, w): stack the frames that one latent frame covers.

    Latent frame 0 holds frame 0 (repeated r times); latent frame k holds frames r(k-1)+1 … rk.
    The last frame is repeated to fill a partial group (the same padding the codec uses).
    """
    r = temporal_compression
    b, t, c, h, w = x.shape
    tl = latent_num_frames(t, r)
    padded = 1 + (tl - 1) * r
    if padded > t:
        x = torch.cat([x, x[:, -1:].expand(b, padded - t, c, h, w)], dim=1)
    first = x[:, :1].expand(b, r, c, h, w).reshape(b, 1, r * c, h, w)
    if tl == 1:
        return first
    rest = x[:, 1:].reshape(b, tl - 1, r * c, h, w)
    return torch.cat([first, rest], dim=1)


class ConditionEncoder(nn.Module):
    """Per-frame conv encoder → DiT tokens. Output is zero at initialisation.

    Args:
        in_channels: channels of the per-frame condition (3 for sparse flow + mask, 6 for Plücker rays).
        out_dim: token width of the transformer it feeds.
        channels: widths of the stride-2 4×4 convolutions; ``len(channels)`` halvings of the resolution
            (default 4 → /16 = VAE /8 × patch 2).
        temporal_compression: frames per latent frame of the codec.
    """

    def __init__(
        self,
        in_channels: int,
        out_dim: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        temporal_compression: int = 4,
    ) -> None:
        super().__init__()
        layers = []
        prev = in_channels
        for ch in channels:
            layers += [nn.Conv2d(prev, ch, kernel_size=4, stride=2, padding=1), nn.SiLU()]
            prev = ch
        self.convs = nn.Sequential(*layers)
        self.temporal_compression = temporal_compression
        self.downsample = 2 ** len(channels)
        self.conv_out = nn.Conv2d(prev * temporal_compression, out_dim, kernel_size=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """cond (B, T, C, H, W) → tokens (B, T'·(H/s)·(W/s), out_dim), s = 2**len(channels)."""
        b, t, c, h, w = cond.shape
        feats = self.convs(cond.reshape(b * t, c, h, w))
        feats = feats.reshape(b, t, *feats.shape[1:])
        grouped = group_frames(feats, self.temporal_compression)
        tl = grouped.shape[1]
        out = self.conv_out(grouped.flatten(0, 1))  # (B·T', D, h', w')
        out = out.reshape(b, tl, out.shape[1], out.shape[2] * out.shape[3])
        return out.transpose(2, 3).flatten(1, 2)
