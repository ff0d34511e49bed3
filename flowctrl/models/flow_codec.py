"""Flow codec: optical flow ↔ latent through diffusers' 3D causal VAE (``AutoencoderKLCogVideoX``).

A flow video ``(B, T, 2, H, W)`` in pixels is mapped to three bounded channels, the image-like input the
VAE expects::

    c0 = tanh(dx / s),  c1 = tanh(dy / s),  c2 = 2·tanh(|f| / s) − 1          (s = config.flow_scale px)

and decoded back by ``v = s·atanh(c0, c1)`` with the magnitude averaged between ``|v|`` and
``s·atanh((c2+1)/2)`` — exact when the channels agree, and more robust to VAE error on the magnitude.
Frames are padded to 4k+1 (last frame repeated) for the causal VAE, so ``T' = ceil((T−1)/4) + 1``
(= ``(T−1)//4 + 1`` for the CogVideoX frame counts 8N+1), and decoding crops back to ``num_frames``.
Latents are multiplied by ``vae.config.scaling_factor`` like CogVideoX latents.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from einops import rearrange
from diffusers import AutoencoderKLCogVideoX
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

_EPS = 1e-4


def flow_to_channels(flow: torch.Tensor, scale: float) -> torch.Tensor:
    """(..., 2, H, W) px → (..., 3, H, W) in (-1, 1)."""
    mag = flow.norm(dim=-3, keepdim=True)
    return torch.cat([torch.tanh(flow / scale), 2.0 * torch.tanh(mag / scale) - 1.0], dim=-3)


def channels_to_flow(ch: torch.Tensor, scale: float) -> torch.Tensor:
    """(..., 3, H, W) → (..., 2, H, W) px; inverse of :func:`flow_to_channels`.

    Computed (and returned) in float32 at least: in bf16, ``1 − 1e-4`` rounds to 1 and atanh(1) is infinite,
    so a bf16 decoder output (mixed precision) would decode to NaN flow."""
    ch = ch.to(torch.promote_types(ch.dtype, torch.float32))
    v = scale * torch.atanh(ch[..., :2, :, :].clamp(-1 + _EPS, 1 - _EPS))
    vmag = v.norm(dim=-3, keepdim=True)
    mag = scale * torch.atanh(((ch[..., 2:3, :, :] + 1.0) / 2.0).clamp(0.0, 1 - _EPS))
    target = 0.5 * (vmag + mag)
    return v * (target / vmag.clamp_min(1e-6))


class FlowCodec(ModelMixin, ConfigMixin):
    """Flow VAE. ``encode(flow) -> latent (B, T', C, h, w)``, ``decode(latent, num_frames, size) -> flow``.

    Config: ``flow_scale`` (px), ``latent_channels``, ``block_out_channels``, ``layers_per_block``,
    ``norm_num_groups`` of the wrapped ``AutoencoderKLCogVideoX`` (4 blocks → spatial /8, temporal /4).
    """

    @register_to_config
    def __init__(
        self,
        flow_scale: float = 8.0,
        latent_channels: int = 4,
        block_out_channels: Sequence[int] = (8, 16, 16, 16),
        layers_per_block: int = 1,
        norm_num_groups: int = 4,
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        n = len(block_out_channels)
        self.vae = AutoencoderKLCogVideoX(
            in_channels=3,
            out_channels=3,
            down_block_types=("CogVideoXDownBlock3D",) * n,
            up_block_types=("CogVideoXUpBlock3D",) * n,
            block_out_channels=tuple(block_out_channels),
            latent_channels=latent_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            scaling_factor=scaling_factor,
        )

    @classmethod
    def from_cogvideox_vae(cls, vae: AutoencoderKLCogVideoX, flow_scale: float = 8.0) -> "FlowCodec":
        """Wrap a pretrained CogVideoX VAE (AnimateAnything reuses the video VAE for flow, then fine-tunes)."""
        c = vae.config
        codec = cls(flow_scale=flow_scale, latent_channels=c.latent_channels, block_out_channels=tuple(c.block_out_channels),
                    layers_per_block=c.layers_per_block, norm_num_groups=c.norm_num_groups, scaling_factor=c.scaling_factor)
        codec.vae.load_state_dict(vae.state_dict())
        return codec

    @staticmethod
    def _pad_frames(x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        if t <= 1:
            return x
        padded = 4 * -(-(t - 1) // 4) + 1
        if padded > t:
            x = torch.cat([x, x[:, -1:].expand(x.shape[0], padded - t, *x.shape[2:])], dim=1)
        return x

    def encode_channels(self, ch: torch.Tensor, sample: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(B, T, 3, H, W) bounded channels (or an RGB video in [-1, 1]) → latent (B, T', C, h, w)."""
        x = rearrange(self._pad_frames(ch), "b t c h w -> b c t h w")
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return rearrange(z * self.vae.config.scaling_factor, "b c t h w -> b t c h w")

    def decode_channels(self, latent: torch.Tensor, num_frames: int) -> torch.Tensor:
        """latent (B, T', C, h, w) → channels (B, num_frames, 3, H, W)."""
        z = rearrange(latent, "b t c h w -> b c t h w") / self.vae.config.scaling_factor
        out = rearrange(self.vae.decode(z).sample, "b c t h w -> b t c h w")
        return out[:, :num_frames]

    def encode(self, flow: torch.Tensor, sample: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """flow (B, T, 2, H, W) px → latent (B, T', C, H/8, W/8), T' = ceil((T−1)/4)+1."""
        return self.encode_channels(flow_to_channels(flow, self.config.flow_scale), sample, generator)

    def decode(self, latent: torch.Tensor, num_frames: int, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """latent (B, T', C, h, w) → flow (B, num_frames, 2, H, W) px (resized to ``size`` if given)."""
        flow = channels_to_flow(self.decode_channels(latent, num_frames), self.config.flow_scale)
        if size is not None and tuple(flow.shape[-2:]) != tuple(size):
            b, t = flow.shape[:2]
            sy, sx = size[0] / flow.shape[-2], size[1] / flow.shape[-1]
            flow = torch.nn.functional.interpolate(flow.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
            flow = (flow * flow.new_tensor([sx, sy]).view(1, 2, 1, 1)).view(b, t, 2, *size)
        flow = flow.clone()
        flow[:, 0] = 0.0  # reference form: frame 0 maps to itself
        return flow

    def loss(self, flow: torch.Tensor, kl_weight: float = 1e-6, generator: Optional[torch.Generator] = None,
             epe_weight: float = 0.0, sample_latent: bool = True) -> torch.Tensor:
        """Fine-tuning loss on flows: L1 on the bounded channels + KL, plus ``epe_weight`` × the end-point
        error (px / flow_scale) of the decoded flow over frames 1… (the metric the codec is judged by).
        ``sample_latent=False`` decodes the posterior mode (what encode/decode use) instead of a sample: a
        fresh VAE's posterior std is ~1, noise that swamps a tiny codec's latents early in training.
        flow (B, T, 2, H, W) px → scalar."""
        ch = flow_to_channels(flow, self.config.flow_scale)
        x = rearrange(self._pad_frames(ch), "b t c h w -> b c t h w")
        dist = self.vae.encode(x).latent_dist
        rec = self.vae.decode(dist.sample(generator) if sample_latent else dist.mode()).sample
        rec = rec[:, :, : x.shape[2]]
        loss = (rec - x).abs().mean() + kl_weight * dist.kl().mean()
        if epe_weight > 0:
            t = flow.shape[1]
            dec = channels_to_flow(rearrange(rec, "b c t h w -> b t c h w")[:, 1:t], self.config.flow_scale)
            err = (dec - flow[:, 1:]).pow(2).sum(dim=2).add(1e-8).sqrt().mean()
            loss = loss + epe_weight * err / self.config.flow_scale
        return loss
