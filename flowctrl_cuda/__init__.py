"""flowctrl_cuda: flow warping, softmax splatting and the FFT adaptor, with exact references.

The public ops (``backward_warp``, ``splat``, ``freq_adaptor``; and the fused CPU passes of the
pipeline: ``camera_reprojection``, ``compose_visibility``, ``push_pull_holes``, ``to_uint8_hwc``) dispatch on
their inputs:

* CUDA tensors → the CUDA kernels (``csrc/*.cu``), built just in time on first use (or at install
  with ``FLOWCTRL_BUILD_CUDA=1``); if the build fails, the reference runs after one warning.
* CPU tensors when no gradient is needed → the compiled C++/OpenMP CPU path (``csrc/cpu_ops.cpp``,
  built with the system C++ compiler on first use into a cache folder).
* otherwise → the pure-PyTorch reference (:mod:`flowctrl_cuda.reference`), which defines the
  semantics of every op.

One log line (logger ``"flowctrl"``) says which implementation an op runs, the first time it does.
Set ``FLOWCTRL_KERNELS=reference`` to force the reference everywhere.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Optional, Tuple, Union

import torch

from flowctrl_cuda import reference
from flowctrl_cuda.reference import PADDING_MODES, SPLAT_MODES, freq_adaptor_matrix

__all__ = [
    "backward_warp",
    "splat",
    "freq_adaptor",
    "freq_adaptor_matrix",
    "camera_reprojection",
    "compose_visibility",
    "to_uint8_hwc",
    "push_pull_holes",
    "thread_limit",
    "implementation",
    "SPLAT_MODES",
    "PADDING_MODES",
]

logger = logging.getLogger("flowctrl")
_announced: set = set()


def _announce(op: str, impl: str) -> None:
    key = (op, impl)
    if key not in _announced:
        _announced.add(key)
        logger.info("flowctrl_cuda: %s runs on %s", op, impl)


def _forced_reference() -> bool:
    return os.environ.get("FLOWCTRL_KERNELS", "").strip().lower() == "reference"


def _needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def implementation(op: str, *tensors: Optional[torch.Tensor]) -> str:
    """Name of the implementation ``op`` would run for these inputs: "cuda", "cpu" or "reference"."""
    if _forced_reference():
        return "reference"
    first = tensors[0]
    try:
        if first.is_cuda:
            from flowctrl_cuda import _cuda

            return "cuda" if _cuda.supports(op, *tensors) and _cuda.available() else "reference"
        if first.device.type == "cpu" and not _needs_grad(*tensors):
            from flowctrl_cuda import _cpu

            if _cpu.supports(op, *tensors) and _cpu.available():
                return "cpu"
    except ImportError:  # a partial install without the compiled-path modules
        pass
    return "reference"


def backward_warp(
    x: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear", padding: str = "zeros"
) -> torch.Tensor:
    """``out(p) = x(p + flow(p))``, bilinear; see :func:`flowctrl_cuda.reference.backward_warp`.

    Args:
        x: (N, C, H, W); flow: (N, 2, H, W) pixels; padding: "zeros" | "border".
    Returns:
        (N, C, H, W) in x's dtype.
    """
    reference._check_warp_args(x, flow, mode, padding)
    impl = implementation("backward_warp", x, flow)
    _announce("backward_warp", impl)
    if impl == "cuda":
        from flowctrl_cuda import _cuda

        return _cuda.backward_warp(x, flow, padding)
    if impl == "cpu":
        from flowctrl_cuda import _cpu

        return _cpu.backward_warp(x, flow, padding)
    return reference.backward_warp(x, flow, mode, padding)


def splat(
    x: torch.Tensor,
    flow: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    mode: str = "sum",
    return_norm: bool = False,
    out: Optional[torch.Tensor] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Forward splatting (sum / avg / softmax); see :func:`flowctrl_cuda.reference.splat`.

    Args:
        x: (N, C, H, W); flow: (N, 2, H, W) pixels; weight: (N, 1, H, W) importance Z or None.
            A source broadcast over N (``image.expand(N, ...)``) is read without a copy on the
            compiled CPU path.
        out: optional (N, C, H, W) tensor to receive the result (in place; not with autograd).
    Returns:
        out (N, C, H, W) [, norm (N, 1, H, W), 0 = hole].
    """
    reference._check_splat_args(x, flow, weight, mode)
    impl = implementation("splat", x, flow, weight)
    _announce("splat", impl)
    if impl == "cuda":
        from flowctrl_cuda import _cuda

        result = _cuda.splat(x, flow, weight, mode, return_norm)
    elif impl == "cpu":
        from flowctrl_cuda import _cpu

        result = _cpu.splat(x, flow, weight, mode, return_norm, out=out)
    else:
        result = reference.splat(x, flow, weight, mode, return_norm)
    if out is None:
        return result
    res = result[0] if return_norm else result
    if res.data_ptr() != out.data_ptr():
        out.copy_(res)
    return (out, result[1]) if return_norm else out


