"""Speed of the flowctrl_cuda ops: reference vs compiled path vs the torch yardsticks.

CPU section (always): splat / backward_warp at 49x3x512x512 (the warp renderer's workload) and on
latent-size feature maps, comparing the PyTorch reference (scatter_add / gather), the compiled CPU
path and ``grid_sample`` on the same data; freq_adaptor's torch.fft reference vs the per-channel
T x T matrix form at small CogVideoX-like shapes.

CUDA section (when a GPU is present): each kernel vs its reference and vs grid_sample / torch.fft at
realistic sizes, float32 and bfloat16, with achieved GB/s against the card's copy bandwidth and
nominal peak, checked against the issue's goals (splat >= 10x its reference, freq_adaptor >= 3x the
torch.fft path and >= 60% of peak bandwidth).

    nice -n 10 python benchmarks/bench_kernels.py            # writes benchmarks/results/kernels_cpu.md
    python benchmarks/bench_kernels.py --quick               # smaller sizes, fewer repeats
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from flowctrl_cuda import _cpu, reference

RESULTS = Path(__file__).resolve().parent / "results"

# nominal memory bandwidth, GB/s (vendor data sheets), matched on torch.cuda.get_device_name()
NOMINAL_PEAK_GBS = {
    "H200": 4800.0,
    "H100 SXM": 3350.0,
    "H100 80GB HBM3": 3350.0,
    "H100 PCIe": 2000.0,
    "H100": 3350.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100": 1555.0,
    "L40S": 864.0,
    "A10G": 600.0,
}


def timeit(fn: Callable[[], object], repeat: int, cuda: bool = False) -> float:
    """Median wall time in ms over ``repeat`` runs after one warm-up run."""
    fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def cpu_time(fn: Callable[[], object], repeat: int) -> float:
    """Best process CPU time in ms over ``repeat`` runs after one warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, (time.process_time() - t0) * 1000.0)
    return best


def grid_for(flow: torch.Tensor) -> torch.Tensor:
    n, _, h, w = flow.shape
    gy, gx = torch.meshgrid(
        torch.arange(h, device=flow.device, dtype=flow.dtype), torch.arange(w, device=flow.device, dtype=flow.dtype),
        indexing="ij",
    )
    return torch.stack([(gx + flow[:, 0]) * 2 / (w - 1) - 1, (gy + flow[:, 1]) * 2 / (h - 1) - 1], -1)


