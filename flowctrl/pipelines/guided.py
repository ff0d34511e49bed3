"""The ``guided`` stage-2 backend: Time-to-Move dual-clock denoising of the warp render with a public
image-to-video model (CogVideoX-I2V, Wan 2.1 / 2.2 I2V, Wan 2.2 TI2V-5B), no training.

Data path::

    image, UnifiedFlow ──warp renderer──► V_warp (1,T,3,H,W), holes
    local_mask carried along the flow / camera-covered pixels, minus holes ──► M (1,T,1,H,W)
    V_warp ──model VAE──► z_ref;  M ──latent grid──► m;  ε ~ generator
    dual_clock_denoise(z_ref, m, ε, t_weak, t_strong)  (flowctrl.pipelines.denoisers.loop)
    ──model VAE decode──► video (1,T,3,H,W) in [0, 1]
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, Optional, Union

import torch
import torch.nn.functional as F

from flowctrl.errors import InputError, MissingWeightsError
from flowctrl.pipelines.backend_options import check_render_options
from flowctrl.pipelines.backends import RenderResult
from flowctrl.pipelines.denoisers import Denoiser, denoiser_for, dual_clock_denoise, load_denoiser
from flowctrl.render.warp_renderer import render_warp

logger = logging.getLogger("flowctrl")

ProgressCallback = Callable[[str, int, int], None]

# Defaults from the paper's code at 50 steps: (t_weak, t_strong) object motion / camera only, guidance.
FAMILY_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "cogvideox": {"steps": 50, "clocks": (4, 9), "camera_clocks": (4, 9), "guidance": 6.0},
    "cogvideox1.5": {"steps": 50, "clocks": (4, 9), "camera_clocks": (4, 9), "guidance": 6.0},
    "wan2.1": {"steps": 50, "clocks": (3, 7), "camera_clocks": (2, 5), "guidance": 5.0},
    "wan2.2-a14b": {"steps": 50, "clocks": (3, 7), "camera_clocks": (2, 5), "guidance": 3.5},
    "wan2.2-ti2v": {"steps": 50, "clocks": (3, 7), "camera_clocks": (2, 5), "guidance": 5.0},
}
GUIDED_HINT = ("pass --model PATH_OR_HUB_ID: a CogVideoXImageToVideoPipeline or WanImageToVideoPipeline folder "
               "(diffusers save_pretrained) or a hub id such as THUDM/CogVideoX-5b-I2V")


def default_clocks(variant: str, num_steps: int, camera_only: bool) -> tuple:
    """The family's ``(t_weak, t_strong)`` at 50 steps, scaled to ``num_steps`` (rounded)."""
    d = FAMILY_DEFAULTS.get(variant, FAMILY_DEFAULTS["cogvideox"])
    weak, strong = d["camera_clocks" if camera_only else "clocks"]
    scale = num_steps / d["steps"]
    w = min(int(round(weak * scale)), num_steps - 1)
    return w, max(w, min(int(round(strong * scale)), num_steps))


def motion_mask(unified: Any, holes: torch.Tensor) -> torch.Tensor:
    """``M (1, T, 1, H, W)`` float {0, 1}: where the controls specify the motion of frame t.

    Camera motion: every validly reprojected (covered) pixel. Local controls only: the controls'
    region (``unified.local_mask`` at frame 0) splatted along the flow like the image (> 0.5).
    Disoccluded holes are never in ``M``.
    """
    covered = ~holes
    if getattr(unified, "w2c", None) is not None:
        return covered.float()
    local = getattr(unified, "local_mask", None)
    if local is None:
        return torch.zeros_like(holes, dtype=torch.float32)
    region = local[:, 0].float().expand(-1, 3, -1, -1)
    carried = render_warp(region.cpu(), unified.flow.float().cpu(), valid=_cpu(getattr(unified, "valid", None)),
                          fill="none").video[:, :, :1]
    return ((carried.to(holes.device) > 0.5) & covered).float()


