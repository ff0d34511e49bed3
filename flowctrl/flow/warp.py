"""Backward warping and forward (softmax) splatting of images / features along a flow field.

Pure differentiable tensor math. The functions are :mod:`flowctrl_cuda`'s dispatchers: CUDA kernels
on CUDA tensors when built, a compiled C++/OpenMP path for CPU tensors in inference, and the
pure-PyTorch reference (which defines the semantics) otherwise.

* ``backward_warp(x (N,C,H,W), flow (N,2,H,W) px, mode="bilinear", padding="zeros"|"border")``
  → ``out(p) = x(p + flow(p))``.
* ``splat(x, flow, weight=None, mode="sum"|"avg"|"softmax", return_norm=False, out=None)`` → out
  ``(N,C,H,W)`` [, norm ``(N,1,H,W)``, 0 = hole]; ``x`` may be a broadcast view.
* ``freq_adaptor(x (B,T,N,C), weight (T//2+1,C,2), dim=1)`` → the temporal frequency filter.
"""
from __future__ import annotations

import flowctrl_cuda
from flowctrl_cuda import (  # noqa: F401  (re-exported)
    PADDING_MODES,
    SPLAT_MODES,
    backward_warp,
    freq_adaptor,
    freq_adaptor_matrix,
    implementation,
    splat,
)

__all__ = list(flowctrl_cuda.__all__)
