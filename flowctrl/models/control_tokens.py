"""Control tokens: the FGM's sparse controls as a token sequence in the CogVideoX blocks' text stream.

A flowctrl extension of seed 000's FGM. The pose-guider-style :class:`~flowctrl.models.guider.ConditionEncoder`
hands the controls to the DiT as a map added to the patch tokens, 16 px per token: a control reaches a distant
token on the same surface only through self-attention between patch tokens. CogVideoX blocks already attend
jointly over a second token stream (the text tokens of text-to-video); here that stream carries one token per
(control pixel, latent frame), so every patch token can look up every control directly, by what the control
looks like and where it is — the mechanism that made the refinement net T learn (its attention output over
the controls, :class:`~flowctrl.models.refiner.RefinementNet`).

A token's features: the control's condition values (bounded dx, dy, mask) on the frames its latent frame covers
(grouped like the causal VAE groups frames), the reference image's ``patch × patch`` RGB window around it, Fourier
features of its position, and a sinusoid of its latent-frame index; a two-layer MLP maps them to the token width.
A clip without controls gets one learned "no controls" token per latent frame; the padding of a batch's shorter
control lists is masked out of the attention (:func:`control_attention_mask`), so a clip's output does not depend
on what it is batched with.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from flowctrl.models.guider import group_frames


def true_indices(on: torch.Tensor, max_count: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Where each row of ``on`` (B, P) bool is True, in order, padded: (index (B,K) long, valid (B,K) bool), K ≥ 1.

    With ``max_count``, a row with more True entries keeps ``max_count`` of them, evenly spaced in that order.
    Padding entries are in range (they point at False positions) and not valid.
    """
    counts = on.sum(1, keepdim=True)                                                 # (B, 1)
    k = max(1, int(counts.max()) if on.numel() else 0)
    if max_count is not None:
        k = min(k, max_count)
    order = torch.argsort((~on).to(torch.int8), dim=1, stable=True)                # True entries first, in order
    j = torch.arange(k, device=on.device).expand(len(on), k)
    if max_count is not None:
        spaced = (j * (counts - 1) / max(max_count - 1, 1)).round().long()
        j = torch.where(counts > max_count, spaced, j)
    return torch.gather(order, 1, j), j < counts


