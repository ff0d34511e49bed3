"""CUDA path: the extension built from ``csrc/*.cu`` + ``csrc/bindings.cpp`` and its autograd Functions.

The extension is the installed ``flowctrl_cuda._C`` when the package was installed with
``FLOWCTRL_BUILD_CUDA=1``; otherwise it is compiled just in time with
``torch.utils.cpp_extension.load`` on first use on a CUDA tensor, into
``$FLOWCTRL_CACHE_DIR/kernels/cuda`` (default ``~/.cache/flowctrl/kernels/cuda``), and reused
afterwards (torch's loader rebuilds only when a source changes). A failed build warns once and the
dispatchers use the reference.

Supported inputs: x in float32 / float16 / bfloat16 (flow and importance are used as float32);
float64 runs the reference. ``freq_adaptor`` handles T <= 32 frames (CogVideoX latents have 13).
Gradients are first-order (``once_differentiable``).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import torch
from torch.autograd.function import once_differentiable

from flowctrl_cuda import reference

logger = logging.getLogger("flowctrl")

CSRC = Path(__file__).resolve().parent / "csrc"
CUDA_SOURCES = ["bindings.cpp", "warp.cu", "splat.cu", "freq_adaptor.cu"]
NVCC_FLAGS = ["-O3"]  # torch adds its -std (c++20 for torch 2.13); the .cu files build with 17 and 20
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_FRAMES = 32  # csrc/freq_adaptor.cu kMaxFrames
_MODES = {"sum": 0, "avg": 1, "softmax": 2}

_ext: Any = None
_failed: Optional[str] = None


def build_dir() -> Path:
    from flowctrl_cuda._cpu import cache_dir

    return cache_dir() / "cuda"


def _load() -> Any:
    global _ext, _failed
    if _ext is not None or _failed is not None:
        return _ext
    try:
        try:
            from flowctrl_cuda import _C as ext  # built at install (FLOWCTRL_BUILD_CUDA=1)
        except ImportError:
            from torch.utils.cpp_extension import load

            directory = build_dir()
            directory.mkdir(parents=True, exist_ok=True)
            logger.info("flowctrl_cuda: compiling the CUDA extension (first use; cached in %s)", directory)
            ext = load(
                name="flowctrl_cuda_ext",
                sources=[str(CSRC / s) for s in CUDA_SOURCES],
                extra_include_paths=[str(CSRC)],
                extra_cflags=["-O3"],
                extra_cuda_cflags=NVCC_FLAGS,
                build_directory=str(directory),
                verbose=False,
            )
        _ext = ext
    except Exception as error:  # any build/load failure: compiler, toolkit mismatch, linker
        _failed = f"{type(error).__name__}: {error}"
        warnings.warn(
            "flowctrl_cuda: the CUDA kernels could not be built or loaded "
            f"({_failed.splitlines()[0][:300]}); using the PyTorch reference on CUDA tensors",
            RuntimeWarning,
            stacklevel=3,
        )
    return _ext


def available() -> bool:
    """True when CUDA is usable and the extension is built (building it on the first call)."""
    if not torch.cuda.is_available():
        return False
    return _load() is not None


def supports(op: str, *tensors: Optional[torch.Tensor]) -> bool:
    """Whether the kernels handle these inputs (CUDA; x float32/float16/bfloat16; T <= 32 for freq)."""
    x = tensors[0]
    if not x.is_cuda or x.dtype not in KERNEL_DTYPES:
        return False
    if op == "freq_adaptor":
        return True  # the frame limit is checked with dim in freq_adaptor() (reference beyond it)
    return op in ("splat", "backward_warp")


def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().to(torch.float32).contiguous()


# ------------------------------------------------------------------------------- backward_warp


class _BackwardWarp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, flow: torch.Tensor, border: bool) -> torch.Tensor:
        xc, fc = x.detach().contiguous(), _f32(flow)
        ctx.save_for_backward(xc, fc)
        ctx.border = border
        ctx.flow_dtype = flow.dtype
        return _ext.warp_forward(xc, fc, border)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        xc, fc = ctx.saved_tensors
        need_x, need_flow = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx, gf = _ext.warp_backward(xc, fc, _f32(grad_out), ctx.border, need_x, need_flow)
        return (gx.to(xc.dtype) if need_x else None, gf.to(ctx.flow_dtype) if need_flow else None, None)


def backward_warp(x: torch.Tensor, flow: torch.Tensor, padding: str) -> torch.Tensor:
    """CUDA bilinear backward warp; same contract as :func:`flowctrl_cuda.reference.backward_warp`."""
    return _BackwardWarp.apply(x, flow, padding == "border")


# ------------------------------------------------------------------------------- splat


class _Splat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, flow: torch.Tensor, weight: Optional[torch.Tensor], mode: str):
        xc, fc, zc = x.detach().contiguous(), _f32(flow), _f32(weight)
        code = _MODES[mode]
        zmax = zc.view(zc.shape[0], -1).amax(dim=1).contiguous() if (zc is not None and mode == "softmax") else None
        out, out_f32, norm = _ext.splat_forward(xc, fc, zc, zmax, code, True)
        ctx.save_for_backward(xc, fc, zc, zmax, norm, out_f32 if mode != "sum" else None)
        ctx.mode = mode
        ctx.dtypes = (x.dtype, flow.dtype, None if weight is None else weight.dtype)
        return out, norm.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Optional[torch.Tensor], grad_norm: Optional[torch.Tensor]):
        xc, fc, zc, zmax, norm, out_f32 = ctx.saved_tensors
        need_x, need_flow, need_w = ctx.needs_input_grad[:3]
        need_w = need_w and zc is not None
        g = _f32(grad_out) if grad_out is not None else torch.zeros(xc.shape, device=xc.device, dtype=torch.float32)
        gn = _f32(grad_norm)
        gx, gf, ge = _ext.splat_backward(
            xc, fc, zc, zmax, norm, out_f32, g, gn, _MODES[ctx.mode], need_x, need_flow, need_w
        )
        gw = None
        if need_w:
            if ctx.mode == "softmax":
                e = torch.exp(zc - zmax.view(-1, 1, 1, 1))
                gw = ge * e
                if gn is not None:
                    # norm = Σ b·exp(Z - max Z) also moves with max Z (amax's gradient splits ties)
                    shift = -(gn * norm).sum(dim=(1, 2, 3))
                    at_max = (zc == zmax.view(-1, 1, 1, 1)).to(torch.float32)
                    gw = gw + at_max * (shift / at_max.sum(dim=(1, 2, 3))).view(-1, 1, 1, 1)
            else:
                gw = ge
            gw = gw.to(ctx.dtypes[2])
        x_dtype, flow_dtype, _ = ctx.dtypes
        return (gx.to(x_dtype) if need_x else None, gf.to(flow_dtype) if need_flow else None, gw, None)


def splat(
    x: torch.Tensor, flow: torch.Tensor, weight: Optional[torch.Tensor], mode: str, return_norm: bool
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """CUDA splat; same contract as :func:`flowctrl_cuda.reference.splat`."""
    out, norm = _Splat.apply(x, flow, weight, mode)
    return (out, norm) if return_norm else out


# ------------------------------------------------------------------------------- freq_adaptor


class _FreqApply(torch.autograd.Function):
    """y = M x per channel along time; x as (outer, T, inner, C), M (C, T, T) float32."""

    @staticmethod
    def forward(ctx, x4: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        xc, mc = x4.detach().contiguous(), m.detach().contiguous()
        ctx.save_for_backward(xc, mc)
        return _ext.freq_apply(xc, mc)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        xc, mc = ctx.saved_tensors
        gx = gm = None
        gy = grad_y.contiguous().to(xc.dtype)
        if ctx.needs_input_grad[0]:
            gx = _ext.freq_apply(gy, mc.transpose(1, 2).contiguous())
        if ctx.needs_input_grad[1]:
            o, t, i, c = xc.shape
            # dM[c, t, s] = Σ_{o,i} gy[o,t,i,c] x[o,s,i,c]: one batched matmul over channels
            a = gy.to(torch.float32).permute(3, 1, 0, 2).reshape(c, t, o * i)
            b = xc.to(torch.float32).permute(3, 0, 2, 1).reshape(c, o * i, t)
            gm = torch.bmm(a, b)
        return gx, gm


def freq_adaptor(x: torch.Tensor, weight: torch.Tensor, dim: int) -> torch.Tensor:
    """CUDA fused frequency adaptor; same contract as :func:`flowctrl_cuda.reference.freq_adaptor`."""
    d = dim % x.dim()
    t = x.shape[d]
    if t > MAX_FRAMES:
        return reference.freq_adaptor(x, weight, dim)
    m = reference.freq_adaptor_matrix(weight.to(torch.float32), t)  # differentiable w.r.t. weight
    outer = 1
    for s in x.shape[:d]:
        outer *= s
    inner = 1
    for s in x.shape[d + 1 : -1]:
        inner *= s
    x4 = x.reshape(outer, t, inner, x.shape[-1])
    return _FreqApply.apply(x4, m).view(x.shape)
