"""CogVideoX image-to-video (CogVideoX-5b-I2V, CogVideoX1.5-5B-I2V) as a :class:`Denoiser`.

Mirrors ``CogVideoXImageToVideoPipeline.__call__`` step by step, calling the pipeline's own
``encode_prompt``, ``prepare_latents``, ``_prepare_rotary_positional_embeddings``,
``prepare_extra_step_kwargs`` and ``decode_latents``. Latent layout ``(B, T', C, h, w)``; CFG branches
run as one batched transformer call; DDIM or DPM (``old_pred_original_sample`` carried in the state).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from diffusers import CogVideoXDPMScheduler

from flowctrl.pipelines.denoisers.base import Conditioning, Denoiser


class CogVideoXDenoiser(Denoiser):
    family = "cogvideox"
    layout = "BTCHW"

    @property
    def size_multiple(self) -> int:
        return self.spatial_factor * int(self.pipe.transformer.config.patch_size)

    @property
    def fixed_size(self) -> Optional[tuple]:
        """CogVideoX-5b-I2V's learned positional embeddings exist only at its training size (480×720);
        diffusers refuses any other size, so the backend works there and resizes back."""
        cfg = self.pipe.transformer.config
        if not cfg.use_learned_positional_embeddings:
            return None
        return cfg.sample_height * self.spatial_factor, cfg.sample_width * self.spatial_factor

    @property
    def window_frames(self) -> int:
        """``sample_frames`` of the transformer config (49 for CogVideoX-5b-I2V, 81 for 1.5)."""
        return self.valid_num_frames(int(self.pipe.transformer.config.sample_frames))

    @property
    def variant(self) -> str:
        return "cogvideox1.5" if self.pipe.transformer.config.patch_size_t else "cogvideox"

    def latent_hw(self, height: int, width: int) -> tuple:
        return height // self.spatial_factor, width // self.spatial_factor

    def _pad_frames(self, num_frames: int) -> int:
        """CogVideoX 1.5: extra latent frames so the count divides ``patch_size_t`` (dropped at the end)."""
        p_t = self.pipe.transformer.config.patch_size_t
        latent_frames = (num_frames - 1) // self.temporal_factor + 1
        return (p_t - latent_frames % p_t) % p_t if p_t else 0

    def noise_shape(self, num_frames: int, height: int, width: int) -> tuple:
        t = (num_frames - 1) // self.temporal_factor + 1 + self._pad_frames(num_frames)
        h, w = self.latent_hw(height, width)
        return (1, t, self.pipe.transformer.config.in_channels // 2, h, w)

    def prepare(self, image: Any, *, num_frames: int, height: int, width: int, prompt: Optional[str],
                negative_prompt: Optional[str], guidance_scale: float, noise: torch.Tensor,
                generator: Optional[torch.Generator], guidance_scale_2: Optional[float] = None):
        pipe, device = self.pipe, self.device
        cfg = guidance_scale > 1.0
        pos, neg = pipe.encode_prompt(prompt=prompt or "", negative_prompt=negative_prompt,
                                      do_classifier_free_guidance=cfg, num_videos_per_prompt=1,
                                      max_sequence_length=pipe.transformer.config.max_text_seq_length, device=device)
        pad = self._pad_frames(num_frames)
        frames = num_frames + pad * self.temporal_factor
        pixels = pipe.video_processor.preprocess(image, height=height, width=width).to(device, dtype=pos.dtype)
        latents, image_latents = pipe.prepare_latents(
            pixels, 1, pipe.transformer.config.in_channels // 2, frames, height, width, pos.dtype, device,
            generator, noise)
        rotary = (pipe._prepare_rotary_positional_embeddings(height, width, latents.size(1), device)
                  if pipe.transformer.config.use_rotary_positional_embeddings else None)
        ofs = None if pipe.transformer.config.ofs_embed_dim is None else latents.new_full((1,), fill_value=2.0)
        cond = Conditioning(prompt_embeds=pos, negative_prompt_embeds=neg, image=image_latents,
                            guidance_scale=float(guidance_scale), num_frames=num_frames, height=height, width=width,
                            extras={"rotary": rotary, "ofs": ofs, "pad": pad, "generator": generator})
        return latents, cond

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """The posterior mean of the 3D VAE, scaled like the pipeline's image latents; CogVideoX 1.5's
        padding frames (copies of latent frame 0) in front, as :meth:`noise_shape` lays them out."""
        pipe = self.pipe
        x = (video * 2.0 - 1.0).to(device=self.device, dtype=pipe.vae.dtype).permute(0, 2, 1, 3, 4)
        z = pipe.vae.encode(x).latent_dist.mode().permute(0, 2, 1, 3, 4)
        s = pipe.vae_scaling_factor_image
        z = z / s if pipe.vae.config.invert_scale_latents else z * s
        pad = self._pad_frames(video.shape[1])
        if pad:
            z = torch.cat([z[:, :1].expand(-1, pad, -1, -1, -1), z], dim=1)
        return z.to(self.pipe.transformer.dtype)

    def latent_mask(self, mask: torch.Tensor, num_latent_frames: int) -> torch.Tensor:
        pad = self._pad_frames(mask.shape[1])
        m = super().latent_mask(mask, num_latent_frames - pad)
        return torch.cat([torch.zeros_like(m[:, :pad]), m], dim=1) if pad else m

    def model_output(self, x: torch.Tensor, i: int, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        pipe = self.pipe
        inp = torch.cat([x] * 2) if cond.cfg else x
        inp = pipe.scheduler.scale_model_input(inp, t)
        img = torch.cat([cond.image] * 2) if cond.cfg else cond.image
        inp = torch.cat([inp, img], dim=2)
        text = torch.cat([cond.negative_prompt_embeds, cond.prompt_embeds]) if cond.cfg else cond.prompt_embeds
        with pipe.transformer.cache_context("cond_uncond"):
            pred = pipe.transformer(hidden_states=inp, encoder_hidden_states=text, timestep=t.expand(inp.shape[0]),
                                    ofs=cond.extras["ofs"], image_rotary_emb=cond.extras["rotary"],
                                    return_dict=False)[0]
        self.branch_evals += inp.shape[0]
        self.expert_log.append("transformer")
        pred = pred.float()
        if cond.cfg:
            uncond, text_pred = pred.chunk(2)
            pred = uncond + cond.guidance_scale * (text_pred - uncond)
        return pred

    def begin(self, start: int) -> Dict[str, Any]:
        return {"old_pred_original_sample": None}

    def step(self, pred: torch.Tensor, i: int, timesteps: torch.Tensor, x: torch.Tensor,
             state: Dict[str, Any], cond: Conditioning) -> torch.Tensor:
        extra = self.pipe.prepare_extra_step_kwargs(cond.extras["generator"], 0.0)
        t = timesteps[i]
        if isinstance(self.scheduler, CogVideoXDPMScheduler):
            x, state["old_pred_original_sample"] = self.scheduler.step(
                pred, state["old_pred_original_sample"], t, timesteps[i - 1] if i > 0 else None, x, **extra,
                return_dict=False)
        else:
            x = self.scheduler.step(pred, t, x, **extra, return_dict=False)[0]
        return x.to(cond.prompt_embeds.dtype)

    def finalize(self, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return x[:, cond.extras["pad"]:]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        frames = self.pipe.decode_latents(latents)  # (B, 3, T, H, W) in [-1, 1]
        return (frames.float().permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1)
