"""Learned stage 1: ``FlowGenerationPipeline`` turns the analytic :class:`UnifiedFlow` into a learned flow.

Two kinds of weights load into it (``flow_pipeline.json`` says which parts a folder holds):

* **diffusion** (seed 000): FGM (+ CRM) sample a flow latent with a diffusers scheduler (DDIM or
  DPM-Solver, ε or v prediction as trained), classifier-free guidance on the sparse control condition;
  the flow codec decodes it to pixels.
* **refiner** (seed 004 §3.2): T refines the Gaussian interpolation of the sparse controls; the camera
  flow of the analytic stage is then composed on top (``F_obj(p) + F_cam(p + F_obj(p))``).

Folder layout (written by ``save_pretrained`` and by ``flowctrl train flow``)::

    flow_pipeline.json   {"components": [...], "sampler": "ddim", "guidance_scale": 2.0, "num_inference_steps": 25}
    fgm/ crm/ codec/ image_codec/ scheduler/ refiner/     (diffusers save_pretrained, safetensors)

Usage::

    pipe = FlowGenerationPipeline.from_pretrained("runs/fgm/final")
    flow = pipe(image, unified, num_inference_steps=25, generator=torch.Generator().manual_seed(0))
    FlowCtrlPipeline(flow_model=pipe)   # or flowctrl generate --flow-model runs/fgm/final
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from flowctrl.errors import InputError, MissingWeightsError
from flowctrl.pipelines.stage1 import Callback, report_progress

CONFIG_NAME = "flow_pipeline.json"
SAMPLERS = ("ddim", "dpm")


def _resize_flow(flow: torch.Tensor, size) -> torch.Tensor:
    b, t, c, h, w = flow.shape
    if (h, w) == tuple(size):
        return flow
    out = F.interpolate(flow.flatten(0, 1), size=size, mode="bilinear", align_corners=False).view(b, t, c, *size)
    if c == 2:  # pixel displacements scale with the frame
        out = out * out.new_tensor([size[1] / w, size[0] / h]).view(1, 1, 2, 1, 1)
    return out


def _resize_mask(mask: torch.Tensor, size) -> torch.Tensor:
    b, t, c, h, w = mask.shape
    if (h, w) == tuple(size):
        return mask
    return (F.adaptive_max_pool2d(mask.float().flatten(0, 1), size) if h >= size[0] and w >= size[1]
            else F.interpolate(mask.float().flatten(0, 1), size=size, mode="nearest")).view(b, t, c, *size)


class FlowGenerationPipeline:
    """Learned densifier. ``__call__(image (1,3,H,W), unified, num_inference_steps, generator, callback) -> (1,T,2,H,W)``."""

    def __init__(self, fgm=None, crm=None, codec=None, image_codec=None, scheduler=None, refiner=None,
                 sampler: str = "ddim", guidance_scale: float = 2.0, num_inference_steps: int = 25) -> None:
        if fgm is None and refiner is None:
            raise ValueError("FlowGenerationPipeline needs an FGM (with codec, image_codec, scheduler) or a refiner")
        if fgm is not None and (codec is None or image_codec is None or scheduler is None):
            raise ValueError("an FGM needs codec, image_codec and scheduler")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}")
        self.fgm, self.crm, self.codec, self.image_codec = fgm, crm, codec, image_codec
        self.scheduler, self.refiner = scheduler, refiner
        self.sampler, self.guidance_scale, self.num_inference_steps = sampler, guidance_scale, num_inference_steps
        self._zero_residual: Dict[Any, Tuple[torch.Tensor, torch.Tensor]] = {}
        for m in self.modules().values():
            m.eval()

    def _zero_residual_pair(self, num_frames: int, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(latent z₀ of a zero residual (1,T',C,h,w), its decoded flow (1,T,2,H,W)) for a residual FGM.

        Two of the three codec passes of a call (at 512² × 49 frames ~2/3 of its time on a CPU) depend only on
        the codec and the size, so repeated calls (API, app) reuse them. Keyed by the size, the codec's weights'
        in-place version counters and its decode method, so fine-tuning, loading weights or moving the codec
        recomputes them."""
        from flowctrl.models.fgm import zero_residual_latent

        params = list(self.codec.parameters())
        key = (num_frames, tuple(size), self.codec.decode, tuple(p._version for p in params),
               params[0].device, params[0].dtype)
        if key not in self._zero_residual:
            zero = zero_residual_latent(self.codec, num_frames, size)
            self._zero_residual = {key: (zero, self.codec.decode(zero, num_frames=num_frames))}  # the latest size only
        return self._zero_residual[key]

    def modules(self) -> Dict[str, torch.nn.Module]:
        names = ("fgm", "crm", "codec", "image_codec", "refiner")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @property
    def device(self) -> torch.device:
        return next(iter(self.modules().values())).device

    # parts that stay float32 whatever dtype the pipeline is cast to: T is small, and its parametric base
    # solves linear systems (no bf16 kernels, and too coarse in bf16)
    FLOAT32_PARTS = ("refiner",)

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (of the FGM; T's is always float32)."""
        return (self.fgm or self.refiner).dtype

    def to(self, device: Union[None, str, torch.device] = None, dtype: Optional[torch.dtype] = None) -> "FlowGenerationPipeline":
        """Move every part to ``device`` and/or cast its weights to ``dtype`` (e.g. ``torch.bfloat16`` on a GPU).
        Whatever the weights' dtype, a call takes and returns float32 flows (the codec decodes in float32);
        :attr:`FLOAT32_PARTS` (T) stay float32."""
        for name, m in self.modules().items():
            m.to(device=device, dtype=None if name in self.FLOAT32_PARTS else dtype)
        return self

    # ------------------------------------------------------------------------------ persistence
    def save_pretrained(self, path: Union[str, os.PathLike]) -> None:
        """Write every part (safetensors) + ``flow_pipeline.json``; temp folder then rename."""
        from flowctrl.io_safety import atomic_path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, folder=True, replace=True) as tmp:
            for name, m in self.modules().items():
                m.save_pretrained(str(tmp / name))
            if self.scheduler is not None:
                self.scheduler.save_pretrained(str(tmp / "scheduler"))
            meta = {"components": sorted(list(self.modules()) + (["scheduler"] if self.scheduler is not None else [])),
                    "sampler": self.sampler, "guidance_scale": self.guidance_scale,
                    "num_inference_steps": self.num_inference_steps}
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=1))

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike], torch_dtype: Optional[torch.dtype] = None,
                        **overrides: Any) -> "FlowGenerationPipeline":
        """Load a folder written by :meth:`save_pretrained` / ``flowctrl train flow`` (``final/``), with the
        weights loaded as ``torch_dtype`` when given (except :attr:`FLOAT32_PARTS`, as in :meth:`to`).

        Raises :class:`MissingWeightsError` naming the folder when it or a part is missing.
        """
        from diffusers import DDIMScheduler

        from flowctrl.models.crm import CameraReferenceModel
        from flowctrl.models.fgm import FlowGenerationModel
        from flowctrl.models.flow_codec import FlowCodec
        from flowctrl.models.refiner import RefinementNet

        root = Path(path)
        cfg_file = root / CONFIG_NAME
        if not cfg_file.is_file():
            raise MissingWeightsError.at(path, CONFIG_NAME, "not found (no learned flow model there)",
                                         "give the final/ folder of `flowctrl train flow`, or omit --flow-model")
        from flowctrl.io_safety import check_safetensors_folder

        check_safetensors_folder(root, "flow_model")  # safetensors only, also for a part's folder
        try:
            meta = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as err:
            raise MissingWeightsError.at(cfg_file, "json", f"is not valid JSON ({err.msg})", "re-save the pipeline") from None
        classes = {"fgm": FlowGenerationModel, "crm": CameraReferenceModel, "codec": FlowCodec,
                   "image_codec": FlowCodec, "refiner": RefinementNet}
        parts: Dict[str, Any] = {}
        for name in meta.get("components", []):
            folder = root / name
            try:
                if name == "scheduler":
                    parts[name] = DDIMScheduler.from_pretrained(str(folder))
                elif name in classes:
                    dtype = None if name in cls.FLOAT32_PARTS else torch_dtype
                    parts[name] = classes[name].from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype,
                                                              use_safetensors=True)
            except (OSError, ValueError, EnvironmentError) as err:
                raise MissingWeightsError.at(folder, name, f"cannot be loaded ({type(err).__name__})",
                                             "re-save the pipeline or retrain") from None
        kw = {k: meta[k] for k in ("sampler", "guidance_scale", "num_inference_steps") if k in meta}
        kw.update(overrides)
        return cls(**parts, **kw)

    # --------------------------------------------------------------------------------- sampling
    def _sampler(self, sampler: str):
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        if sampler == "dpm":
            return DPMSolverMultistepScheduler.from_config(self.scheduler.config)
        return DDIMScheduler.from_config(self.scheduler.config)

    def _static_plucker(self, t: int, h: int, w: int) -> torch.Tensor:
        from flowctrl.flow.camera import plucker_rays
        from flowctrl.flow.camera import default_intrinsics

        return plucker_rays(default_intrinsics(h, w)[None], torch.eye(4).expand(1, t, 4, 4), h, w)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, unified: Any, num_inference_steps: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, callback: Optional[Callback] = None,
                 guidance_scale: Optional[float] = None, sampler: Optional[str] = None,
                 strength: Optional[float] = None) -> torch.Tensor:
        """Learned flow for ``unified`` (a :class:`flowctrl.pipelines.stage1.UnifiedFlow`).

        Args:
            image: (1,3,H,W) in [0,1] at the working size of ``unified``.
            num_inference_steps: denoising steps (diffusion kind; default from the folder's config).
            generator: seeds the initial noise (and DDIM's η noise).
            callback: ``callback(stage, done, total)``: ``"flow encode"`` 0/1 and 1/1 around the image latent,
                ``"flow_model"`` once per denoising step, ``"flow decode"`` 0/1 and 1/1 around the flow
                decode (the codec passes dominate a call on a CPU); T reports ``"flow_model"`` 1/1.
            guidance_scale: classifier-free guidance on the sparse condition (1 = off).
            sampler: ``"ddim"`` or ``"dpm"`` (DPM-Solver++ multistep).
            strength: target motion strength M_s (px/frame, eq. 8; the user's strength control);
                default: M_s of ``unified.flow``.
        Returns:
            flow (1,T,2,H,W) px, reference form.
        """
        if image.dim() != 4 or image.shape[1] != 3:
            raise InputError.at(None, "image", f"has shape {tuple(image.shape)}", "give (1, 3, H, W)")
        dev = self.device
        t_frames = unified.num_frames
        h, w = unified.size
        sparse, mask = unified.sparse_flow.to(dev).float(), unified.sparse_mask.to(dev).float()
        image = image.to(dev).float()
        if self.fgm is None:
            return self._refine(image, unified, sparse, mask, callback)

        mult = 8 * self.fgm.config.patch_size
        hw = (max(mult, round(h / mult) * mult), max(mult, round(w / mult) * mult))
        img = F.interpolate(image, size=hw, mode="bilinear", align_corners=False) if hw != (h, w) else image
        sparse_w, mask_w = _resize_flow(sparse, hw), _resize_mask(mask, hw)
        from flowctrl.models.fgm import camera_base_depth, fgm_condition, plane_camera_flow

        # with a CRM's camera_base_depth the residual base carries the camera's flow: stage 1's own camera flow
        # when ``unified`` has one (the user's depth, or the analytic layer's plane at the trajectory's scene
        # depth, in the trajectory's units), else that of a plane at camera_base_depth (the training scenes' scale)
        camera_base = None
        if self.crm is not None:
            if unified.K is not None and unified.w2c is not None:
                from flowctrl.flow.camera import plucker_rays

                K = unified.K.to(dev).float().clone()
                K[:, 0] *= hw[1] / w
                K[:, 1] *= hw[0] / h
                plucker = plucker_rays(K, unified.w2c.to(dev).float(), hw[0], hw[1])
                if camera_base_depth(self.crm) is not None:
                    given = getattr(unified, "camera_flow", None)
                    camera_base = (_resize_flow(given.to(dev).float(), hw) if given is not None
                                   else plane_camera_flow(K, unified.w2c.to(dev), camera_base_depth(self.crm), hw))
            else:
                plucker = self._static_plucker(t_frames, *hw).to(dev)
        from flowctrl.flow.strength import motion_strength
        from flowctrl.models.guider import latent_num_frames

        if strength is None:
            strength_t = motion_strength(unified.flow.to(dev).float())
        else:
            strength_t = torch.tensor([float(strength)], device=dev)
        # with config.base the FGM denoises the residual over a coarse dense flow of the controls (fgm.py)
        cond, base = fgm_condition(sparse_w, mask_w, self.fgm.config.flow_scale, getattr(self.fgm.config, "base", None),
                                   camera_base)
        uncond = torch.zeros_like(cond)
        # the codec passes are most of a call's time on a CPU (bench_flow_model_call.py): they get stages of
        # their own, so a progress display names the pass that is running instead of looking stuck
        dt = self.dtype  # the models run in their weights' dtype; latents, scheduler and flows stay float32
        cond, uncond, strength_t = cond.to(dt), uncond.to(dt), strength_t.to(dt)
        report_progress(callback, "flow encode", 0)
        img_lat = self.image_codec.encode_channels((img[:, None] * 2 - 1).to(self.image_codec.dtype)).to(dt)
        img = img.to(dt)
        report_progress(callback, "flow encode", 1)
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        sched = self._sampler(sampler or self.sampler)
        steps = num_inference_steps or self.num_inference_steps
        sched.set_timesteps(steps, device=dev)
        shape = (1, latent_num_frames(t_frames), self.codec.config.latent_channels, hw[0] // 8, hw[1] // 8)
        latents = torch.randn(shape, generator=generator, device="cpu").to(dev) * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            x = sched.scale_model_input(latents, t).to(dt)
            tt = t.reshape(1).to(dev)
            refs = self.crm(img_lat, tt, plucker.to(dt)) if self.crm is not None else None
            pred = self.fgm(x, tt, img_lat, cond, strength_t, refs, image=img).sample.float()
            if scale != 1.0:
                pred_u = self.fgm(x, tt, img_lat, uncond, strength_t, refs, image=img).sample.float()
                pred = pred_u + scale * (pred - pred_u)
            latents = sched.step(pred, t, latents, generator=generator).prev_sample
            report_progress(callback, "flow_model", i + 1, len(sched.timesteps))
        report_progress(callback, "flow decode", 0)
        if base is not None:  # residual FGM: latents are relative to a zero residual's (fgm.zero_residual_latent)
            zero, zero_flow = self._zero_residual_pair(t_frames, hw)
            # minus the decoded zero residual: latent 0 gives the base exactly, not base + the codec's round-trip
            # error of 0 (validation, perfect residual latents: 0.403 px vs 0.448 without the correction)
            flow = base + self.codec.decode((latents + zero).to(zero.dtype), num_frames=t_frames) - zero_flow
        else:
            flow = self.codec.decode(latents.to(self.codec.dtype), num_frames=t_frames)
        report_progress(callback, "flow decode", 1)
        return _resize_flow(flow, (h, w)).cpu()

    def _refine(self, image, unified, sparse, mask, callback) -> torch.Tensor:
        from flowctrl.flow.compose import compose_flows
        from flowctrl.flow.densify import gaussian_densify

        if mask.sum() == 0:  # nothing to refine: camera / reference-video flow passes through
            return unified.flow.float().cpu()
        mult = 2 ** len(self.refiner.config.channels)
        h, w = unified.size
        hw = (max(mult, -(-h // mult) * mult), max(mult, -(-w // mult) * mult))
        dense = gaussian_densify(sparse, mask)
        img = F.interpolate(image, size=hw, mode="bilinear", align_corners=False) if hw != (h, w) else image
        local = _resize_flow(self.refiner(img, _resize_flow(dense, hw), _resize_mask(mask, hw)), (h, w))
        if getattr(unified, "camera_flow", None) is not None:
            local = compose_flows(local, unified.camera_flow.to(local.device).float())
        report_progress(callback, "flow_model", 1)
        return local.cpu()