def freq_adaptor(x: torch.Tensor, weight: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``irfft(rfft(x, dim) * complex(weight), n=T, dim)``; see :func:`flowctrl_cuda.reference.freq_adaptor`.

    Args:
        x: (B, T, N, C); weight: (T//2+1, C, 2) (real, imag); dim: time axis.
    Returns:
        same shape and dtype as x.
    """
    reference._check_freq_args(x, weight, dim)
    impl = implementation("freq_adaptor", x, weight)
    _announce("freq_adaptor", impl)
    if impl == "cuda":
        from flowctrl_cuda import _cuda

        return _cuda.freq_adaptor(x, weight, dim)
    return reference.freq_adaptor(x, weight, dim)


def camera_reprojection(z0: torch.Tensor, E: torch.Tensor, q: torch.Tensor, height: int, width: int,
                        min_depth: float, tolerance: float, occlusion: bool = True
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel reprojection flow and visibility; see :func:`flowctrl_cuda.reference.camera_reprojection`.

    Args:
        z0: ``(B, H*W)``; E: ``(B, T, 3, 3)``; q: ``(B, T, 3)``.
    Returns:
        ``flow (B, T, 2, H, W)`` and ``valid (B, T, 1, H, W)`` bool.
    """
    impl = implementation("camera_reprojection", z0, E, q)
    _announce("camera_reprojection", impl)
    if impl != "cpu":
        return reference.camera_reprojection(z0, E, q, height, width, min_depth, tolerance, occlusion)
    from flowctrl_cuda import _cpu

    outs = [_cpu.camera_flow(z0[i], E[i], q[i], height, width, min_depth, tolerance, occlusion)
            for i in range(z0.shape[0])]
    if len(outs) == 1:  # a view, not a copy of a whole clip's flow
        return outs[0][0][None], outs[0][1][None]
    return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


def compose_visibility(local: torch.Tensor, camera: torch.Tensor, cam_valid: torch.Tensor
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Composed flow and its visibility; see :func:`flowctrl_cuda.reference.compose_visibility`.

    Args:
        local, camera: ``(N, 2, H, W)`` pixels; cam_valid: ``(N, 1, H, W)`` bool.
    """
    impl = implementation("compose_visibility", local, camera)
    _announce("compose_visibility", impl)
    if impl == "cpu":
        from flowctrl_cuda import _cpu

        return _cpu.compose(local, camera, cam_valid.bool())
    return reference.compose_visibility(local, camera, cam_valid)


def to_uint8_hwc(video: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` frames in [0, 1] → ``(N, H, W, C)`` uint8; see :func:`flowctrl_cuda.reference.to_uint8_hwc`."""
    impl = implementation("to_uint8_hwc", video)
    if impl == "cpu":
        from flowctrl_cuda import _cpu

        return _cpu.to_uint8_hwc(video)
    return reference.to_uint8_hwc(video)


def push_pull_holes(video: torch.Tensor, holes: torch.Tensor, eps: float = 1e-8, inplace: bool = False
                    ) -> torch.Tensor:
    """Push-pull hole filling; see :func:`flowctrl_cuda.reference.push_pull_holes`.

    Args:
        video: ``(N, C, H, W)``; holes: ``(N, 1, H, W)`` bool. inplace: write into ``video`` where possible.
    """
    impl = implementation("push_pull_holes", video, holes)
    _announce("push_pull_holes", impl)
    if impl != "cpu":
        return reference.push_pull_holes(video, holes, eps=eps, inplace=inplace)
    from flowctrl_cuda import _cpu

    out = video if inplace and video.is_contiguous() else video.contiguous().clone()
    _cpu.push_pull_holes(out, holes, eps)
    return out


@contextlib.contextmanager
def thread_limit(threads: int) -> Iterator[None]:
    """Run the compiled CPU ops of this thread with at most ``threads`` OpenMP threads (no-op elsewhere)."""
    try:
        from flowctrl_cuda import _cpu
    except ImportError:  # pragma: no cover - partial install
        yield
        return
    with _cpu.thread_limit(threads):
        yield
