"""The ``diffusion`` stage-2 backend: image + unified flow → video with a flow-conditioned CogVideoX DiT.

Data path (AnimateAnything Fig. 3, stage 2)::

    image (1,3,H,W) ──3D VAE──► image latent (first latent frame, zeros after) ─┐
    flow  (1,T,2,H,W) px ──FlowCodec──► flow latent (1,T',C_f,h,w) ──────────────┼─► FlowCtrlTransformer
    text ──T5 (or precomputed prompt_embeds)────────────────────────────────────┘     × scheduler steps
    latents ──3D VAE decode──► video (1,T,3,H,W) in [0,1]

:class:`FlowCtrlVideoPipeline` is a diffusers ``DiffusionPipeline`` (so CPU offload, sequential offload,
``save_pretrained`` and progress bars are diffusers' own); :class:`DiffusionBackend` adapts it to the
``RenderBackend`` protocol of :mod:`flowctrl.pipelines.backends` and routes clips longer than the
model's window to :mod:`flowctrl.pipelines.long_video`.

**Pixel-space mode.** A pipeline without ``vae`` works on pixels (latent = ``2·video − 1``, spatial and
temporal factor 1) and one without ``flow_codec`` feeds ``flow / pixel_flow_scale`` as the flow latent.
Only tiny models trained on CPU (tests, ``benchmarks/bench_video_model.py``) use it; real checkpoints
carry the CogVideoX VAE and the FlowCodec.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from einops import rearrange
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXDPMScheduler
from diffusers.loaders import CogVideoXLoraLoaderMixin
from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import CogVideoXImageToVideoPipeline
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from flowctrl.errors import InputError, MissingWeightsError
from flowctrl.hub import is_hub_id
from flowctrl.pipelines.backend_options import check_render_options
from flowctrl.pipelines.backends import RenderResult
from flowctrl.pipelines.flow_guidance import GuidanceConfig

from flowctrl.models.transformer import FlowCtrlTransformer

logger = logging.getLogger("flowctrl")
# the memory / quality presets ship inside the package (package data), so wheel installs have them too
PIPELINE_PRESETS = Path(__file__).resolve().parents[1] / "presets" / "pipeline"

__all__ = ["FlowCtrlVideoPipeline", "DiffusionBackend", "GuidanceConfig", "load_memory_preset", "SCHEDULERS"]

SCHEDULERS = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}
WEIGHTS_HINT = (
    "pass --model PATH_OR_HUB_ID: a flowctrl stage-2 folder (FlowCtrlVideoPipeline.save_pretrained / "
    "`flowctrl train video` output) or a CogVideoX image-to-video folder, e.g. after "
    "`huggingface-cli download THUDM/CogVideoX-5b-I2V --local-dir ckpt/cogvideox-5b-i2v`"
)
ProgressCallback = Callable[[str, int, int], None]


class FlowCtrlVideoPipeline(DiffusionPipeline, CogVideoXLoraLoaderMixin):
    """Flow-conditioned image-to-video diffusion (CogVideoX schedulers, T5 text, 3D VAE, FlowCodec).

    Components: ``transformer`` (:class:`FlowCtrlTransformer`), ``scheduler`` (CogVideoX DDIM/DPM),
    optional ``vae`` (``AutoencoderKLCogVideoX``), ``flow_codec`` (``FlowCodec``), ``tokenizer`` +
    ``text_encoder`` (T5). Counts transformer calls in ``self.num_function_evals``.
    """

    model_cpu_offload_seq = "text_encoder->flow_codec->transformer->vae"
    _optional_components = ["tokenizer", "text_encoder", "vae", "flow_codec"]

    # Reused unchanged from diffusers' CogVideoX image-to-video pipeline.
    _get_t5_prompt_embeds = CogVideoXImageToVideoPipeline._get_t5_prompt_embeds
    prepare_extra_step_kwargs = CogVideoXImageToVideoPipeline.prepare_extra_step_kwargs

    def __init__(
        self,
        transformer: FlowCtrlTransformer,
        scheduler: Union[CogVideoXDDIMScheduler, CogVideoXDPMScheduler],
        vae: Optional[AutoencoderKLCogVideoX] = None,
        flow_codec: Optional[Any] = None,
        tokenizer: Optional[Any] = None,
        text_encoder: Optional[Any] = None,
        pixel_flow_scale: float = 8.0,
    ) -> None:
        super().__init__()
        self.register_modules(
            transformer=transformer, scheduler=scheduler, vae=vae, flow_codec=flow_codec,
            tokenizer=tokenizer, text_encoder=text_encoder,
        )
        self.register_to_config(pixel_flow_scale=float(pixel_flow_scale))
        self.num_function_evals = 0

    # ------------------------------------------------------------------ geometry
    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    @property
    def temporal_factor(self) -> int:
        return int(self.vae.config.temporal_compression_ratio) if self.vae is not None else 1

    def latent_frames(self, num_frames: int) -> int:
        return (num_frames - 1) // self.temporal_factor + 1

    def valid_num_frames(self, num_frames: int) -> int:
        """Smallest frame count ≥ ``num_frames`` the VAE accepts (``1 + k·temporal_factor``)."""
        k = math.ceil(max(num_frames - 1, 0) / self.temporal_factor)
        return 1 + k * self.temporal_factor

    @property
    def window_frames(self) -> int:
        """Video frames the transformer was trained for (``sample_frames``, e.g. 49 for CogVideoX)."""
        cfg = self.transformer.config
        latent = (cfg.sample_frames - 1) // cfg.temporal_compression_ratio + 1
        return (latent - 1) * self.temporal_factor + 1

    # ------------------------------------------------------------------ encoders
    def encode_prompt(
        self,
        prompt: Optional[Union[str, List[str]]],
        negative_prompt: Optional[Union[str, List[str]]],
        prompt_embeds: Optional[torch.Tensor],
        negative_prompt_embeds: Optional[torch.Tensor],
        batch_size: int,
        need_negative: bool,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """T5 embeddings ``(B, L, D_text)`` for prompt and (if guidance needs it) negative prompt."""
        cfg = self.transformer.config
        has_t5 = self.text_encoder is not None and self.tokenizer is not None

        def embed(text: Optional[Union[str, List[str]]], given: Optional[torch.Tensor], field: str) -> torch.Tensor:
            if given is not None:
                if given.dim() != 3 or given.shape[-1] != cfg.text_embed_dim:
                    raise InputError.at(None, field, f"has shape {tuple(given.shape)}",
                                        f"give (B, L, {cfg.text_embed_dim}) text embeddings")
                return given.to(device=device, dtype=dtype).expand(batch_size, -1, -1)
            if has_t5:
                texts = [text or ""] * batch_size if not isinstance(text, list) else text
                return self._get_t5_prompt_embeds(texts, 1, cfg.max_text_seq_length, device, dtype)
            if text:
                raise MissingWeightsError.at(None, field.replace("_embeds", ""), "text given but this checkpoint has no T5 text encoder",
                                             "pass precomputed prompt_embeds or a checkpoint folder with tokenizer/ and text_encoder/")
            # Without a text encoder the empty prompt is the all-zero embedding (what tiny models train with).
            return torch.zeros(batch_size, cfg.max_text_seq_length, cfg.text_embed_dim, device=device, dtype=dtype)

        pos = embed(prompt, prompt_embeds, "prompt_embeds")
        neg = embed(negative_prompt, negative_prompt_embeds, "negative_prompt_embeds") if need_negative else None
        if neg is not None and neg.shape != pos.shape:
            raise InputError.at(None, "negative_prompt_embeds", f"has shape {tuple(neg.shape)}, prompt_embeds {tuple(pos.shape)}",
                                "give both with the same shape")
        return pos, neg

    def encode_video(self, video: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``video (B, T, 3, H, W)`` in [0, 1] → latent ``(B, T', C, h, w)`` (scaled like CogVideoX)."""
        x = video * 2.0 - 1.0
        if self.vae is None:
            return x
        x = rearrange(x.to(dtype=self.vae.dtype, device=self.vae.device), "b t c h w -> b c t h w")
        dist = self.vae.encode(x).latent_dist
        latent = dist.sample(generator) if generator is not None else dist.mode()
        scale = self.vae.config.scaling_factor
        latent = latent / scale if self.vae.config.invert_scale_latents else latent * scale
        return rearrange(latent, "b c t h w -> b t c h w")

    def encode_image(self, image: torch.Tensor, num_frames: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The I2V condition: image latent in latent frame 0, zeros after → ``(B, T', C, h, w)``."""
        first = self.encode_video(image[:, None], generator)
        pad = torch.zeros(first.shape[0], self.latent_frames(num_frames) - 1, *first.shape[2:], dtype=first.dtype, device=first.device)
        return torch.cat([first, pad], dim=1)

    def encode_flow(self, flow: torch.Tensor) -> torch.Tensor:
        """``flow (B, T, 2, H, W)`` px → flow latent ``(B, T', C_f, h, w)`` (FlowCodec, or scaled pixels)."""
        if self.flow_codec is not None:
            return self.flow_codec.encode(flow.to(device=self.flow_codec.device, dtype=self.flow_codec.dtype))
        return flow / self.config.pixel_flow_scale

    def warped_reference(self, image: torch.Tensor, flow: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The reference image forward-warped along ``flow`` (softmax splatting, the warp backend's
        :func:`~flowctrl.render.warp_renderer.render_warp` without hole filling).

        ``image (B, 3, H, W)`` in [0, 1], ``flow (B, T, 2, H, W)`` px → ``(video (B, T, 3, H, W), coverage
        (B, T, 1, H, W))`` with coverage 1 where some reference pixel lands and 0 in holes (video 0 there).
        """
        from flowctrl.render.warp_renderer import render_warp

        videos, covers = [], []
        for i in range(flow.shape[0]):
            r = render_warp(image[i:i + 1].float().cpu(), flow[i:i + 1].float().cpu(), fill="none")
            videos.append(r.video[0])
            covers.append((~r.holes[0]).float())
        return torch.stack(videos).to(flow.device), torch.stack(covers).to(flow.device)

    def encode_flow_condition(self, flow: torch.Tensor, image: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Everything the flow branch reads: the flow latent (:meth:`encode_flow`) and, for transformers
        with ``flow_warp_channels > 0``, the latent of the reference ``image (B, 3, H, W)`` forward-warped
        along the flow (:meth:`warped_reference`, encoded like a video) and its coverage mask (video frames
        ``0, f, 2f, …`` for a temporal factor ``f``, area-averaged to the latent grid) → ``(B, T', C, h, w)``.
        """
        flow_latents = self.encode_flow(flow)
        extra = int(getattr(self.transformer.config, "flow_warp_channels", 0) or 0)
        if not extra:
            return flow_latents
        if image is None:
            raise InputError.at(None, "image", "is needed: this model's flow branch reads the warped reference image",
                                "pass the reference image to encode_flow_condition")
        warped, cover = self.warped_reference(image, flow)
        warped_latents = self.encode_video(warped).to(flow_latents.device, flow_latents.dtype)
        b, t, c, h, w = warped_latents.shape
        cover = cover[:, :: self.temporal_factor][:, :t]
        cover = torch.nn.functional.interpolate(cover.flatten(0, 1), size=(h, w), mode="area").view(b, t, 1, h, w)
        if c + 1 != extra:
            raise InputError.at(None, "transformer.flow_warp_channels", f"is {extra}, the warped image gives {c} + 1 channels",
                                f"use flow_warp_channels = {c + 1} (latent channels + coverage) for this VAE")
        return torch.cat([flow_latents, warped_latents, cover.to(flow_latents)], dim=2)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, T', C, h, w)`` → video ``(B, T, 3, H, W)`` in [0, 1]."""
        if self.vae is None:
            video = latents
        else:
            scale = self.vae.config.scaling_factor
            x = rearrange(latents, "b t c h w -> b c t h w").to(self.vae.dtype)
            x = x * scale if self.vae.config.invert_scale_latents else x / scale
            video = rearrange(self.vae.decode(x).sample, "b c t h w -> b t c h w")
        return ((video.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def rotary_embedding(self, latent_frames: int, h: int, w: int, device: torch.device):
        """CogVideoX 3D RoPE for a ``(T', h, w)`` latent grid, or ``None`` for sin-cos models."""
        cfg = self.transformer.config
        if not cfg.use_rotary_positional_embeddings:
            return None
        from diffusers.models.embeddings import get_3d_rotary_pos_embed
        from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import get_resize_crop_region_for_grid

        p, p_t = cfg.patch_size, cfg.patch_size_t
        gh, gw = h // p, w // p
        base_w, base_h = cfg.sample_width // p, cfg.sample_height // p
        if p_t is None:
            crops = get_resize_crop_region_for_grid((gh, gw), base_w, base_h)
            return get_3d_rotary_pos_embed(cfg.attention_head_dim, crops, (gh, gw), latent_frames, device=device)
        return get_3d_rotary_pos_embed(cfg.attention_head_dim, None, (gh, gw), (latent_frames + p_t - 1) // p_t,
                                       grid_type="slice", max_size=(base_h, base_w), device=device)

    # ------------------------------------------------------------------ denoising
    def prepare_noise(self, shape: Tuple[int, ...], generator: Optional[torch.Generator], device: torch.device,
                      dtype: torch.dtype) -> torch.Tensor:
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype) * self.scheduler.init_noise_sigma

    def model_output(self, latents: torch.Tensor, t: torch.Tensor, cond: "DenoiseCondition") -> torch.Tensor:
        """One guided transformer evaluation → the scheduler's target prediction ``(B, T', C, h, w)``."""
        rows = cond.guidance.rows()
        x = self.scheduler.scale_model_input(latents, t)
        x = torch.cat([x, cond.image_latents], dim=2)
        n = latents.shape[0]
        xs = torch.cat([x] * len(rows))
        text = torch.cat([cond.prompt_embeds if pos else cond.negative_prompt_embeds for pos, _ in rows])
        flow_scale = torch.tensor([s for _, s in rows for _ in range(n)], device=x.device, dtype=x.dtype)
        flow = torch.cat([cond.flow_latents] * len(rows)) if cond.flow_latents is not None else None
        ofs = None if self.transformer.config.ofs_embed_dim is None else xs.new_full((1,), 2.0)
        out = self.transformer(
            hidden_states=xs, encoder_hidden_states=text, timestep=t.expand(xs.shape[0]), flow_latents=flow,
            flow_scale=flow_scale if flow is not None else None, ofs=ofs, image_rotary_emb=cond.rotary,
            return_dict=False,
        )[0]
        self.num_function_evals += 1
        return cond.guidance.combine(out.float())

    def denoise(
        self,
        latents: torch.Tensor,
        cond: "DenoiseCondition",
        timesteps: torch.Tensor,
        *,
        start: int = 0,
        stop: Optional[int] = None,
        state: Optional[Dict[str, Any]] = None,
        generator: Optional[torch.Generator] = None,
        eta: float = 0.0,
        on_step: Optional[Callable[[int, torch.Tensor, torch.Tensor, Dict[str, Any]], None]] = None,
    ) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """Run scheduler steps ``start .. stop-1`` of ``timesteps`` on the loop every stage-2 model shares
        (:func:`flowctrl.pipelines.denoisers.loop.run_steps`, with :class:`~flowctrl.pipelines.denoisers.trained.FlowCtrlDenoiser`).

        ``state`` carries the DPM solver's previous x0 estimate between calls (phased inference resumes
        mid-schedule). ``on_step(i, latents_before, model_out, state)`` is called before each update.
        Returns ``(latents, state)``.
        """
        from flowctrl.pipelines.denoisers.loop import run_steps
        from flowctrl.pipelines.denoisers.trained import FlowCtrlDenoiser

        def progress(i: int, t: torch.Tensor, x: torch.Tensor) -> None:
            if cond.callback is not None:
                cond.callback("denoise", cond.progress_offset + i - start + 1, cond.progress_total)

        return run_steps(FlowCtrlDenoiser(self, generator, eta), latents, cond, timesteps, start=start, stop=stop,
                         state=dict(state or {}), on_output=on_step, after_step=progress)

    def x0_and_noise(self, latents: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Split ``z_t`` into the clean estimate and the noise estimate ``n(t)`` (paper 004 eq. 10)."""
        alpha = self.scheduler.alphas_cumprod.to(latents.device)[int(t)].float()
        a, s = alpha.sqrt(), (1 - alpha).sqrt()
        z = latents.float()
        kind = self.scheduler.config.prediction_type
        if kind == "v_prediction":
            x0, eps = a * z - s * model_out, s * z + a * model_out
        elif kind == "sample":  # the model predicts x0 itself
            x0 = model_out
            eps = (z - a * x0) / s.clamp_min(1e-6)
        else:  # epsilon
            eps = model_out
            x0 = (z - s * eps) / a
        return x0, eps

    def renoise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``z_t = √ᾱ_t · x0 + √(1−ᾱ_t) · noise``."""
        alpha = self.scheduler.alphas_cumprod.to(x0.device)[int(t)].float()
        return alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise

    def build_condition(
        self,
        image: torch.Tensor,
        flow: torch.Tensor,
        *,
        prompt=None,
        negative_prompt=None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        guidance: Optional[GuidanceConfig] = None,
        generator: Optional[torch.Generator] = None,
        callback: Optional[ProgressCallback] = None,
    ) -> "DenoiseCondition":
        """Encode image, flow and text once for a window of ``flow.shape[1]`` frames."""
        device = self._execution_device
        dtype = self.transformer.dtype
        guidance = guidance or GuidanceConfig()
        b, t, _, h, w = flow.shape
        if image.shape[-2:] != (h, w):
            raise InputError.at(None, "image", f"is {tuple(image.shape[-2:])} but the flow is {(h, w)}", "resize one to the other")
        f = self.spatial_factor * self.transformer.config.patch_size
        if h % f or w % f:
            raise InputError.at(None, "height/width", f"{h}x{w} is not a multiple of {f}",
                                f"use a size divisible by {f} (e.g. --height {h // f * f or f} --width {w // f * f or f})")
        need_neg = guidance.use_text
        pos, neg = self.encode_prompt(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, b, need_neg, device, dtype)
        image_latents = self.encode_image(image.to(device), t, generator).to(dtype)
        flow_latents = self.encode_flow_condition(flow.to(device).float(), image.to(device).float()).to(dtype)
        # CogVideoX 1.5 (temporal patches of p_t latent frames), as diffusers' I2V pipeline: denoise `pad`
        # extra latent frames (image latent still in frame 0, zeros after) and drop the first `pad` ones
        # before decoding; the flow is aligned with the kept frames (front-padded with its frame 0).
        p_t = self.transformer.config.patch_size_t or 1
        pad = (-image_latents.shape[1]) % p_t
        if pad:
            image_latents = torch.cat([image_latents, torch.zeros_like(image_latents[:, :pad])], dim=1)
            flow_latents = torch.cat([flow_latents[:, :pad], flow_latents], dim=1)
        rotary = self.rotary_embedding(image_latents.shape[1], image_latents.shape[-2], image_latents.shape[-1], device)
        cond = DenoiseCondition(image_latents, flow_latents, pos, neg, rotary, guidance, callback)
        cond.pad_frames = pad
        return cond

    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor,
        flow: torch.Tensor,
        *,
        prompt: Optional[Union[str, List[str]]] = None,
        negative_prompt: Optional[Union[str, List[str]]] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 6.0,
        flow_guidance_scale: float = 1.0,
        generator: Optional[torch.Generator] = None,
        latents: Optional[torch.Tensor] = None,
        eta: float = 0.0,
        callback: Optional[ProgressCallback] = None,
        output_type: str = "pt",
    ) -> torch.Tensor:
        """Generate one clip of ``T = flow.shape[1]`` frames (``T = 1 + k·temporal_factor``).

        Args:
            image: ``(B, 3, H, W)`` float in [0, 1], the first frame.
            flow: ``(B, T, 2, H, W)`` pixels, reference form (``flow[:, 0] == 0``).
            guidance_scale / flow_guidance_scale: text / flow guidance (:class:`GuidanceConfig`).
            output_type: ``"pt"`` → video ``(B, T, 3, H, W)`` in [0, 1]; ``"latent"`` → latents.
        """
        num_frames = flow.shape[1]
        if self.valid_num_frames(num_frames) != num_frames:
            raise InputError.at(None, "num_frames", f"{num_frames} does not fit the VAE",
                                f"use 1 + k*{self.temporal_factor} frames (e.g. {self.valid_num_frames(num_frames)})")
        cond = self.build_condition(
            image, flow, prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            guidance=GuidanceConfig(guidance_scale, flow_guidance_scale), generator=generator, callback=callback,
        )
        timesteps = self.set_timesteps(num_inference_steps)
        cond.progress_total = len(timesteps)
        if latents is None:
            latents = self.prepare_noise(tuple(cond.image_latents.shape[:2]) + (self.transformer.config.out_channels,)
                                         + tuple(cond.image_latents.shape[3:]), generator, cond.image_latents.device,
                                         cond.image_latents.dtype)
        latents, _ = self.denoise(latents, cond, timesteps, generator=generator, eta=eta)
        latents = latents[:, cond.pad_frames:]
        if output_type == "latent":
            return latents
        video = self.decode_latents(latents)
        self.maybe_free_model_hooks()
        return video

    def set_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        if num_inference_steps < 1:
            raise InputError.at(None, "num_inference_steps", f"is {num_inference_steps}", "use at least 1 step")
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        return self.scheduler.timesteps

    # ------------------------------------------------------------------ memory
    def apply_memory_options(
        self,
        *,
        cpu_offload: str = "none",
        vae_slicing: bool = False,
        vae_tiling: bool = False,
        device: Optional[Union[str, torch.device]] = None,
    ) -> "FlowCtrlVideoPipeline":
        """``cpu_offload``: ``"none"`` | ``"model"`` (one component on the GPU at a time) | ``"sequential"``
        (layer by layer; least memory, slowest). VAE slicing decodes one clip at a time, tiling decodes
        spatial tiles. Attention always runs through torch SDPA (diffusers' CogVideoX processors)."""
        if self.vae is not None:
            if vae_slicing:
                self.vae.enable_slicing()
            if vae_tiling:
                self.vae.enable_tiling()
        if cpu_offload not in ("none", "model", "sequential"):
            raise InputError.at(None, "cpu_offload", f"unknown value '{cpu_offload}'", "use none, model or sequential")
        if cpu_offload != "none" and not torch.cuda.is_available():
            logger.info("cpu_offload=%s needs a CUDA device; running everything on the CPU", cpu_offload)
            cpu_offload = "none"
        if cpu_offload == "model":
            self.enable_model_cpu_offload()
        elif cpu_offload == "sequential":
            self.enable_sequential_cpu_offload()
        elif device is not None:
            if str(device).startswith("cuda") and not torch.cuda.is_available():
                raise InputError.at(None, "device", f"'{device}' is not available on this machine",
                                    "use the cpu preset / device: cpu, or run on a GPU machine")
            self.to(device)
        return self

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_folder(
        cls,
        path_or_hub_id: Union[str, os.PathLike],
        *,
        torch_dtype: Optional[torch.dtype] = None,
        scheduler: Optional[str] = None,
        load_text_encoder: bool = True,
        **transformer_kwargs: Any,
    ) -> "FlowCtrlVideoPipeline":
        """Load a flowctrl stage-2 folder (``save_pretrained`` output) or convert a CogVideoX-I2V folder.

        Subfolders: ``transformer/`` (FlowCtrlTransformer, or a CogVideoX transformer → converted with
        :meth:`FlowCtrlTransformer.from_cogvideox`), ``scheduler/``, optional ``vae/``, ``flow_codec/``,
        ``tokenizer/`` + ``text_encoder/``. Hub ids resolve through the local cache only.
        """
        root = _resolve_folder(path_or_hub_id)
        from flowctrl.io_safety import check_safetensors_folder

        check_safetensors_folder(root, "model")  # safetensors only: a .bin-only part is one line
        tconfig = _read_json(root / "transformer" / "config.json", path_or_hub_id)
        vae = AutoencoderKLCogVideoX.from_pretrained(root / "vae", torch_dtype=torch_dtype, use_safetensors=True) if (root / "vae").is_dir() else None
        flow_codec = None
        if (root / "flow_codec").is_dir():
            from flowctrl.models.flow_codec import FlowCodec

            flow_codec = FlowCodec.from_pretrained(root / "flow_codec", torch_dtype=torch_dtype, use_safetensors=True)
        elif vae is not None:
            flow_codec = _codec_from_vae(vae, root)
        if tconfig.get("_class_name") == FlowCtrlTransformer.__name__:
            transformer = FlowCtrlTransformer.from_pretrained(root / "transformer", torch_dtype=torch_dtype, use_safetensors=True)
        else:
            if flow_codec is not None:
                transformer_kwargs.setdefault("flow_in_channels", int(flow_codec.config.latent_channels))
            transformer = FlowCtrlTransformer.from_cogvideox(root, torch_dtype=torch_dtype, **transformer_kwargs)
            logger.info("converted CogVideoX transformer from %s: the flow branch is untrained (zero gate)", root)
        sched_cls = SCHEDULERS.get(scheduler) if scheduler else None
        if scheduler and sched_cls is None:
            raise InputError.at(None, "scheduler", f"unknown scheduler '{scheduler}'", "use ddim or dpm")
        if (root / "scheduler" / "scheduler_config.json").is_file():
            saved = _read_json(root / "scheduler" / "scheduler_config.json", root).get("_class_name", "")
            sched = (sched_cls or SCHEDULERS["dpm" if "DPM" in saved else "ddim"]).from_pretrained(root / "scheduler")
        else:
            sched = (sched_cls or CogVideoXDDIMScheduler)()
        tokenizer = text_encoder = None
        if load_text_encoder and (root / "text_encoder").is_dir() and (root / "tokenizer").is_dir():
            from transformers import AutoTokenizer, T5EncoderModel

            tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
            text_encoder = T5EncoderModel.from_pretrained(root / "text_encoder", torch_dtype=torch_dtype, use_safetensors=True)
        index = root / "model_index.json"
        pixel_flow_scale = float(_read_json(index, root).get("pixel_flow_scale", 8.0)) if index.is_file() else 8.0
        return cls(transformer=transformer, scheduler=sched, vae=vae, flow_codec=flow_codec,
                   tokenizer=tokenizer, text_encoder=text_encoder, pixel_flow_scale=pixel_flow_scale)


class DenoiseCondition:
    """Everything fixed during one window's denoising (latent-space tensors on the execution device)."""

    def __init__(self, image_latents, flow_latents, prompt_embeds, negative_prompt_embeds, rotary, guidance,
                 callback=None) -> None:
        self.image_latents = image_latents
        self.flow_latents = flow_latents
        self.prompt_embeds = prompt_embeds
        self.negative_prompt_embeds = negative_prompt_embeds
        self.rotary = rotary
        self.guidance = guidance
        self.callback = callback
        self.progress_offset = 0
        self.progress_total = 0
        self.pad_frames = 0


def _read_json(path: Path, source: Any) -> Dict[str, Any]:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        field = f"{path.parent.name}/{path.name}"  # e.g. transformer/config.json
        raise MissingWeightsError.at(source, field, "not found", WEIGHTS_HINT) from None
    except json.JSONDecodeError as error:
        raise MissingWeightsError.at(path, None, f"is not valid JSON ({error.msg})", "re-download or re-save the checkpoint") from None


def _resolve_folder(path_or_hub_id: Union[str, os.PathLike]) -> Path:
    src = str(path_or_hub_id)
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise MissingWeightsError.at(src, None, "is a file, not a checkpoint folder", WEIGHTS_HINT)
    if is_hub_id(src):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(src, local_files_only=True))
        except Exception:  # noqa: BLE001 - any hub failure means "not available offline"
            pass
    raise MissingWeightsError.at(src, "--model", "no such local folder (and not in the local Hugging Face cache)", WEIGHTS_HINT)


def _codec_from_vae(vae: AutoencoderKLCogVideoX, root: Path) -> Any:
    """A FlowCodec around the checkpoint's VAE when the folder has no trained ``flow_codec/``."""
    from flowctrl.models.flow_codec import FlowCodec

    logger.info("no flow_codec/ in %s: wrapping the video VAE as the flow codec (FlowCodec.from_cogvideox_vae)", root)
    codec = FlowCodec.from_cogvideox_vae(vae)
    return codec if vae.dtype == torch.float32 else codec.to(dtype=vae.dtype)


def load_memory_preset(name_or_path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read a preset from ``flowctrl/presets/pipeline/<name>.yaml`` (package data) or a path: memory and quality options."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = PIPELINE_PRESETS / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in PIPELINE_PRESETS.glob("*.yaml"))
        raise InputError.at(name_or_path, "preset", "not found", f"use one of {', '.join(available) or 'a YAML file'}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise InputError.at(path, None, f"is not valid YAML ({type(error).__name__})", "fix the file") from None
    if not isinstance(data, dict):
        raise InputError.at(path, None, "must hold a mapping of options", "see flowctrl/presets/pipeline/24gb.yaml")
    return data


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


class DiffusionBackend:
    """``RenderBackend`` around :class:`FlowCtrlVideoPipeline` (registered as ``"diffusion"``).

    Args:
        pipeline: a ready pipeline, or
        model: path / hub id for :meth:`FlowCtrlVideoPipeline.from_folder` (``--model``).
        preset: memory preset name (``24gb``, ``80gb``, ``cpu``) or YAML path; explicit args win.
        num_inference_steps, guidance_scale, flow_guidance_scale, scheduler ("ddim" | "dpm"):
            sampling options (defaults 50, 6.0, 1.0, the checkpoint's scheduler).
        long_video: ``"phased"`` (paper 004 §3.4) or ``"chain"`` (last frame → next window) for clips
            longer than the model's window; ``gamma`` (0.8) and ``omega`` (0.2) as in the paper.
        cpu_offload, vae_slicing, vae_tiling, dtype, device: memory options.
        lora: folder (or file) of LoRA weights to load on the transformer (e.g. the rank-16 static-camera
            motion LoRA written by ``flowctrl train video`` to ``final/lora``); ``lora_scale`` its weight.
    """

    def __init__(
        self,
        pipeline: Optional[FlowCtrlVideoPipeline] = None,
        *,
        model: Optional[Union[str, os.PathLike]] = None,
        preset: Optional[str] = None,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        flow_guidance_scale: Optional[float] = None,
        scheduler: Optional[str] = None,
        long_video: Optional[str] = None,
        gamma: Optional[float] = None,
        omega: Optional[float] = None,
        cpu_offload: Optional[str] = None,
        vae_slicing: Optional[bool] = None,
        vae_tiling: Optional[bool] = None,
        dtype: Optional[str] = None,
        device: Optional[str] = None,
        prompt: Optional[str] = None,
        negative_prompt: Optional[str] = None,
        lora: Optional[Union[str, os.PathLike]] = None,
        lora_scale: float = 1.0,
    ) -> None:
        opts: Dict[str, Any] = dict(load_memory_preset(preset)) if preset else {}
        given = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                     flow_guidance_scale=flow_guidance_scale, scheduler=scheduler, long_video=long_video, gamma=gamma,
                     omega=omega, cpu_offload=cpu_offload, vae_slicing=vae_slicing, vae_tiling=vae_tiling, dtype=dtype,
                     device=device)
        opts.update({k: v for k, v in given.items() if v is not None})
        self.num_inference_steps = int(opts.get("num_inference_steps", 50))
        self.guidance_scale = float(opts.get("guidance_scale", 6.0))
        self.flow_guidance_scale = float(opts.get("flow_guidance_scale", 1.0))
        self.long_video = str(opts.get("long_video", "phased"))
        if self.long_video not in ("phased", "chain"):
            raise InputError.at(None, "long_video", f"unknown mode '{self.long_video}'", "use phased or chain")
        self.gamma = float(opts.get("gamma", 0.8))
        self.omega = float(opts.get("omega", 0.2))
        self.prompt, self.negative_prompt = prompt, negative_prompt
        if pipeline is None:
            if model is None:
                raise MissingWeightsError.at(None, "diffusion backend", "needs model weights and none were given", WEIGHTS_HINT)
            torch_dtype = _DTYPES.get(str(opts.get("dtype", "float32")))
            if torch_dtype is None:
                raise InputError.at(None, "dtype", f"unknown dtype '{opts.get('dtype')}'", "use float32, bfloat16 or float16")
            pipeline = FlowCtrlVideoPipeline.from_folder(model, torch_dtype=torch_dtype, scheduler=opts.get("scheduler"))
        elif opts.get("scheduler"):
            sched_cls = SCHEDULERS.get(opts["scheduler"])
            if sched_cls is None:
                raise InputError.at(None, "scheduler", f"unknown scheduler '{opts['scheduler']}'", "use ddim or dpm")
            pipeline.scheduler = sched_cls.from_config(pipeline.scheduler.config)
        if lora is not None:
            if not Path(lora).exists():
                raise MissingWeightsError.at(lora, "lora", "not found",
                                             "give the folder holding pytorch_lora_weights.safetensors (train output final/lora)")
            from flowctrl.io_safety import check_safetensors_folder

            check_safetensors_folder(lora, "--lora")
            pipeline.load_lora_weights(str(lora), adapter_name="flowctrl_lora", use_safetensors=True)
            pipeline.set_adapters(["flowctrl_lora"], [float(lora_scale)])
        pipeline.apply_memory_options(
            cpu_offload=str(opts.get("cpu_offload", "none")), vae_slicing=bool(opts.get("vae_slicing", False)),
            vae_tiling=bool(opts.get("vae_tiling", False)), device=opts.get("device"),
        )
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline = pipeline
        self.last_num_function_evals = 0

    @classmethod
    def from_pretrained(cls, path_or_hub_id: Union[str, os.PathLike], **kwargs: Any) -> "DiffusionBackend":
        """Backend from a stage-2 folder / CogVideoX-I2V folder / cached hub id."""
        return cls(model=path_or_hub_id, **kwargs)

    def __repr__(self) -> str:
        return (f"DiffusionBackend(steps={self.num_inference_steps}, guidance={self.guidance_scale}, "
                f"flow_guidance={self.flow_guidance_scale}, long_video={self.long_video!r})")

    def save_pretrained(self, path: Union[str, os.PathLike]) -> None:
        self.pipeline.save_pretrained(path)

    def render(self, image: torch.Tensor, unified: Any, *, num_frames: int, generator: Optional[torch.Generator] = None,
               callback: Optional[ProgressCallback] = None, **kw: Any) -> "RenderResult":
        """The video ``(1, T, 3, H, W)`` in [0, 1] from ``image (1,3,H,W)`` and ``unified.flow (1,T,2,H,W)``.

        Extra ``kw``: prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_inference_steps,
        guidance_scale, flow_guidance_scale, long_video, gamma, omega. Same ``generator`` → same video.
        """
        from flowctrl.pipelines.long_video import generate_long_video

        flow = unified.flow if hasattr(unified, "flow") else unified
        if flow.dim() != 5 or flow.shape[2] != 2:
            raise InputError.at(None, "flow", f"has shape {tuple(flow.shape)}", "give (1, T, 2, H, W) pixels")
        if flow.shape[1] != num_frames:
            raise InputError.at(None, "num_frames", f"is {num_frames} but the flow has {flow.shape[1]} frames",
                                "compute the flow for the same number of frames")
        if num_frames < 2:
            raise InputError.at(None, "num_frames", f"is {num_frames}", "use at least 2 frames")
        check_render_options("diffusion", kw)
        args = dict(
            prompt=kw.get("prompt") if kw.get("prompt") is not None else self.prompt,
            negative_prompt=kw.get("negative_prompt") if kw.get("negative_prompt") is not None else self.negative_prompt,
            prompt_embeds=kw.get("prompt_embeds"), negative_prompt_embeds=kw.get("negative_prompt_embeds"),
            num_inference_steps=int(kw["num_inference_steps"] if kw.get("num_inference_steps") is not None
                                    else self.num_inference_steps),
            guidance_scale=float(kw["guidance_scale"]) if kw.get("guidance_scale") is not None else self.guidance_scale,
            flow_guidance_scale=float(kw["flow_guidance_scale"]) if kw.get("flow_guidance_scale") is not None else self.flow_guidance_scale,
        )
        # The latent grid needs H, W divisible by (VAE factor × patch); work at the next multiple and
        # resize the video back, so any size the warp backend takes works here too.
        h, w = flow.shape[-2:]
        f = self.pipeline.spatial_factor * self.pipeline.transformer.config.patch_size
        hh, ww = -(-h // f) * f, -(-w // f) * f
        if (hh, ww) != (h, w):
            image = torch.nn.functional.interpolate(image, size=(hh, ww), mode="bilinear", align_corners=False)
            scale = flow.new_tensor([ww / w, hh / h]).view(1, 1, 2, 1, 1)
            flow = torch.nn.functional.interpolate(flow.flatten(0, 1), size=(hh, ww), mode="bilinear",
                                                   align_corners=False).view(flow.shape[0], -1, 2, hh, ww) * scale
        result = generate_long_video(
            self.pipeline, image, flow, mode=kw.get("long_video") or self.long_video,
            gamma=float(kw["gamma"]) if kw.get("gamma") is not None else self.gamma, omega=float(kw["omega"]) if kw.get("omega") is not None else self.omega,
            generator=generator, callback=callback, **args,
        )
        self.last_num_function_evals = result.num_function_evals
        self.last_result = result
        video = result.video
        if (hh, ww) != (h, w):
            video = torch.nn.functional.interpolate(video.flatten(0, 1), size=(h, w), mode="bilinear",
                                                    align_corners=False).view(video.shape[0], -1, 3, h, w)
        return RenderResult(video.clamp(0.0, 1.0))
