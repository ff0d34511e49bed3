"""Wan image-to-video as a :class:`Denoiser`: Wan 2.1 I2V (CLIP image embeddings), Wan 2.2 I2V-A14B (two
experts switched at ``boundary_ratio``) and Wan 2.2 TI2V-5B (``expand_timesteps``: frame 0 is the clean
image latent with timestep 0, the rest is denoised).

Mirrors ``WanImageToVideoPipeline.__call__`` step by step, calling the pipeline's own ``encode_prompt``,
``encode_image`` and ``prepare_latents``. Latent layout ``(B, C, T', h, w)``, normalized with the VAE's
``latents_mean`` / ``latents_std``; CFG as two transformer calls per step (as diffusers does).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from flowctrl.pipelines.denoisers.base import Conditioning, Denoiser


class WanDenoiser(Denoiser):
    family = "wan"
    layout = "BCTHW"

    @property
    def _model(self) -> torch.nn.Module:
        return self.pipe.transformer if self.pipe.transformer is not None else self.pipe.transformer_2

    @property
    def variant(self) -> str:
        if self.pipe.config.expand_timesteps:
            return "wan2.2-ti2v"
        if self.pipe.config.boundary_ratio is not None:
            return "wan2.2-a14b"
        return "wan2.1"

    @property
    def transformers(self) -> Dict[str, torch.nn.Module]:
        parts = {"transformer": self.pipe.transformer, "transformer_2": self.pipe.transformer_2}
        return {k: v for k, v in parts.items() if v is not None}

    @property
    def size_multiple(self) -> int:
        return self.spatial_factor * int(self._model.config.patch_size[1])

    def latent_hw(self, height: int, width: int) -> tuple:
        return height // self.spatial_factor, width // self.spatial_factor

    def noise_shape(self, num_frames: int, height: int, width: int) -> tuple:
        h, w = self.latent_hw(height, width)
        return (1, int(self.pipe.vae.config.z_dim), (num_frames - 1) // self.temporal_factor + 1, h, w)

    def _stats(self, device: torch.device, dtype: torch.dtype):
        cfg = self.pipe.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(device, dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(device, dtype)
        return mean, inv_std

    def prepare(self, image: Any, *, num_frames: int, height: int, width: int, prompt: Optional[str],
                negative_prompt: Optional[str], guidance_scale: float, noise: torch.Tensor,
                generator: Optional[torch.Generator], guidance_scale_2: Optional[float] = None):
        pipe, device = self.pipe, self.device
        check_ftfy()
        if pipe.config.boundary_ratio is not None and guidance_scale_2 is None:
            guidance_scale_2 = guidance_scale
        cfg = guidance_scale > 1.0
        pos, neg = pipe.encode_prompt(prompt=prompt or "", negative_prompt=negative_prompt,
                                      do_classifier_free_guidance=cfg, num_videos_per_prompt=1, device=device,
                                      max_sequence_length=512)  # __call__'s default
        dtype = self._model.dtype
        pos = pos.to(dtype)
        neg = neg.to(dtype) if neg is not None else None
        image_embeds = None
        if pipe.transformer is not None and pipe.transformer.config.image_dim is not None:
            image_embeds = pipe.encode_image(image, device).to(dtype)
        pixels = pipe.video_processor.preprocess(image, height=height, width=width).to(device, dtype=torch.float32)
        out = pipe.prepare_latents(pixels, 1, pipe.vae.config.z_dim, height, width, num_frames, torch.float32,
                                   device, generator, noise)
        extras: Dict[str, Any] = {"image_embeds": image_embeds}
        if pipe.config.expand_timesteps:
            latents, condition, extras["first_frame_mask"] = out
        else:
            latents, condition = out
        boundary = pipe.config.boundary_ratio
        extras["boundary_timestep"] = None if boundary is None else boundary * pipe.scheduler.config.num_train_timesteps
        cond = Conditioning(prompt_embeds=pos, negative_prompt_embeds=neg, image=condition,
                            guidance_scale=float(guidance_scale), num_frames=num_frames, height=height, width=width,
                            guidance_scale_2=None if guidance_scale_2 is None else float(guidance_scale_2),
                            extras=extras)
        return latents, cond

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """The VAE's posterior mode (``argmax``, as ``prepare_latents`` encodes the image), normalized
        ``(z − mean) / std``: the space the transformer denoises."""
        pipe = self.pipe
        x = (video * 2.0 - 1.0).to(device=self.device, dtype=pipe.vae.dtype).permute(0, 2, 1, 3, 4)
        z = pipe.vae.encode(x).latent_dist.mode().float()
        mean, inv_std = self._stats(z.device, z.dtype)
        return (z - mean) * inv_std

    def _expert(self, t: torch.Tensor, cond: Conditioning):
        boundary = cond.extras["boundary_timestep"]
        if boundary is None or t >= boundary:
            return "transformer", self.pipe.transformer, cond.guidance_scale
        return "transformer_2", self.pipe.transformer_2, cond.guidance_scale_2

    def model_output(self, x: torch.Tensor, i: int, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        name, model, scale = self._expert(t, cond)
        dtype = model.dtype
        if self.pipe.config.expand_timesteps:
            ffm = cond.extras["first_frame_mask"]
            inp = ((1 - ffm) * cond.image + ffm * x).to(dtype)
            timestep = (ffm[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0).expand(x.shape[0], -1)
        else:
            inp = torch.cat([x, cond.image], dim=1).to(dtype)
            timestep = t.expand(x.shape[0])
        kw = dict(hidden_states=inp, timestep=timestep, encoder_hidden_states_image=cond.extras["image_embeds"],
                  return_dict=False)
        with model.cache_context("cond"):
            pred = model(encoder_hidden_states=cond.prompt_embeds, **kw)[0]
        self.branch_evals += x.shape[0]
        if cond.cfg:  # as diffusers: CFG is decided by the first scale, each expert uses its own
            with model.cache_context("uncond"):
                uncond = model(encoder_hidden_states=cond.negative_prompt_embeds, **kw)[0]
            self.branch_evals += x.shape[0]
            pred = uncond + scale * (pred - uncond)
        self.expert_log.append(name)
        return pred

    def step(self, pred: torch.Tensor, i: int, timesteps: torch.Tensor, x: torch.Tensor,
             state: Dict[str, Any], cond: Conditioning) -> torch.Tensor:
        return self.scheduler.step(pred, timesteps[i], x, return_dict=False)[0]

    def finalize(self, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if self.pipe.config.expand_timesteps:
            ffm = cond.extras["first_frame_mask"]
            x = (1 - ffm) * cond.image + ffm * x
        return x

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        z = latents.to(vae.dtype)
        mean, inv_std = self._stats(z.device, z.dtype)
        video = vae.decode(z / inv_std + mean, return_dict=False)[0]  # (B, 3, T, H, W) in [-1, 1]
        return (video.float().permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1)


def check_ftfy() -> None:
    """diffusers' Wan pipelines clean every prompt with ``ftfy`` but import it only when installed (a
    ``NameError`` deep in ``encode_prompt`` otherwise): require it up front with one clear line.
    ``ftfy`` is a dependency of flowctrl's ``guided`` extra."""
    from diffusers.utils import is_ftfy_available

    if not is_ftfy_available():
        from flowctrl.errors import MissingWeightsError

        raise MissingWeightsError.at(None, "ftfy", "is not installed (diffusers' Wan pipelines clean prompts with it)",
                                     "pip install ftfy  (or pip install 'flowctrl[guided]')")