def _cpu(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if x is None else x.cpu()


def _to_pil(image: torch.Tensor):
    from PIL import Image

    arr = (image[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(arr)


class GuidedBackend:
    """``RenderBackend`` (registered as ``"guided"``): TTM over a :class:`~flowctrl.pipelines.denoisers.Denoiser`.

    Args:
        denoiser: a ready denoiser, or a diffusers I2V pipeline object, or
        model: folder / hub id (``--model``), loaded with :func:`load_denoiser`.
        preset: memory preset (``full``, ``offload``, ``low``, ``cpu``); dtype overrides its dtype.
        num_inference_steps, guidance_scale, t_weak, t_strong: defaults per family
            (:data:`FAMILY_DEFAULTS`; the clocks scale with the step count).
        prompt, negative_prompt: text (the model's own text encoder).
        window: frames per generation (default the model's: 49 CogVideoX, 81 Wan); longer clips run as
            chained windows (:meth:`render`).
    """

    def __init__(self, denoiser: Any = None, *, model: Optional[Union[str, os.PathLike]] = None,
                 preset: Optional[str] = None, dtype: Optional[str] = None, device: Optional[str] = None,
                 num_inference_steps: Optional[int] = None, guidance_scale: Optional[float] = None,
                 t_weak: Optional[int] = None, t_strong: Optional[int] = None, prompt: Optional[str] = None,
                 negative_prompt: Optional[str] = None, fill: str = "push-pull", window: Optional[int] = None) -> None:
        if denoiser is None:
            if model is None:
                raise MissingWeightsError.at(None, "guided backend", "needs a public image-to-video model", GUIDED_HINT)
            denoiser = load_denoiser(model, dtype=dtype, preset=preset, device=device)
        elif not isinstance(denoiser, Denoiser):
            denoiser = denoiser_for(denoiser)
        self.denoiser = denoiser
        d = FAMILY_DEFAULTS.get(denoiser.variant, FAMILY_DEFAULTS["cogvideox"])
        self.num_inference_steps = int(num_inference_steps or d["steps"])
        self.guidance_scale = float(d["guidance"] if guidance_scale is None else guidance_scale)
        self.t_weak, self.t_strong = t_weak, t_strong
        self.prompt, self.negative_prompt, self.fill = prompt, negative_prompt, fill
        self.window = window
        self.last_info: Dict[str, Any] = {}

    @classmethod
    def from_pretrained(cls, model: Union[str, os.PathLike], **kwargs: Any) -> "GuidedBackend":
        return cls(model=model, **kwargs)

    def to(self, device: Union[str, torch.device]) -> "GuidedBackend":
        """Move the model's components to ``device`` (not needed with an offloading preset)."""
        self.denoiser.pipe.to(device)
        return self

    def __repr__(self) -> str:
        return (f"GuidedBackend({self.denoiser.variant}, steps={self.num_inference_steps}, "
                f"guidance={self.guidance_scale}, t_weak={self.t_weak}, t_strong={self.t_strong})")

    def render(self, image: torch.Tensor, unified: Any, *, num_frames: int, generator: Optional[torch.Generator] = None,
               callback: Optional[ProgressCallback] = None, **kw: Any) -> RenderResult:
        """The video ``(1, T, 3, H, W)`` in [0, 1] and its masks ``motion`` (M) and ``holes``.

        Extra ``kw``: prompt, negative_prompt, num_inference_steps, guidance_scale, t_weak, t_strong, fill.
        Same ``generator`` → same video.
        """
        ignored = check_render_options("guided", kw)
        if ignored:
            logger.info("guided backend ignores %s", ", ".join(ignored))
        flow = unified.flow
        if flow.dim() != 5 or flow.shape[2] != 2 or flow.shape[1] != num_frames:
            raise InputError.at(None, "flow", f"has shape {tuple(flow.shape)}", f"give (1, {num_frames}, 2, H, W) pixels")
        pick = lambda k, default: kw[k] if kw.get(k) is not None else default  # noqa: E731
        steps = int(pick("num_inference_steps", self.num_inference_steps))
        local = getattr(unified, "local_mask", None)
        camera_only = getattr(unified, "w2c", None) is not None and (local is None or not bool(local.any()))
        dw, ds = default_clocks(self.denoiser.variant, steps, camera_only)
        t_weak = int(pick("t_weak", self.t_weak if self.t_weak is not None else dw))
        t_strong = int(pick("t_strong", self.t_strong if self.t_strong is not None else max(ds, t_weak)))

        warp = render_warp(image.float().cpu(), flow.float().cpu(), depth=_cpu(getattr(unified, "depth", None)),
                           valid=_cpu(getattr(unified, "valid", None)), K=_cpu(getattr(unified, "K", None)),
                           w2c=_cpu(getattr(unified, "w2c", None)) if getattr(unified, "depth", None) is not None else None,
                           fill=pick("fill", self.fill), callback=callback)
        mask = motion_mask(unified, warp.holes)
        masks = {"motion": mask, "holes": warp.holes}
        args = dict(prompt=pick("prompt", self.prompt), negative_prompt=pick("negative_prompt", self.negative_prompt),
                    num_inference_steps=steps, guidance_scale=float(pick("guidance_scale", self.guidance_scale)),
                    t_weak=t_weak, t_strong=t_strong, callback=callback)
        window = int(pick("window", self.window or self.denoiser.window_frames))
        if window < 2:
            raise InputError.at(None, "window", f"is {window}", "use at least 2 frames (default: the model's)")
        if num_frames <= window:
            return RenderResult(self.generate(image, warp.video, mask, generator=generator, **args), masks)
        return RenderResult(self.generate_long(image, warp.video, mask, window=window, generator=generator, **args),
                            masks)

    @torch.no_grad()
    def generate_long(self, image: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor, *, window: int,
                      generator: Optional[torch.Generator] = None, **kw: Any) -> torch.Tensor:
        """A clip longer than the model's window, as chained windows of ``window`` frames.

        Windows overlap by one frame (:func:`~flowctrl.pipelines.long_video.plan_windows`). Window 1 is TTM
        from the image; window ``k`` is conditioned on the last generated frame of window ``k−1`` (which
        also replaces the first frame of its slice of the warp), follows its own slice of the warp and
        ``M`` (the warp stays relative to the reference image, so errors do not accumulate in the
        guidance), and starts from the **same noise** ``ε`` (drawn once, as TTM's single ε). Phased
        inference (paper 004) does not apply here: it shares the *early* steps across windows, and those
        are exactly where TTM imposes each window's own motion. Transformer branches:
        ``K · (N − t_weak) · CFG``. Returns ``(1, T, 3, H, W)``.
        """
        from flowctrl.pipelines.long_video import plan_windows

        den = self.denoiser
        T, H, W = warped.shape[1], warped.shape[-2], warped.shape[-1]
        window = den.valid_num_frames(window)
        f = den.size_multiple
        noise = torch.randn(den.noise_shape(window, *(den.fixed_size or (-(-H // f) * f, -(-W // f) * f))),
                            generator=generator)
        out = torch.zeros(1, T, 3, H, W)
        evals, experts, windows = 0, [], plan_windows(T, window)
        written = 0
        for j, (s, e) in enumerate(windows):
            img = image if j == 0 else out[:, s].to(image)
            part = warped[:, s:e].clone()
            if j:
                part[:, 0] = img[0].to(part)
            video = self.generate(img, part, mask[:, s:e], generator=generator, noise=noise, **kw)
            out[:, written:e] = video[:, written - s:]
            written = e
            evals += self.last_info["branch_evals"]
            experts += self.last_info["experts"]
        self.last_info.update(branch_evals=evals, experts=experts, windows=windows)
        return out

    @torch.no_grad()
    def generate(self, image: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor, *, prompt: Optional[str],
                 negative_prompt: Optional[str], num_inference_steps: int, guidance_scale: float, t_weak: int,
                 t_strong: int, generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None,
                 callback: Optional[ProgressCallback] = None, output_type: str = "pt") -> torch.Tensor:
        """TTM from a ready warp render: ``image (1,3,H,W)``, ``warped (1,T,3,H,W)`` in [0, 1], ``mask
        (1,T,1,H,W)``. Any H, W, T: worked at the next size multiple / valid frame count, returned at the
        input's. ``noise`` (the model's latent shape) replaces the draw from ``generator``.
        ``output_type="latent"`` returns the final latents (model layout, before decoding)."""
        den = self.denoiser
        _, T, _, H, W = warped.shape
        f = den.size_multiple
        hh, ww = den.fixed_size or (-(-H // f) * f, -(-W // f) * f)
        if den.fixed_size and (hh, ww) != (H, W):
            logger.info("%s runs only at %dx%d: working there and resizing to %dx%d", den.variant, ww, hh, W, H)
        tt = den.valid_num_frames(T)
        if (hh, ww) != (H, W):
            image = F.interpolate(image.float(), size=(hh, ww), mode="bilinear", align_corners=False).clamp(0, 1)
            warped = F.interpolate(warped.flatten(0, 1).float(), size=(hh, ww), mode="bilinear",
                                   align_corners=False).view(1, T, 3, hh, ww).clamp(0, 1)
            mask = F.interpolate(mask.flatten(0, 1).float(), size=(hh, ww), mode="nearest").view(1, T, 1, hh, ww)
        if tt != T:  # hold the last frame (its mask is dropped: the extra frames are free)
            warped = torch.cat([warped, warped[:, -1:].expand(-1, tt - T, -1, -1, -1)], dim=1)
            mask = torch.cat([mask, torch.zeros_like(mask[:, :1]).expand(-1, tt - T, -1, -1, -1)], dim=1)
        device = den.device
        shape = den.noise_shape(tt, hh, ww)
        if noise is None:
            noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
        elif tuple(noise.shape) != tuple(shape):
            raise InputError.at(None, "noise", f"has shape {tuple(noise.shape)}", f"give {tuple(shape)}")
        x_init, cond = den.prepare(_to_pil(image), num_frames=tt, height=hh, width=ww, prompt=prompt,
                                   negative_prompt=negative_prompt, guidance_scale=guidance_scale,
                                   noise=noise.to(device), generator=generator)
        noise = noise.to(device=device, dtype=x_init.dtype)
        z_ref = den.encode_video(warped.to(device)).to(x_init.dtype)
        m = den.latent_mask(mask.to(device), z_ref.shape[den.frame_dim])
        timesteps = den.set_timesteps(num_inference_steps)
        evals0 = den.branch_evals
        den.expert_log = []
        x = dual_clock_denoise(den, x_init, cond, z_ref, m, noise, timesteps, t_weak, t_strong, callback=callback)
        x = den.finalize(x, cond)
        self.last_info = {"t_weak": t_weak, "t_strong": t_strong, "steps": num_inference_steps,
                          "branch_evals": den.branch_evals - evals0, "experts": list(den.expert_log),
                          "z_ref": den.finalize(z_ref, cond) if output_type == "latent" else None}
        if output_type == "latent":
            return x
        video = den.decode(x)[:, :T]
        if hasattr(den.pipe, "maybe_free_model_hooks"):
            den.pipe.maybe_free_model_hooks()
        if (hh, ww) != (H, W):
            video = F.interpolate(video.flatten(0, 1), size=(H, W), mode="bilinear",
                                  align_corners=False).view(1, T, 3, H, W)
        return video.clamp(0, 1).cpu()
