"""Benchmark: control files -> finished mp4 with the warp backend, per stage, on this machine's CPU.

Goal (issue 3): 49 frames at 512x512 from control files (examples/a.json + configs/camera/orbit.json
on examples/astronaut.png) to a finished mp4 in <= 1.5 s wall on 2 CPU cores, and the softmax splat
within 2x of ``torch.nn.functional.grid_sample`` (backward warping of the same frames along the same
flow, the lower bound for this memory traffic), both measured in the same run.

    python benchmarks/bench_render.py                 # median of 3 runs after one warm-up
    python benchmarks/bench_render.py --repeats 5 --size 512 --frames 49 --json out.json

Prints a table: per-stage seconds (parse, flow, splat, fill, encode) of the whole-video path
(``FlowCtrlPipeline.__call__`` + ``write_video``: every stage over all frames, one after the other),
the end-to-end wall time of the same work through ``flowctrl generate`` (in this process, imports
warm), which streams (chunks of 4 frames through all stages, one thread per core, encoded as they
finish: ``flowctrl.pipelines.streaming``), the splat vs grid_sample ratio, and the peak resident
memory of both. Nothing here is asserted; tests never time anything.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List

REPO = Path(__file__).resolve().parents[1]


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _parse(image_path: Path, arrows: Path, camera: Path, size: int):
    """The 'parse' stage: the image at the working size and the controls read from their files."""
    from flowctrl.controls import Controls
    from flowctrl.pipelines.flowctrl_pipeline import resize_image, load_image

    image = load_image(image_path)
    h0, w0 = image.shape[-2:]
    controls = Controls.from_files(arrows=arrows, camera=camera, image_size=(h0, w0)).resized(size, size)
    return resize_image(image, (size, size)), controls


def run_stages(image_path: Path, arrows: Path, camera: Path, size: int, frames: int, out: Path) -> Dict[str, float]:
    """One pass control files -> mp4 with a timer around every stage; returns seconds per stage."""
    from flowctrl.pipelines.stage1 import compute_unified_flow
    from flowctrl.render import render_warp
    from flowctrl.video_io import write_video

    t: Dict[str, float] = {}
    t0 = time.perf_counter()
    image, controls = _parse(image_path, arrows, camera, size)
    t["parse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    unified = compute_unified_flow(image, controls, frames)
    t["flow"] = time.perf_counter() - t0
    result = render_warp(image, unified.flow, depth=unified.depth, valid=unified.valid, K=unified.K, w2c=unified.w2c)
    t["splat"] = result.timings["splat"]
    t["fill"] = result.timings["fill"]
    t0 = time.perf_counter()
    write_video(out, result.video[0], fps=8)
    t["encode"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    t["_holes_fraction"] = float(result.holes.float().mean())
    return t


def run_streamed(image_path: Path, arrows: Path, camera: Path, size: int, frames: int, out: Path) -> Dict[str, float]:
    """What ``flowctrl generate`` runs: parse, the all-frames stage-1 plan, then chunks rendered by the
    worker threads while this thread encodes. Wall seconds for parse / plan / render+encode / total,
    CPU seconds (summed over the workers) per chunk stage, and this thread's encode CPU seconds."""
    from flowctrl.pipelines.stage1 import plan_unified_flow
    from flowctrl.pipelines.streaming import stream_warp_video
    from flowctrl.video_io import VideoWriter

    t: Dict[str, float] = {}
    start = t0 = time.perf_counter()
    image, controls = _parse(image_path, arrows, camera, size)
    t["parse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = plan_unified_flow(image, controls, frames)
    t["plan"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cpu: Dict[str, float] = {}
    chunks = []
    with VideoWriter(out, fps=8) as writer:
        for chunk in stream_warp_video(image, plan, cpu_seconds=cpu):
            writer.write(chunk)
            chunks.append(chunk)
    t["render+encode"] = time.perf_counter() - t0
    t["total"] = time.perf_counter() - start
    t.update({f"cpu_{k}": v for k, v in cpu.items()})
    # the encoder's own threads are not the workers': its CPU time, the same chunks encoded again alone
    c0 = time.process_time()
    with VideoWriter(out.with_name("again.mp4"), fps=8) as writer:
        for chunk in chunks:
            writer.write(chunk)
    t["cpu_encode"] = time.process_time() - c0
    return t


def splat_vs_grid_sample(image_path: Path, arrows: Path, camera: Path, size: int, frames: int,
                         repeats: int) -> Dict[str, float]:
    """Time the softmax splat and grid_sample on the same 49 frames of the same flow."""
    import torch
    import torch.nn.functional as F

    from flowctrl.controls import Controls
    from flowctrl.flow.warp import implementation, splat
    from flowctrl.pipelines.flowctrl_pipeline import resize_image, load_image
    from flowctrl.pipelines.stage1 import compute_unified_flow
    from flowctrl.render import importance_from_depth

    image = load_image(image_path)
    controls = Controls.from_files(arrows=arrows, camera=camera, image_size=tuple(image.shape[-2:])).resized(size, size)
    image = resize_image(image, (size, size))
    uf = compute_unified_flow(image, controls, frames)
    flow = uf.flow[0].contiguous()  # (T,2,H,W)
    src = image.expand(frames, -1, -1, -1).contiguous()
    Z = importance_from_depth(uf.depth, K=uf.K, w2c=uf.w2c)[0].contiguous()  # (T,1,H,W)
    H, W = size, size
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    grid = torch.stack([(xs + flow[:, 0]) * (2 / (W - 1)) - 1, (ys + flow[:, 1]) * (2 / (H - 1)) - 1], dim=-1)
    with torch.no_grad():
        splat(src, flow, weight=Z, mode="softmax", return_norm=True)  # warm-up / kernel build
        F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        t_splat = _median_time(lambda: splat(src, flow, weight=Z, mode="softmax", return_norm=True), repeats)
        t_grid = _median_time(lambda: F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros",
                                                    align_corners=True), repeats)
    return {"splat": t_splat, "grid_sample": t_grid, "ratio": t_splat / t_grid,
            "splat_impl": implementation("splat", src, flow, Z)}


def end_to_end_cli(image_path: Path, arrows: Path, camera: Path, size: int, frames: int, out: Path) -> float:
    """Wall time of ``flowctrl generate`` (in this process, imports already warm)."""
    from flowctrl.cli import main

    t0 = time.perf_counter()
    rc = main(["generate", "--image", str(image_path), "--arrows", str(arrows), "--camera", str(camera),
               "--size", f"{size}x{size}", "--frames", str(frames), "-q", "-o", str(out)])
    if rc != 0:
        raise SystemExit(f"flowctrl generate failed with status {rc}")
    return time.perf_counter() - t0


def streamed_cli_peak_rss(image_path: Path, arrows: Path, camera: Path, size: int, frames: int, out: Path,
                          threads=None) -> float:
    """Peak resident memory (MB) of ``flowctrl generate`` run alone in a new process (imports included)."""
    import subprocess

    code = ("import sys, torch\n"
            f"{'torch.set_num_threads(%d)' % threads if threads else ''}\n"
            "from flowctrl.cli import main\n"
            f"rc = main(['generate', '--image', {str(image_path)!r}, '--arrows', {str(arrows)!r}, '--camera', "
            f"{str(camera)!r}, '--size', '{size}x{size}', '--frames', '{frames}', '-q', '-o', {str(out)!r}])\n"
            # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(proc.stdout.split()[-1]) / 1024.0


def add_input_args(parser: argparse.ArgumentParser) -> None:
    """The quick-start inputs every render benchmark measures (also used by bench_stage_cpu.py)."""
    parser.add_argument("--image", default=str(REPO / "examples" / "astronaut.png"))
    parser.add_argument("--arrows", default=str(REPO / "examples" / "a.json"))
    parser.add_argument("--camera", default=str(REPO / "configs" / "camera" / "orbit.json"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=49)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_args(parser)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="no depth given")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [Path(args.image), Path(args.arrows), Path(args.camera)]
    for p in paths:
        if not p.is_file():
            raise SystemExit(f"bench_render: {p} not found")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.mp4"
        run_stages(*paths, args.size, args.frames, out)  # warm-up: imports, kernel build, caches
        runs = [run_stages(*paths, args.size, args.frames, out) for _ in range(args.repeats)]
        stages = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        streamed = [run_streamed(*paths, args.size, args.frames, Path(tmp) / "s.mp4") for _ in range(args.repeats)]
        streamed = {k: statistics.median(r[k] for r in streamed) for k in streamed[0]}
        cli = statistics.median(end_to_end_cli(*paths, args.size, args.frames, Path(tmp) / f"cli{i}.mp4")
                                for i in range(args.repeats))
        cmp = splat_vs_grid_sample(*paths, args.size, args.frames, args.repeats)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        stream_peak_mb = streamed_cli_peak_rss(*paths, args.size, args.frames, Path(tmp) / "peak.mp4", args.threads)

    print(f"warp renderer: {args.frames} frames {args.size}x{args.size}, torch threads {torch.get_num_threads()}, "
          f"cpu count {os.cpu_count()}, median of {args.repeats} (after 1 warm-up)")
    print(f"{'whole-video path, stage':<28}{'seconds':>10}")
    for key in ("parse", "flow", "splat", "fill", "encode", "total"):
        print(f"{key:<28}{stages[key]:>10.3f}")
    print(f"{'streamed path, stage':<28}{'seconds':>10}")
    for key, label in (("parse", "parse"), ("plan", "stage-1 plan (wall)"), ("cpu_flow", "camera+compose (cpu)"),
                       ("cpu_splat", "splat (cpu)"), ("cpu_fill", "fill (cpu)"), ("cpu_uint8", "uint8 (cpu)"),
                       ("cpu_encode", "encode alone (cpu)"), ("render+encode", "render+encode (wall)"),
                       ("total", "total (wall)")):
        print(f"{label:<28}{streamed[key]:>10.3f}")
    print(f"{'flowctrl generate (wall)':<28}{cli:>10.3f}   goal <= 1.5 (streamed: chunks of frames, all cores)")
    print(f"{'splat alone (' + cmp['splat_impl'] + ')':<28}{cmp['splat']:>10.3f}")
    print(f"{'grid_sample (same data)':<28}{cmp['grid_sample']:>10.3f}")
    print(f"{'splat / grid_sample':<28}{cmp['ratio']:>10.2f}   goal <= 2")
    print(f"{'peak RSS (MB)':<28}{peak_mb:>10.0f}   this process (whole-video path)")
    print(f"{'peak RSS generate (MB)':<28}{stream_peak_mb:>10.0f}   flowctrl generate alone (new process, streamed)")
    print(f"{'hole fraction':<28}{stages['_holes_fraction']:>10.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"stages": stages, "streamed": streamed, "cli_wall": cli, "splat_vs_grid_sample": cmp,
                                               "peak_rss_mb": peak_mb, "generate_peak_rss_mb": stream_peak_mb, "frames": args.frames, "size": args.size,
                                               "threads": torch.get_num_threads()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
