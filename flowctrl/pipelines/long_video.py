"""Videos longer than the model's window: phased inference + shared noise reschedule (paper 004 §3.4).

The video of ``N`` frames is cut into windows of the model's length ``L`` (stride ``L − 1``; the last
window is shifted back to end at frame ``N``). Flows stay **relative to frame 0 across the whole video**,
so every window is conditioned on the same reference image and on its own slice ``F[:, s:s+L]``.

``phased`` (eq. 9–12), with ``T`` scheduler steps and ``M = ⌈γ·T⌉``:

* window 1 is denoised completely (``T`` evaluations); at step ``M`` its latent ``z¹_M`` is split into the
  clean estimate ``x̂0`` and the noise estimate ``n(t_M)`` (eq. 10);
* each later window ``k`` gets ``ñ_k = n(t_M) + ω·ε_k`` (eq. 11); the sequence ``[ñ_2 … ñ_K]`` (eq. 12) is
  shuffled along latent frames (one permutation for the whole long video), split back per window and
  rescaled to unit variance; window ``k`` starts from ``z^k_M = √ᾱ·x̂0 + √(1−ᾱ)·ñ_k`` and runs only the
  remaining ``T − M`` steps with its own flow.

  Function evaluations: ``T + (K − 1)(T − M)`` instead of ``K·T``. With ``ω = 0`` and no shuffle,
  ``z^k_M == z¹_M`` exactly (the literal eq. 9).

``chain`` (the baseline of §3.4): window ``k`` is conditioned on the last generated frame of the
previous window and on the flow re-referenced to that frame (consecutive flows chained again with
``flowctrl.flow.compose``); ``K·T`` evaluations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

import torch

from flowctrl.errors import InputError

__all__ = ["plan_windows", "phased_steps", "LongVideoResult", "generate_long_video", "shared_noise_reschedule"]


def plan_windows(num_frames: int, window: int) -> List[Tuple[int, int]]:
    """Windows ``[(start, end), …]`` of length ``window`` covering ``num_frames`` frames.

    Consecutive windows share at least one frame (stride ``window − 1``); the last one ends at
    ``num_frames``. ``plan_windows(25, 9) == [(0, 9), (8, 17), (16, 25)]``.
    """
    if window < 2:
        raise InputError.at(None, "window", f"is {window}", "use a window of at least 2 frames")
    if num_frames <= window:
        return [(0, num_frames)]
    starts = [0]
    while starts[-1] + window < num_frames:
        starts.append(min(starts[-1] + window - 1, num_frames - window))
    return [(s, s + window) for s in starts]


def phased_steps(num_steps: int, gamma: float) -> int:
    """``M = ⌈γ·T⌉`` shared steps (clamped to ``[0, T]``)."""
    if not 0.0 <= gamma <= 1.0:
        raise InputError.at(None, "gamma", f"is {gamma}", "use a value in [0, 1] (paper: 0.8)")
    return min(num_steps, max(0, math.ceil(gamma * num_steps - 1e-9)))


@dataclass
class LongVideoResult:
    """``video (B, N, 3, H, W)`` in [0, 1]; ``windows`` as from :func:`plan_windows`;
    ``num_function_evals`` transformer calls made; ``chain_function_evals`` what the chain baseline
    needs for the same windows and steps (``K·T``)."""

    video: torch.Tensor
    windows: List[Tuple[int, int]]
    num_function_evals: int
    chain_function_evals: int
    mode: str
    shared_steps: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def saving(self) -> float:
        """Fraction of evaluations saved relative to the chain baseline."""
        return 1.0 - self.num_function_evals / max(self.chain_function_evals, 1)


def shared_noise_reschedule(
    noise_estimate: torch.Tensor, num_windows: int, omega: float, generator: Optional[torch.Generator] = None,
    shuffle: bool = True,
) -> List[torch.Tensor]:
    """Eq. 11–12: ``ñ_k = n + ω·ε_k`` for ``k = 2..K``, shuffled along latent frames across windows.

    ``noise_estimate (B, T', C, h, w)`` is ``n(t_M)`` of window 1. Returns ``num_windows − 1`` tensors of
    the same shape, each rescaled by ``1/√(1+ω²)`` to keep unit variance.
    """
    if num_windows < 2:
        return []
    if omega < 0:
        raise InputError.at(None, "omega", f"is {omega}", "use omega >= 0 (paper: 0.2)")
    b, t = noise_estimate.shape[:2]
    eps = torch.randn((num_windows - 1,) + tuple(noise_estimate.shape), generator=generator,
                      device=noise_estimate.device if generator is None else generator.device, dtype=torch.float32)
    eps = eps.to(noise_estimate.device)
    seq = (noise_estimate.float()[None] + omega * eps) / math.sqrt(1.0 + omega * omega)  # (K-1, B, T', ...)
    seq = seq.transpose(0, 1).reshape(b, (num_windows - 1) * t, *noise_estimate.shape[2:])
    if shuffle:
        perm = torch.randperm(seq.shape[1], generator=generator, device="cpu" if generator is None else generator.device)
        seq = seq[:, perm.to(seq.device)]
    return list(seq.reshape(b, num_windows - 1, t, *noise_estimate.shape[2:]).transpose(0, 1).unbind(0))


def _pad_frames(flow: torch.Tensor, frames: int) -> torch.Tensor:
    if flow.shape[1] >= frames:
        return flow
    return torch.cat([flow, flow[:, -1:].expand(-1, frames - flow.shape[1], -1, -1, -1)], dim=1)


@torch.no_grad()
def generate_long_video(
    pipe: Any,
    image: torch.Tensor,
    flow: torch.Tensor,
    *,
    mode: str = "phased",
    gamma: float = 0.8,
    omega: float = 0.2,
    shuffle: bool = True,
    num_inference_steps: int = 50,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callable[[str, int, int], None]] = None,
    window: Optional[int] = None,
    **cond_kwargs: Any,
) -> LongVideoResult:
    """Generate ``N = flow.shape[1]`` frames with a :class:`~flowctrl.pipelines.diffusion.FlowCtrlVideoPipeline`.

    Clips that fit one window run once (padded to a VAE-valid length, then trimmed). ``cond_kwargs``:
    prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guidance_scale, flow_guidance_scale.
    """
    from flowctrl.pipelines.flow_guidance import GuidanceConfig

    if mode not in ("phased", "chain"):
        raise InputError.at(None, "long_video", f"unknown mode '{mode}'", "use phased or chain")
    guidance = GuidanceConfig(cond_kwargs.pop("guidance_scale", 6.0), cond_kwargs.pop("flow_guidance_scale", 1.0))
    n = flow.shape[1]
    window = window or pipe.window_frames
    if pipe.valid_num_frames(window) != window:
        raise InputError.at(None, "window", f"{window} frames does not fit the VAE", f"use 1 + k*{pipe.temporal_factor}")
    timesteps = pipe.set_timesteps(num_inference_steps)
    steps = len(timesteps)
    pipe.num_function_evals = 0

    def run_window(img: torch.Tensor, wflow: torch.Tensor, offset: int, total: int, *, start: int = 0,
                   latents: Optional[torch.Tensor] = None, state=None, on_step=None):
        frames = wflow.shape[1]
        run = pipe.valid_num_frames(frames)
        cond = pipe.build_condition(img, _pad_frames(wflow, run), guidance=guidance, generator=generator,
                                    callback=callback, **cond_kwargs)
        cond.progress_offset, cond.progress_total = offset, total
        if latents is None:
            shape = tuple(cond.image_latents.shape[:2]) + (pipe.transformer.config.out_channels,) + tuple(cond.image_latents.shape[3:])
            latents = pipe.prepare_noise(shape, generator, cond.image_latents.device, cond.image_latents.dtype)
        out, _ = pipe.denoise(latents, cond, timesteps, start=start, state=state, generator=generator, on_step=on_step)
        return out, cond, frames

    def decode(latents: torch.Tensor, frames: int, pad: int = 0) -> torch.Tensor:
        return pipe.decode_latents(latents[:, pad:])[:, :frames]

    windows = plan_windows(n, window)
    k = len(windows)
    chain_nfe = k * steps
    if k == 1:
        lat, cond, frames = run_window(image, flow, 0, steps)
        video = decode(lat, frames, cond.pad_frames)
        pipe.maybe_free_model_hooks()
        return LongVideoResult(video, windows, pipe.num_function_evals, chain_nfe, "single", steps)

    b = flow.shape[0]
    out = torch.zeros(b, n, 3, *flow.shape[-2:], dtype=torch.float32, device=image.device)
    written = 0

    def place(video: torch.Tensor, s: int, e: int) -> None:
        nonlocal written
        out[:, written:e] = video[:, written - s:].to(out.device)
        written = e

    if mode == "phased":
        m = phased_steps(steps, gamma)
        total = steps + (k - 1) * (steps - m)
        captured = {}

        def capture(i, latents, model_out, state):
            if i == m:
                captured["x0"], captured["eps"] = pipe.x0_and_noise(latents, model_out, timesteps[i])

        s0, e0 = windows[0]
        lat1, cond1, frames = run_window(image, flow[:, s0:e0], 0, total, on_step=capture)
        place(decode(lat1, frames, cond1.pad_frames), s0, e0)
        noises = shared_noise_reschedule(captured["eps"], k, omega, generator, shuffle) if "eps" in captured else []
        offset = steps
        for j, (s, e) in enumerate(windows[1:]):
            if m >= steps:  # γ = 1: every window is window 1 (the paper's degenerate case)
                lat = lat1
            else:
                z = pipe.renoise(captured["x0"], noises[j], timesteps[m]).to(lat1.dtype)
                lat, _, _ = run_window(image, flow[:, s:e], offset, total, start=m, latents=z,
                                       state={"old_x0": captured["x0"].to(lat1.dtype)})
                offset += steps - m
            place(decode(lat, e - s, cond1.pad_frames), s, e)
        pipe.maybe_free_model_hooks()
        return LongVideoResult(out, windows, pipe.num_function_evals, chain_nfe, "phased", m)

    from flowctrl.flow.compose import to_consecutive, to_reference

    consecutive = to_consecutive(flow.float())  # (B, N-1, 2, H, W)
    offset = 0
    for j, (s, e) in enumerate(windows):
        if j == 0:
            img, wflow = image, flow[:, s:e]
        else:
            img = out[:, s].to(image.device, image.dtype)  # the last generated frame at the window start
            wflow = to_reference(consecutive[:, s:e - 1])
        lat, cond, frames = run_window(img, wflow, offset, chain_nfe)
        offset += steps
        place(decode(lat, frames, cond.pad_frames), s, e)
    pipe.maybe_free_model_hooks()
    return LongVideoResult(out, windows, pipe.num_function_evals, chain_nfe, "chain", 0)
