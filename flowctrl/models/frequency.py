"""Frequency stabilization (AnimateAnything, Fig. 4): FFT along time → learned per-frequency, per-channel
complex weights → inverse FFT.

The op itself is ``flowctrl_cuda.freq_adaptor`` (the one shared reference; a fused CUDA kernel replaces
it on GPU). The module is parameterized as a *residual* on the identity::

    y = x + freq_adaptor(x, delta)  ==  irfft(rfft(x) * (1 + delta))        (linear in the weight)

so that at initialization (``delta == 0``) the output is bit-for-bit the input (``rfft(x) * 0 == 0``
and ``irfft(0) == 0`` exactly), which is what makes a converted CogVideoX checkpoint reproduce the base
model's output exactly.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["FrequencyStabilizer", "temporal_flicker"]


def _freq_adaptor(x: torch.Tensor, weight: torch.Tensor, dim: int = 1) -> torch.Tensor:
    from flowctrl_cuda import freq_adaptor  # imported late: flowctrl_cuda logs which path it dispatches to

    return freq_adaptor(x, weight, dim=dim)


class FrequencyStabilizer(nn.Module):
    """Learned complex gain per temporal frequency and channel, applied along the time axis.

    Args:
        channels: feature channels ``C`` (the DiT hidden size).
        num_frames: temporal length ``T0`` (latent / token frames) the weights are defined for. Other
            lengths resample the frequency response linearly over normalized frequency [0, 0.5]
            (cycles per frame), so a model trained at one length runs at another (long videos,
            other frame counts); the identity resamples to the identity.

    Shapes: ``forward(x (B, T, N, C)) -> (B, T, N, C)`` same dtype as ``x``; the FFT runs in float32.
    ``delta`` has shape ``(T0 // 2 + 1, C, 2)`` (real, imag) and is zero at initialization.
    """

    def __init__(self, channels: int, num_frames: int) -> None:
        super().__init__()
        if channels < 1 or num_frames < 1:
            raise ValueError(f"channels and num_frames must be >= 1, got {channels}, {num_frames}")
        self.channels = int(channels)
        self.num_frames = int(num_frames)
        self.delta = nn.Parameter(torch.zeros(self.num_frames // 2 + 1, self.channels, 2))

    @property
    def num_freqs(self) -> int:
        return self.num_frames // 2 + 1

    def response(self, num_frames: Optional[int] = None) -> torch.Tensor:
        """Complex gain ``(T // 2 + 1, C)`` (complex64) applied to ``rfft(x)`` for a clip of ``T`` frames."""
        delta = self.delta_for(num_frames or self.num_frames).float()
        return torch.complex(1.0 + delta[..., 0], delta[..., 1])

    def delta_for(self, num_frames: int) -> torch.Tensor:
        """``delta`` resampled to ``num_frames // 2 + 1`` frequency bins: ``(F, C, 2)`` float32."""
        delta = self.delta.float()
        target = num_frames // 2 + 1
        if target == delta.shape[0]:
            return delta
        if delta.shape[0] == 1:  # only the DC gain is defined: it applies to every bin
            return delta.expand(target, -1, -1)
        if target == 1:
            return delta[:1]
        # Bin k of a T-frame rfft sits at k / T cycles per frame; map onto the T0 grid and interpolate.
        src_pos = torch.arange(target, device=delta.device, dtype=torch.float32) / num_frames * self.num_frames
        src_pos = src_pos.clamp(max=delta.shape[0] - 1)
        lo = src_pos.floor().long()
        hi = (lo + 1).clamp(max=delta.shape[0] - 1)
        frac = (src_pos - lo.float()).view(-1, 1, 1)
        return delta[lo] * (1 - frac) + delta[hi] * frac

    @torch.no_grad()
    def set_response(self, gain: torch.Tensor) -> None:
        """Set the gain directly: ``gain`` real ``(F,)``/``(F, C)`` or complex, ``F = num_frames // 2 + 1``."""
        gain = gain.to(self.delta.device)
        if not torch.is_complex(gain):
            gain = torch.complex(gain.float(), torch.zeros_like(gain, dtype=torch.float32))
        if gain.dim() == 1:
            gain = gain[:, None].expand(-1, self.channels)
        if gain.shape != (self.num_freqs, self.channels):
            raise ValueError(f"gain must have shape ({self.num_freqs}, {self.channels}), got {tuple(gain.shape)}")
        self.delta.copy_(torch.stack([gain.real - 1.0, gain.imag], dim=-1).to(self.delta.dtype))

    @torch.no_grad()
    def set_lowpass(self, cutoff: float) -> None:
        """Gain 1 below ``cutoff`` and 0 at/above it (cycles per frame, 0 < cutoff <= 0.5)."""
        freqs = torch.arange(self.num_freqs, dtype=torch.float32) / self.num_frames
        self.set_response((freqs < cutoff).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, T, N, C)`` → same shape and dtype; identity while ``delta == 0``."""
        if x.dim() != 4 or x.shape[-1] != self.channels:
            raise ValueError(f"expected x of shape (B, T, N, {self.channels}), got {tuple(x.shape)}")
        num_frames = x.shape[1]
        if num_frames == 1:
            # One frame has only the DC bin; irfft(rfft(x) * g, n=1) == Re(g) * x.
            return x + x * self.delta_for(1)[0, :, 0].to(x.dtype)
        return x + _freq_adaptor(x, self.delta_for(num_frames).contiguous(), dim=1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_frames={self.num_frames}"


def temporal_flicker(video: torch.Tensor, cutoff: float = 0.25) -> float:
    """Flicker metric: mean absolute temporal high-frequency energy.

    ``video (B, T, C, H, W)`` (any range). The rfft along time is taken per pixel and channel; the
    mean of ``|X(f)| / T`` over bins with ``f >= cutoff`` cycles/frame (DC excluded) is returned. A static
    video scores 0; an alternating ±a flicker scores about ``a / (number of high bins)`` per bin averaged.
    """
    if video.dim() != 5:
        raise ValueError(f"expected (B, T, C, H, W), got {tuple(video.shape)}")
    t = video.shape[1]
    spec = torch.fft.rfft(video.detach().float(), dim=1).abs() / t
    freqs = torch.arange(spec.shape[1], dtype=torch.float32) / t
    high = (freqs >= cutoff) & (freqs > 0)
    if not bool(high.any()):
        return 0.0
    return float(spec[:, high].mean())
