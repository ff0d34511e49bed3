"""The trained flow-conditioned pipeline (:class:`~flowctrl.pipelines.diffusion.FlowCtrlVideoPipeline`)
as a :class:`Denoiser`, so the ``diffusion`` backend runs the same loop (:func:`.loop.run_steps`) as the
guided backend.

The model output is the pipeline's own ``model_output`` (text + flow guidance, one batched call); the
step is its CogVideoX DDIM / DPM update (the DPM solver's previous x0 estimate in ``state["old_x0"]``,
which phased inference hands from window 1 to the later windows). Conditions come from the pipeline's
``build_condition`` (image, flow, text), not from :meth:`Denoiser.prepare`.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from diffusers import CogVideoXDPMScheduler

from flowctrl.pipelines.denoisers.base import Denoiser


class FlowCtrlDenoiser(Denoiser):
    family = "flowctrl"
    layout = "BTCHW"

    def __init__(self, pipe: Any, generator: Optional[torch.Generator] = None, eta: float = 0.0) -> None:
        super().__init__(pipe)
        self.generator, self.eta = generator, float(eta)

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    @property
    def temporal_factor(self) -> int:
        return int(self.pipe.temporal_factor)

    @property
    def size_multiple(self) -> int:
        return int(self.pipe.spatial_factor * self.pipe.transformer.config.patch_size)

    @property
    def window_frames(self) -> int:
        return int(self.pipe.window_frames)

    def latent_hw(self, height: int, width: int) -> tuple:
        return height // self.pipe.spatial_factor, width // self.pipe.spatial_factor

    def noise_shape(self, num_frames: int, height: int, width: int) -> tuple:
        h, w = self.latent_hw(height, width)
        return (1, self.pipe.latent_frames(num_frames), int(self.pipe.transformer.config.out_channels), h, w)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.pipe.encode_video(video)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.pipe.decode_latents(latents)

    def model_output(self, x: torch.Tensor, i: int, t: torch.Tensor, cond: Any) -> torch.Tensor:
        before = self.pipe.num_function_evals
        out = self.pipe.model_output(x, t, cond)
        self.branch_evals += (self.pipe.num_function_evals - before) * len(cond.guidance.rows())
        self.expert_log.append("transformer")
        return out

    def begin(self, start: int) -> Dict[str, Any]:
        return {}

    def step(self, pred: torch.Tensor, i: int, timesteps: torch.Tensor, x: torch.Tensor,
             state: Dict[str, Any], cond: Any) -> torch.Tensor:
        extra = self.pipe.prepare_extra_step_kwargs(self.generator, self.eta)
        t = timesteps[i]
        if isinstance(self.scheduler, CogVideoXDPMScheduler):
            x, state["old_x0"] = self.scheduler.step(pred, state.get("old_x0"), t, timesteps[i - 1] if i > 0 else None,
                                                     x, **extra, return_dict=False)
        else:
            x = self.scheduler.step(pred, t, x, **extra, return_dict=False)[0]
        return x.to(cond.image_latents.dtype)
