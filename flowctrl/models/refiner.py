"""Refinement network T (seed 004 §3.2): pixel-to-pixel U-Net from the Gaussian dense flow to a refined flow.

Like pix2pix (Isola et al. 2017) the generator is a U-Net of 4×4 stride-2 convolutions with
LeakyReLU/ReLU, normalisation and skip connections. It runs per frame on
``(image RGB, bounded dense flow tanh(F/s), sparse mask, t/(T−1))`` and predicts a residual in pixels::

    refined[t] = dense[t] + s · head(U-Net(x_t))      (head zero-initialised → T starts as the identity)

so an untrained T returns the Gaussian interpolation exactly, and training only has to learn corrections.
"""
from __future__ import annotations

from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def _norm(ch: int) -> nn.Module:
    return nn.GroupNorm(min(8, ch), ch)


class RefinementNet(ModelMixin, ConfigMixin):
    """T: (image (B,3,H,W), dense (B,T,2,H,W) px, mask (B,T,1,H,W)) → refined flow (B,T,2,H,W) px.

    Config: ``channels`` (U-Net widths, one 4×4 s2 down/up level each; H and W must be divisible by
    2**len(channels)), ``flow_scale`` (px).
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, channels: Sequence[int] = (32, 64, 128, 128), flow_scale: float = 8.0, in_channels: int = 7) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        prev = in_channels
        for i, ch in enumerate(channels):
            layers = [nn.Conv2d(prev, ch, 4, 2, 1)]
            if i > 0:
                layers.append(_norm(ch))
            layers.append(nn.LeakyReLU(0.2))
            self.down.append(nn.Sequential(*layers))
            prev = ch
        self.up = nn.ModuleList()
        rev = list(channels)[::-1]
        for i, ch in enumerate(rev[1:] + [rev[-1]]):
            in_ch = prev if i == 0 else prev * 2
            self.up.append(nn.Sequential(nn.ConvTranspose2d(in_ch, ch, 4, 2, 1), _norm(ch), nn.ReLU()))
            prev = ch
        self.head = nn.Conv2d(prev + in_channels, 2, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, image: torch.Tensor, dense: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """image (B,3,H,W) in [0,1]; dense flow (B,T,2,H,W) px; mask (B,T,1,H,W) → (B,T,2,H,W) px, frame 0 = 0."""
        b, t, _, h, w = dense.shape
        s = self.config.flow_scale
        tt = torch.linspace(0.0, 1.0, t, device=dense.device, dtype=dense.dtype).view(1, t, 1, 1, 1).expand(b, t, 1, h, w)
        x = torch.cat([image.unsqueeze(1).expand(b, t, 3, h, w).to(dense.dtype) * 2 - 1,
                       torch.tanh(dense / s), mask.to(dense.dtype), tt], dim=2).flatten(0, 1)
        skips = []
        y = x
        for layer in self.down:
            y = layer(y)
            skips.append(y)
        skips.pop()
        for i, layer in enumerate(self.up):
            y = layer(y if i == 0 else torch.cat([y, skips.pop()], dim=1))
        delta = self.head(torch.cat([y, x], dim=1)).view(b, t, 2, h, w) * s
        out = dense + delta
        return torch.cat([torch.zeros_like(out[:, :1]), out[:, 1:]], dim=1)
