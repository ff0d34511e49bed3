"""Camera Reference Model (CRM): the reference branch of seed 000's synchronized latent diffusion.

Input: the reference-image latent (repeated over the T' latent frames) plus the camera trajectory as
Plücker rays ``(B, T, 6, H, W)`` (``flowctrl.flow.camera.plucker_rays``), conv-encoded to the token grid
by a pose-guider-style :class:`~flowctrl.models.guider.ConditionEncoder`. It runs the same CogVideoX block
type as the FGM (its own width/depth), at the same diffusion timestep, and returns the hidden states after
every block — the keys/values the FGM's reference attention appends (Animate Anyone's ReferenceNet).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config

from flowctrl.models.fgm import _CogVideoXTrunk, _init_from_cogvideox
from flowctrl.models.guider import ConditionEncoder, latent_num_frames


class CameraReferenceModel(_CogVideoXTrunk, ConfigMixin):
    """CRM: image latent + Plücker camera embedding → per-layer tokens (list of (B, N, D)).

    Args (config): ``image_latent_channels`` (input channels), ``camera_channels`` (6 for Plücker rays),
    ``condition_channels`` (camera encoder widths), ``camera_base_depth`` (with a residual FGM: the coarse
    base it refines also carries the camera's reprojection flow of a fronto-parallel plane at this z-depth,
    in the units of the camera translation — :func:`flowctrl.models.fgm.coarse_base`; None = the camera
    reaches the FGM through reference attention only), the rest as ``diffusers.CogVideoXTransformer3DModel``.
    """

    @register_to_config
    def __init__(
        self,
        image_latent_channels: int = 4,
        num_attention_heads: int = 2,
        attention_head_dim: int = 16,
        time_embed_dim: int = 64,
        num_layers: int = 2,
        patch_size: int = 2,
        sample_height: int = 8,
        sample_width: int = 8,
        sample_frames: int = 17,
        temporal_compression_ratio: int = 4,
        use_rotary_positional_embeddings: bool = False,
        attention_bias: bool = True,
        text_embed_dim: int = 16,
        norm_eps: float = 1e-5,
        camera_channels: int = 6,
        condition_channels: Sequence[int] = (16, 32, 64, 128),
        camera_base_depth: Optional[float] = None,
    ) -> None:
        super().__init__()
        if camera_base_depth is not None and not camera_base_depth > 0:
            raise ValueError(f"camera_base_depth must be a positive z-depth (or None), got {camera_base_depth}")
        inner = self._build_trunk(image_latent_channels, num_attention_heads, attention_head_dim, time_embed_dim,
                                  num_layers, patch_size, sample_height, sample_width, sample_frames,
                                  temporal_compression_ratio, use_rotary_positional_embeddings, attention_bias,
                                  text_embed_dim, norm_eps)
        self.camera_encoder = ConditionEncoder(camera_channels, inner, condition_channels, temporal_compression_ratio)

    @property
    def hidden_dim(self) -> int:
        return self.config.num_attention_heads * self.config.attention_head_dim

    def forward(
        self,
        image_latents: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        plucker: Optional[torch.Tensor] = None,
        num_frames: Optional[int] = None,
    ) -> List[torch.Tensor]:
        """Reference features.

        Args:
            image_latents: (B, 1, C_img, h, w) reference-image latent (repeated to T' frames here).
            timestep: (B,) or scalar, the FGM's current timestep.
            plucker: (B, T, 6, H, W) camera rays; None = no camera (a static reference).
            num_frames: video frames T when ``plucker`` is None (sets T').
        Returns:
            list over layers of (B, T'·(h/p)·(w/p), D) hidden states after each block.
        """
        b, _, c, h, w = image_latents.shape
        t = plucker.shape[1] if plucker is not None else (num_frames or 1)
        tl = latent_num_frames(t, self.config.temporal_compression_ratio)
        x = image_latents[:, :1].expand(b, tl, c, h, w)
        tokens = self.patch_embed(self._no_text(x), x)
        if plucker is not None:
            tokens = tokens + self.camera_encoder(plucker.to(tokens.dtype))
        emb = self._time(timestep, b, tokens.dtype)
        ehs = tokens[:, :0]
        rope = self._rope(tl, h, w, tokens.device)
        states = []
        for block in self.transformer_blocks:
            tokens, ehs = self._run_block(block, tokens, ehs, emb, rope, None)
            states.append(tokens)
        return states

    @classmethod
    def from_cogvideox(cls, path: Union[str, os.PathLike], subfolder: Optional[str] = "transformer",
                       **overrides) -> "CameraReferenceModel":
        """Start the CRM from a pretrained CogVideoX transformer (Animate Anyone initialises its
        ReferenceNet from the denoiser's weights the same way)."""
        return _init_from_cogvideox(cls, path, subfolder, overrides)