def control_pixels(mask: torch.Tensor, max_tokens: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixels that carry a control on any frame, at most ``max_tokens`` per clip (evenly subsampled in raster order).

    mask (B,T,1,H,W) → (index (B,N) long flat pixel indices y·W + x, valid (B,N) bool); N ≥ 1 (padding invalid).
    """
    return true_indices((mask > 0).any(dim=1).flatten(1), max_tokens)


def fourier_features(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """x (..., D) in [0, 1] → (..., 2·D·num_freqs): sin and cos of 2^k·π·x, k = 0 … num_freqs−1."""
    freqs = math.pi * 2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)
    angles = (x[..., None] * freqs).flatten(-2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def control_attention_mask(keep: torch.Tensor, num_patch_tokens: int, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """The attention keyword arguments that hide padded control tokens from every query.

    keep (B, L) bool over the control tokens → ``{"attention_mask": (B, 1, L + num_patch_tokens)}`` additive
    (0 = attend, the dtype's lowest value = masked), the form diffusers' CogVideoX attention processors take.
    """
    patch = keep.new_ones(keep.shape[0], num_patch_tokens)
    allowed = torch.cat([keep, patch], dim=1)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=keep.device).masked_fill(~allowed, torch.finfo(dtype).min)
    return {"attention_mask": mask[:, None]}


class ControlTokenEncoder(nn.Module):
    """(condition (B,T,3,H,W), image (B,3,H,W) in [0, 1]) → control tokens (B, T'·N, out_dim) + which to attend to.

    Args:
        out_dim: token width of the transformer (the blocks' ``dim``).
        max_tokens: controls kept per clip (N ≤ max_tokens; more are evenly subsampled).
        temporal_compression: frames per latent frame (4 for the causal 3D VAE).
        patch: side of the RGB window around each control (odd).
        num_freqs: Fourier frequencies per position coordinate.
        hidden: MLP width.
    """

    def __init__(self, out_dim: int, max_tokens: int = 32, temporal_compression: int = 4, patch: int = 5,
                 num_freqs: int = 4, hidden: int = 64) -> None:
        super().__init__()
        if patch % 2 != 1:
            raise ValueError(f"control-token patch must be odd, got {patch}")
        self.max_tokens, self.temporal_compression, self.patch, self.num_freqs = max_tokens, temporal_compression, patch, num_freqs
        self.frame_dim = 8
        features = 3 * temporal_compression + 3 * patch * patch + 4 * num_freqs + self.frame_dim
        self.mlp = nn.Sequential(nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))
        self.empty = nn.Parameter(torch.zeros(out_dim))

    def forward(self, condition: torch.Tensor, image: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """condition (B,T,≥3,H,W): channels 0–2 = (tanh(dx/s)·m, tanh(dy/s)·m, m) (:func:`~flowctrl.models.fgm.sparse_condition`);
        image (B,3,H,W) in [0, 1] or None (zeros). → tokens (B, T'·N, out_dim), latent-frame major, and keep
        (B, T'·N) bool: False for padding (a clip without controls keeps its "no controls" tokens)."""
        b, t, _, h, w = condition.shape
        cond = condition[:, :, :3]
        index, valid = control_pixels(cond[:, :, 2:3], self.max_tokens)
        n = index.shape[1]
        flat = cond.flatten(3)                                                   # (B,T,3,H·W)
        values = torch.gather(flat, 3, index[:, None, None].expand(b, t, 3, n))  # (B,T,3,N)
        grouped = group_frames(values[..., None], self.temporal_compression)     # (B,T',r·3,N,1)
        grouped = grouped[..., 0].transpose(2, 3)                                # (B,T',N,r·3)
        tl = grouped.shape[1]
        if image is None:
            image = cond.new_zeros(b, 3, h, w)
        windows = nn.functional.unfold(image.to(cond.dtype) * 2 - 1, self.patch, padding=self.patch // 2)  # (B,3k²,H·W)
        windows = torch.gather(windows, 2, index[:, None].expand(b, windows.shape[1], n)).transpose(1, 2)  # (B,N,3k²)
        xy = torch.stack([(index % w).to(cond.dtype) / max(1, w - 1), (index // w).to(cond.dtype) / max(1, h - 1)], dim=-1)
        per_point = torch.cat([windows, fourier_features(xy, self.num_freqs)], dim=-1)   # (B,N,·)
        frames = get_timestep_embedding(torch.arange(tl, device=cond.device), self.frame_dim, max_period=100).to(cond.dtype)
        feats = torch.cat([grouped, per_point[:, None].expand(-1, tl, -1, -1),
                           frames[None, :, None].expand(b, -1, n, -1)], dim=-1)        # (B,T',N,F)
        tokens = self.mlp(feats)
        real = valid[:, None, :, None].to(tokens.dtype)
        tokens = tokens * real + self.empty.to(tokens.dtype) * (1 - real)
        keep = valid.clone()
        keep[:, 0] |= ~valid.any(dim=1)  # no controls: attend to the empty token
        return tokens.flatten(1, 2), keep[:, None].expand(-1, tl, -1).flatten(1)


def control_affinity_loss(patch_tokens: torch.Tensor, control_tokens: torch.Tensor, condition: torch.Tensor,
                          layers: torch.Tensor, max_tokens: int, patch_px: int) -> torch.Tensor:
    """Auxiliary loss (synthetic data): a patch token p and a control token q of the same latent frame should say,
    through p·q/√D, how much of p's pixels lie on the surface of q's control pixel — the same-surface supervision
    that made the refinement net T learn (:func:`~flowctrl.models.refiner.layer_affinity_loss`), given to the
    FGM's tokens. Binary cross-entropy with that fraction as a soft target, over valid controls.

    Args:
        patch_tokens: (B, T'·S, D), S = (H/patch_px)·(W/patch_px) tokens per latent frame, raster order.
        control_tokens: (B, T'·N, D) from :class:`ControlTokenEncoder` (latent-frame major).
        condition: (B, T, ≥3, H, W) the FGM's condition (channel 2 = mask), to find the control pixels again.
        layers: (B, 1, H, W) integer surface id of every reference pixel.
        max_tokens: the encoder's ``max_tokens``; patch_px: pixels per token side (8 × the patch size).
    Returns: scalar.
    """
    b, _, _, h, w = condition.shape
    index, valid = control_pixels(condition[:, :, 2:3], max_tokens)                      # (B, N)
    n = index.shape[1]
    tl = control_tokens.shape[1] // n
    d = patch_tokens.shape[-1]
    ids = layers.reshape(b, h * w).long()
    ids = ids - ids.amin(dim=1, keepdim=True)
    count = int(ids.max()) + 1
    onehot = nn.functional.one_hot(ids, count).transpose(1, 2).reshape(b, count, h, w).to(patch_tokens.dtype)
    share = nn.functional.avg_pool2d(onehot, patch_px).flatten(2)                          # (B, L, S)
    control_layer = torch.gather(ids, 1, index)                                              # (B, N)
    target = torch.gather(share, 1, control_layer[:, :, None].expand(b, n, share.shape[2])).transpose(1, 2)  # (B, S, N)
    p = patch_tokens.reshape(b, tl, -1, d)
    q = control_tokens.reshape(b, tl, n, d)
    logits = torch.einsum("btsd,btnd->btsn", p, q) / d ** 0.5
    weight = valid[:, None, None, :].expand_as(logits).to(logits.dtype)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, target[:, None].expand_as(logits), weight=weight,
                                                           reduction="sum")
    return loss / weight.sum().clamp_min(1.0)
