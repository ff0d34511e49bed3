"""Time-to-Move dual-clock denoising (Singer et al., arXiv 2511.08633) over any :class:`Denoiser`.

With ``z_ref`` the latents of the warped video, ``m`` the motion mask on the latent grid and one noise
``ε``::

    x = add_noise(z_ref, ε, t[i_weak])                  (pure noise ε·σ_init when i_weak == 0)
    for j in i_weak … N−1:
        x = step(model(x, t_j))
        if j < i_strong: x = (1−m)·x + m·add_noise(z_ref, ε, t[j+1])   (z_ref itself after the last step)

Inside ``m`` the sample follows the warp strictly until ``i_strong`` ("strong clock"); outside it is
tied to the warp only through the start at ``i_weak`` ("weak clock"). ``i_weak == i_strong`` is SDEdit.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch

from flowctrl.errors import InputError
from flowctrl.pipelines.denoisers.base import Conditioning, Denoiser

StepHook = Callable[[int, torch.Tensor, torch.Tensor], Optional[torch.Tensor]]
OutputHook = Callable[[int, torch.Tensor, torch.Tensor, Dict[str, Any]], None]


def check_clocks(i_weak: int, i_strong: int, num_steps: int) -> None:
    """``0 ≤ i_weak ≤ i_strong ≤ num_steps`` (step indices), else one-line :class:`InputError`."""
    if num_steps < 1:
        raise InputError.at(None, "--steps", f"is {num_steps}", "give at least 1 denoising step")
    if not 0 <= i_weak < num_steps:
        raise InputError.at(None, "--t-weak", f"is {i_weak}", f"give a step index in 0..{num_steps - 1} (of --steps {num_steps})")
    if not i_weak <= i_strong <= num_steps:
        raise InputError.at(None, "--t-strong", f"is {i_strong}", f"give a step index in {i_weak}..{num_steps} (>= --t-weak)")


def run_steps(denoiser: Denoiser, x: torch.Tensor, cond: Any, timesteps: torch.Tensor, *, start: int = 0,
              stop: Optional[int] = None, state: Optional[Dict[str, Any]] = None,
              on_output: Optional[OutputHook] = None, after_step: Optional[StepHook] = None,
              ) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """The one denoising loop every stage-2 model runs: steps ``start … stop−1`` of ``timesteps``.

    Per step ``i``: ``pred = denoiser.model_output(x, i, t_i, cond)``; ``on_output(i, x, pred, state)``
    (sees the model output before the update, e.g. phased inference's capture); ``x =
    denoiser.step(pred, i, timesteps, x, state, cond)``; ``after_step(i, t_i, x)`` may return new latents
    (TTM's blend, a user hook). ``state`` carries a multistep solver's memory between calls (resuming
    mid-schedule); None starts a fresh one with :meth:`Denoiser.begin`. Returns ``(x, state)``.
    """
    stop = len(timesteps) if stop is None else stop
    state = denoiser.begin(start) if state is None else state
    for i in range(start, stop):
        t = timesteps[i]
        pred = denoiser.model_output(x, i, t, cond)
        if on_output is not None:
            on_output(i, x, pred, state)
        x = denoiser.step(pred, i, timesteps, x, state, cond)
        if after_step is not None:
            replaced = after_step(i, t, x)
            if replaced is not None:
                x = replaced
    return x, state


def dual_clock_denoise(denoiser: Denoiser, x_init: torch.Tensor, cond: Conditioning, z_ref: torch.Tensor,
                       mask: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, i_weak: int, i_strong: int,
                       *, on_step: Optional[StepHook] = None,
                       callback: Optional[Callable[[str, int, int], None]] = None) -> torch.Tensor:
    """Run the dual-clock loop (on :func:`run_steps`); returns the final latents (before
    :meth:`Denoiser.finalize`).

    Args:
        x_init: the pipeline's own start latents (``ε`` scaled by ``init_noise_sigma``), used when
            ``i_weak == 0``: diffusers' pipelines start from pure noise there (zero terminal SNR / σ = 1).
        z_ref, mask, noise: latents of the warp render, its motion mask (broadcastable) and ``ε``, all
            in the denoiser's layout. timesteps: the scheduler's, length N.
        on_step: ``on_step(j, t_j, x) -> x or None`` after each step (may replace the latents).
        callback: ``callback("denoise", done, total)`` progress.
    """
    n = len(timesteps)
    check_clocks(i_weak, i_strong, n)
    x = x_init if i_weak == 0 else denoiser.add_noise(z_ref, noise, i_weak, timesteps).to(x_init.dtype)
    m = mask.to(device=x.device, dtype=torch.float32)

    def after(j: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if j < i_strong:
            ref = denoiser.add_noise(z_ref, noise, j + 1, timesteps)
            x = ((1 - m) * x.float() + m * ref.float()).to(x.dtype)
        if on_step is not None:
            replaced = on_step(j, t, x)
            if replaced is not None:
                x = replaced
        if callback is not None:
            callback("denoise", j - i_weak + 1, n - i_weak)
        return x

    x, _ = run_steps(denoiser, x, cond, timesteps, start=i_weak, after_step=after)
    return x
