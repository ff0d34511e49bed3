"""Build the compiled paths ahead of first use and report which implementation each op runs.

    python -m flowctrl_cuda            # builds the CPU library (and the CUDA extension on a GPU machine)

Without this, each is built once on first use and cached (see docs/kernels.md).
"""
from __future__ import annotations

import sys
import time

import torch


def main() -> int:
    from flowctrl_cuda import _cpu, _cuda, implementation

    t0 = time.perf_counter()
    try:
        path = _cpu.build()
        print(f"CPU library: {path} ({time.perf_counter() - t0:.1f} s)")
    except RuntimeError as error:
        print(f"CPU library: not built ({str(error).splitlines()[0]}); the PyTorch reference will run")
    if torch.cuda.is_available():
        t0 = time.perf_counter()
        ok = _cuda.available()
        print(f"CUDA extension: {'built' if ok else 'FAILED (see warning)'} ({time.perf_counter() - t0:.1f} s)")
    else:
        print("CUDA extension: skipped (no CUDA device)")
    x = torch.zeros(1, 3, 8, 8)
    flow = torch.zeros(1, 2, 8, 8)
    print(f"CPU inference: splat -> {implementation('splat', x, flow)}, "
          f"backward_warp -> {implementation('backward_warp', x, flow)}, "
          f"freq_adaptor -> {implementation('freq_adaptor', torch.zeros(1, 4, 2, 3), torch.zeros(3, 3, 2))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