def make_inputs(n: int, c: int, h: int, w: int, device: str = "cpu", dtype=torch.float32, seed: int = 0):
    """Image-like x, a smooth zoom-and-pan flow with per-pixel jitter (px) and an importance map."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    t = torch.linspace(0, 1, n).view(n, 1, 1)
    flow = torch.stack([t * (0.08 * w * xx + 0.05 * w), t * (0.08 * h * yy)], 1)
    flow = flow + torch.randn(n, 2, h, w, generator=g) * 0.5
    z = torch.randn(n, 1, h, w, generator=g)
    return x.to(device, dtype), flow.to(device), z.to(device)


class Table:
    def __init__(self, title: str, columns: Sequence[str]):
        self.title, self.columns, self.rows = title, list(columns), []

    def add(self, *row: object) -> None:
        self.rows.append([f"{v:.1f}" if isinstance(v, float) else str(v) for v in row])
        print("  " + " | ".join(self.rows[-1]), flush=True)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ CPU


def cpu_section(quick: bool, repeat: int) -> List[Table]:
    torch.set_grad_enabled(False)
    have_fast = _cpu.available()
    tables = []
    shapes = [("frames 49x3x512x512", (49, 3, 512, 512)), ("latent 13x16x60x90", (13, 16, 60, 90))]
    if quick:
        shapes = [("frames 13x3x256x256", (13, 3, 256, 256)), ("latent 13x16x60x90", (13, 16, 60, 90))]
    ops = Table(
        "CPU: splat / backward_warp (ms, median)",
        ["op", "shape", "reference (torch)", "compiled CPU path", "grid_sample", "speed-up vs reference",
         "compiled / grid_sample", "max abs diff vs reference"],
    )
    print(f"\n{ops.title}")
    for label, (n, c, h, w) in shapes:
        x, flow, z = make_inputs(n, c, h, w)
        grid = grid_for(flow)
        t_gs = timeit(lambda: F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True), repeat)
        cases = [
            ("splat sum", lambda: reference.splat(x, flow, mode="sum"), lambda: _cpu.splat(x, flow, None, "sum", False)),
            ("splat softmax+norm", lambda: reference.splat(x, flow, z, "softmax", True),
             lambda: _cpu.splat(x, flow, z, "softmax", True)),
            ("backward_warp", lambda: reference.backward_warp(x, flow), lambda: _cpu.backward_warp(x, flow, "zeros")),
        ]
        for name, ref_fn, fast_fn in cases:
            t_ref = timeit(ref_fn, max(1, repeat // 3))
            if have_fast:
                t_fast = timeit(fast_fn, repeat)
                a, b = ref_fn(), fast_fn()
                a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
                diff = (a - b).abs().max().item()
                ops.add(name, label, t_ref, t_fast, t_gs, f"{t_ref / t_fast:.1f}x", f"{t_fast / t_gs:.2f}", f"{diff:.1e}")
            else:
                ops.add(name, label, t_ref, "n/a (no compiler)", t_gs, "-", "-", "-")
    tables.append(ops)

    if have_fast:
        # wall time on a shared machine moves with load; one thread's CPU time is steadier
        single = Table(
            "CPU: one thread, process CPU time (ms, best of runs) (steadier than wall time on a loaded machine)",
            ["op", "shape", "compiled CPU path", "grid_sample", "compiled / grid_sample"],
        )
        print(f"\n{single.title}")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            label, (n, c, h, w) = shapes[0]
            x, flow, z = make_inputs(n, c, h, w)
            grid = grid_for(flow)
            t_gs = cpu_time(lambda: F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True), repeat)
            for name, fn in [
                ("backward_warp", lambda: _cpu.backward_warp(x, flow, "zeros")),
                ("splat sum", lambda: _cpu.splat(x, flow, None, "sum", False)),
                ("splat avg", lambda: _cpu.splat(x, flow, None, "avg", False)),
                ("splat softmax+norm", lambda: _cpu.splat(x, flow, z, "softmax", True)),
            ]:
                t = cpu_time(fn, repeat)
                single.add(name, label, t, t_gs, f"{t / t_gs:.2f}")
        finally:
            torch.set_num_threads(threads)
        tables.append(single)

    freq = Table(
        "CPU: freq_adaptor (ms, median), x (B,T,N,C) float32",
        ["shape (B,T,N,C)", "reference (torch.fft)", "matrix form (einsum)", "fft / matrix", "max abs diff"],
    )
    print(f"\n{freq.title}")
    fshapes = [(1, 13, 1350, 256), (2, 13, 338, 1024)] if quick else [(1, 13, 1350, 512), (2, 13, 338, 3072), (1, 25, 1350, 256)]
    for b, t, n, c in fshapes:
        g = torch.Generator().manual_seed(1)
        xf = torch.randn(b, t, n, c, generator=g)
        wf = torch.randn(t // 2 + 1, c, 2, generator=g)
        t_fft = timeit(lambda: reference.freq_adaptor(xf, wf), repeat)
        t_mat = timeit(lambda: reference.freq_adaptor_via_matrix(xf, wf), repeat)
        diff = (reference.freq_adaptor(xf, wf) - reference.freq_adaptor_via_matrix(xf, wf)).abs().max().item()
        freq.add(f"{b}x{t}x{n}x{c}", t_fft, t_mat, f"{t_fft / t_mat:.2f}", f"{diff:.1e}")
    tables.append(freq)
    torch.set_grad_enabled(True)
    return tables


# ------------------------------------------------------------------------------------ CUDA


def copy_bandwidth_gbs() -> float:
    """Achievable device bandwidth: read + write of a 1 GiB clone."""
    buf = torch.empty(256 * 1024 * 1024, dtype=torch.float32, device="cuda")
    ms = timeit(lambda: buf.clone(), 10, cuda=True)
    return 2 * buf.numel() * 4 / (ms / 1000) / 1e9


def nominal_peak(name: str) -> Optional[float]:
    for key, value in NOMINAL_PEAK_GBS.items():
        if key in name:
            return value
    return None


def cuda_section(quick: bool, repeat: int) -> List[Table]:
    from flowctrl_cuda import _cuda

    name = torch.cuda.get_device_name()
    if not _cuda.available():
        raise SystemExit("CUDA is present but the flowctrl_cuda extension did not build; see the warning above")
    copy_bw = copy_bandwidth_gbs()
    peak = nominal_peak(name) or copy_bw
    info = Table(f"CUDA device: {name}", ["quantity", "value"])
    info.add("copy bandwidth (GB/s, measured)", copy_bw)
    info.add("nominal peak (GB/s)", peak)
    tables = [info]

    ops = Table(
        "CUDA: splat / backward_warp forward (ms, median)",
        ["op", "shape", "dtype", "reference", "kernel", "grid_sample", "speed-up vs ref", "GB/s", "% of peak",
         "goal", "max abs diff"],
    )
    print(f"\n{ops.title}")
    shapes = [("frames 49x3x512x512", (49, 3, 512, 512)), ("latent 13x16x60x90", (13, 16, 60, 90))]
    if quick:
        shapes = shapes[1:]
    with torch.no_grad():
        for label, (n, c, h, w) in shapes:
            for dtype in (torch.float32, torch.bfloat16):
                x, flow, z = make_inputs(n, c, h, w, "cuda", dtype)
                grid = grid_for(flow).to(dtype)
                t_gs = timeit(lambda: F.grid_sample(x, grid, align_corners=True), repeat, cuda=True)
                esize = x.element_size()
                for op, ref_fn, k_fn, nbytes, goal in [
                    ("splat softmax", lambda: reference.splat(x, flow, z, "softmax", True),
                     lambda: _cuda.splat(x, flow, z, "softmax", True),
                     # read x, flow, z; atomics on num + norm (read+write f32); write out + norm
                     x.numel() * esize + flow.numel() * 4 + z.numel() * 4 + 2 * (x.numel() + z.numel()) * 4
                     + x.numel() * esize + z.numel() * esize, 10.0),
                    ("backward_warp", lambda: reference.backward_warp(x, flow), lambda: _cuda.backward_warp(x, flow, "zeros"),
                     2 * x.numel() * esize + flow.numel() * 4, None),
                ]:
                    t_ref = timeit(ref_fn, max(2, repeat // 2), cuda=True)
                    t_k = timeit(k_fn, repeat, cuda=True)
                    a, b = ref_fn(), k_fn()
                    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
                    diff = (a.float() - b.float()).abs().max().item()
                    gbs = nbytes / (t_k / 1000) / 1e9
                    verdict = "-" if goal is None else ("met" if t_ref / t_k >= goal else "MISSED") + f" (>= {goal:.0f}x)"
                    ops.add(op, label, str(dtype).replace("torch.", ""), t_ref, t_k, t_gs, f"{t_ref / t_k:.1f}x",
                            gbs, f"{100 * gbs / peak:.0f}%", verdict, f"{diff:.1e}")
    tables.append(ops)

    bwd = Table("CUDA: forward + backward, float32 (ms, median)",
                ["op", "shape", "reference", "kernel", "speed-up", "max abs grad diff"])
    print(f"\n{bwd.title}")
    n, c, h, w = (13, 16, 60, 90) if quick else (49, 3, 512, 512)
    x, flow, z = make_inputs(n, c, h, w, "cuda")
    for op, fn_ref, fn_k in [
        ("splat softmax", lambda a, f, e: reference.splat(a, f, e, "softmax"), lambda a, f, e: _cuda.splat(a, f, e, "softmax", False)),
        ("backward_warp", lambda a, f, e: reference.backward_warp(a, f), lambda a, f, e: _cuda.backward_warp(a, f, "zeros")),
    ]:
        def run(fn):
            a, f, e = (t.clone().requires_grad_() for t in (x, flow, z))
            fn(a, f, e).square().sum().backward()
            return a.grad, f.grad

        t_ref = timeit(lambda: run(fn_ref), max(2, repeat // 2), cuda=True)
        t_k = timeit(lambda: run(fn_k), repeat, cuda=True)
        ga, gb = run(fn_ref), run(fn_k)
        diff = max((u - v).abs().max().item() for u, v in zip(ga, gb))
        bwd.add(op, f"{n}x{c}x{h}x{w}", t_ref, t_k, f"{t_ref / t_k:.1f}x", f"{diff:.1e}")
    tables.append(bwd)

    freq = Table(
        "CUDA: freq_adaptor forward (ms, median)",
        ["shape (B,T,N,C)", "dtype", "torch.fft path (reference)", "fused op (matrix build + kernel)", "speed-up",
         "kernel GB/s", "% of peak",
         "goal (>= 3x, >= 60%)", "max abs diff"],
    )
    print(f"\n{freq.title}")
    fshapes = [(1, 13, 1350, 3072), (2, 13, 1350, 3072)] if not quick else [(1, 13, 1350, 3072)]
    with torch.no_grad():
        for b, t, n_tok, c in fshapes:
            for dtype in (torch.bfloat16, torch.float32):
                g = torch.Generator(device="cpu").manual_seed(2)
                xf = torch.randn(b, t, n_tok, c, generator=g).to("cuda", dtype)
                wf = torch.randn(t // 2 + 1, c, 2, generator=g).to("cuda")
                t_fft = timeit(lambda: reference.freq_adaptor(xf, wf), repeat, cuda=True)
                t_k = timeit(lambda: _cuda.freq_adaptor(xf, wf, 1), repeat, cuda=True)
                t_mat = timeit(lambda: reference.freq_adaptor_matrix(wf, t), repeat, cuda=True)
                diff = (reference.freq_adaptor(xf, wf).float() - _cuda.freq_adaptor(xf, wf, 1).float()).abs().max().item()
                gbs = 2 * xf.numel() * xf.element_size() / (max(t_k - t_mat, 1e-3) / 1000) / 1e9  # kernel only
                ok = t_fft / t_k >= 3 and gbs / peak >= 0.6
                freq.add(f"{b}x{t}x{n_tok}x{c}", str(dtype).replace("torch.", ""), t_fft, t_k, f"{t_fft / t_k:.1f}x",
                         gbs, f"{100 * gbs / peak:.0f}%", "met" if ok else "MISSED", f"{diff:.1e}")
    tables.append(freq)
    return tables


def write(path: Path, header: str, tables: List[Table]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(header + "\n" + "\n".join(t.markdown() for t in tables), encoding="utf-8")
    os.replace(tmp, path)
    print(f"\nwrote {path}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per measurement (median)")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-cuda", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 5)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads")
    command = "python benchmarks/bench_kernels.py" + (" --quick" if args.quick else "")
    if not args.skip_cpu:
        header = (f"# flowctrl_cuda kernels: CPU\n\nMachine: {machine}. Command: `{command}`. "
                  f"Median of {repeat} runs (reference: fewer). Numbers move with machine load.\n")
        write(args.out_dir / ("kernels_cpu_quick.md" if args.quick else "kernels_cpu.md"), header, cpu_section(args.quick, repeat))
    if not args.skip_cuda:
        if torch.cuda.is_available():
            header = f"# flowctrl_cuda kernels: CUDA\n\nCommand: `{command}`. Median of {repeat} runs, CUDA events.\n"
            write(args.out_dir / "kernels_cuda.md", header, cuda_section(args.quick, repeat))
        else:
            print("\nCUDA section skipped: no CUDA device (torch.cuda.is_available() is False)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
