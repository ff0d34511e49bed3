"""The model-agnostic denoiser interface the ``guided`` backend's dual-clock loop runs on.

A :class:`Denoiser` wraps one of diffusers' own image-to-video pipelines (its components, its
``encode_prompt``, ``prepare_latents`` and image encoder) and exposes what a sampling loop needs, in
that model's own latent layout and normalization:

* :meth:`Denoiser.prepare` — prompt embeddings, the image condition and the start noise ``x_T``;
* :meth:`Denoiser.encode_video` / :meth:`Denoiser.decode` — video ↔ latents (the pipeline's scaling);
* :meth:`Denoiser.latent_mask` — a pixel mask on the latent grid;
* :meth:`Denoiser.model_output` — the guided (CFG) model prediction at step ``i``;
* :meth:`Denoiser.step` — the scheduler update; :meth:`Denoiser.add_noise` — its forward process.

Latent layouts differ (CogVideoX ``(B, T', C, h, w)``, Wan ``(B, C, T', h, w)``); the loop never
looks inside them, it only blends tensors of one layout with a mask broadcast in that layout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F


@dataclass
class Conditioning:
    """Everything fixed during one video's denoising (tensors on the execution device).

    prompt_embeds / negative_prompt_embeds: text embeddings from the pipeline's ``encode_prompt``
    (negative None without CFG). image: the pipeline's image condition (CogVideoX: image latents
    ``(B,T',C,h,w)``; Wan: mask + latents ``(B,4+C,T',h,w)``, or the first-frame latent for TI2V).
    guidance_scale (and guidance_scale_2 for Wan 2.2's low-noise expert). extras: family specifics.
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: Optional[torch.Tensor]
    image: torch.Tensor
    guidance_scale: float
    num_frames: int
    height: int
    width: int
    guidance_scale_2: Optional[float] = None
    extras: Dict[str, Any] = field(default_factory=dict)

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0


class Denoiser:
    """Base class: shared geometry and the scheduler's forward process; families fill in the rest.

    Attributes:
        pipe: the diffusers pipeline (its components are used as they are).
        family: ``"cogvideox"`` | ``"wan"`` (``"wan2.2-a14b"``, ``"wan2.2-ti2v"`` variants via :attr:`variant`).
        branch_evals: transformer branch evaluations so far (a batched CFG call counts 2).
        expert_log: per denoising step, the name of the transformer used (Wan 2.2 switches experts).
    """

    family = "base"
    layout = "BTCHW"  # where the frame axis is: "BTCHW" (dim 1) or "BCTHW" (dim 2)

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.branch_evals = 0
        self.expert_log: List[str] = []

    # ---------------------------------------------------------------- geometry
    @property
    def variant(self) -> str:
        return self.family

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first (diffusers' image-to-video pipelines carry it)."""
        return int(self.pipe.vae_scale_factor_temporal)

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel."""
        return int(self.pipe.vae_scale_factor_spatial)

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (VAE factor × transformer patch)."""
        raise NotImplementedError

    def valid_num_frames(self, num_frames: int) -> int:
        """Smallest frame count ≥ ``num_frames`` the VAE takes (``1 + k·temporal_factor``)."""
        k = math.ceil(max(num_frames - 1, 0) / self.temporal_factor)
        return 1 + k * self.temporal_factor

    @property
    def fixed_size(self) -> Optional[tuple]:
        """``(H, W)`` pixels when the model only runs at its training size (else None)."""
        return None

    @property
    def window_frames(self) -> int:
        """Video frames the model was trained to generate in one go (longer clips run in windows)."""
        return 81

    @property
    def frame_dim(self) -> int:
        return 1 if self.layout == "BTCHW" else 2

    @property
    def transformers(self) -> Dict[str, torch.nn.Module]:
        """The denoising networks by component name (Wan 2.2 has two)."""
        return {"transformer": self.pipe.transformer}

    # ---------------------------------------------------------------- scheduler
    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    @property
    def flow_matching(self) -> bool:
        """True for flow-matching schedulers (``x_t = (1−σ)·z + σ·ε``), False for DDPM-style (``ᾱ_t``)."""
        cfg = self.scheduler.config
        return "FlowMatch" in type(self.scheduler).__name__ or bool(getattr(cfg, "use_flow_sigmas", False)) \
            or getattr(cfg, "prediction_type", None) == "flow_prediction"

    def set_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """The scheduler's timesteps for ``num_inference_steps`` (its own ``set_timesteps``)."""
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        return self.scheduler.timesteps

    def begin(self, start: int) -> Dict[str, Any]:
        """Prepare the scheduler to start at step index ``start``; returns the per-run solver state."""
        if start and hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        return {}

    def add_noise(self, z: torch.Tensor, noise: torch.Tensor, i: int, timesteps: torch.Tensor) -> torch.Tensor:
        """The scheduler's forward process: ``z`` noised to the level of step index ``i`` of ``timesteps``.

        ``i == len(timesteps)`` (after the last step) returns ``z`` itself. Flow matching:
        ``(1−σ_i)·z + σ_i·ε`` with the scheduler's own ``sigmas``; DDPM-style: the scheduler's
        ``add_noise`` at ``t_i`` (``√ᾱ·z + √(1−ᾱ)·ε``).
        """
        if i >= len(timesteps):
            return z
        if self.flow_matching:
            sigma = self.scheduler.sigmas[i].to(device=z.device, dtype=torch.float32)
            return ((1.0 - sigma) * z.float() + sigma * noise.float()).to(z.dtype)
        t = timesteps[i].reshape(1).long()
        return self.scheduler.add_noise(z, noise.to(z), t)

    # ---------------------------------------------------------------- masks
    def latent_mask(self, mask: torch.Tensor, num_latent_frames: int) -> torch.Tensor:
        """``mask (1, T, 1, H, W)`` in pixels → ``(1, T', 1, h, w)`` / ``(1, 1, T', h, w)`` in {0, 1}.

        The causal VAE encodes pixel frames as groups ``[0], [1..k], [k+1..2k], …`` (``k`` the temporal
        factor); latent frame ``j`` reads the first frame of its group (``0, 1, k+1, 2k+1, …``, as the TTM
        code does); nearest resampling to ``(h, w)``; ``> 0.5``.
        """
        h, w = self.latent_hw(mask.shape[-2], mask.shape[-1])
        frames = torch.cat([mask[:, :1], mask[:, 1:: self.temporal_factor]], dim=1)[:, :num_latent_frames].float()
        m = F.interpolate(frames.flatten(0, 1), size=(h, w), mode="nearest").view(mask.shape[0], -1, 1, h, w)
        m = (m > 0.5).float()
        return m if self.layout == "BTCHW" else m.permute(0, 2, 1, 3, 4)

    def latent_hw(self, height: int, width: int) -> tuple:
        raise NotImplementedError

    # ---------------------------------------------------------------- family hooks
    def prepare(self, image: Any, *, num_frames: int, height: int, width: int, prompt: Optional[str],
                negative_prompt: Optional[str], guidance_scale: float, noise: torch.Tensor,
                generator: Optional[torch.Generator], guidance_scale_2: Optional[float] = None):
        """``(x_T, Conditioning)``: the pipeline's start latents from ``noise`` and its conditions."""
        raise NotImplementedError

    def noise_shape(self, num_frames: int, height: int, width: int) -> tuple:
        """Shape of the latents (and of the one noise tensor ``ε``) for a video of that size."""
        raise NotImplementedError

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """``video (1, T, 3, H, W)`` in [0, 1] → latents in this model's layout and normalization."""
        raise NotImplementedError

    def model_output(self, x: torch.Tensor, i: int, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        raise NotImplementedError

    def step(self, pred: torch.Tensor, i: int, timesteps: torch.Tensor, x: torch.Tensor,
             state: Dict[str, Any], cond: Conditioning) -> torch.Tensor:
        raise NotImplementedError

    def finalize(self, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Latents after the loop → the latents to decode (drops padding, re-inserts conditions)."""
        return x

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → video ``(1, T, 3, H, W)`` float32 in [0, 1]."""
        raise NotImplementedError
