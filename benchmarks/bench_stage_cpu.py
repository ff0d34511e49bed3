"""Single-thread CPU seconds per stage of the warp pipeline (control files -> mp4), for before/after
comparisons on a shared machine where wall times are inflated by other load.

    python benchmarks/bench_stage_cpu.py                  # 49 frames 512x512, min and median of 5 runs
    python benchmarks/bench_stage_cpu.py --repeats 7 --threads 1

CPU time (``time.process_time``) with ``torch.set_num_threads(1)`` counts only this process's work,
so it moves little with other users' load; the table also prints the wall time of the same runs.
Stages: parse (image + control files), flow (stage 1, ``compute_unified_flow``), splat and fill (the
warp renderer; the renderer reports their wall split, scaled here to its CPU total), encode (mp4).
Nothing here is asserted.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_render import add_input_args  # noqa: E402  (sibling script: the same inputs)


def one_run(image_path: Path, arrows: Path, camera: Path, size: int, frames: int, out: Path) -> Dict[str, float]:
    from flowctrl.controls import Controls
    from flowctrl.pipelines.flowctrl_pipeline import resize_image, load_image
    from flowctrl.pipelines.stage1 import compute_unified_flow
    from flowctrl.render import render_warp
    from flowctrl.video_io import write_video

    cpu, t = time.process_time, {}
    wall0 = time.perf_counter()
    a = cpu()
    image = load_image(image_path)
    controls = Controls.from_files(arrows=arrows, camera=camera, image_size=tuple(image.shape[-2:])).resized(size, size)
    image = resize_image(image, (size, size))
    t["parse"] = cpu() - a
    a = cpu()
    uf = compute_unified_flow(image, controls, frames)
    t["flow"] = cpu() - a
    a = cpu()
    r = render_warp(image, uf.flow, depth=uf.depth, valid=uf.valid, K=uf.K, w2c=uf.w2c)
    render = cpu() - a
    share = r.timings["splat"] / max(r.timings["splat"] + r.timings["fill"], 1e-9)
    t["splat"], t["fill"] = render * share, render * (1 - share)
    a = cpu()
    write_video(out, r.video[0], fps=8)
    t["encode"] = cpu() - a
    t["total"] = sum(t.values())
    t["wall"] = time.perf_counter() - wall0
    return t


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_args(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="no depth given")
    import torch

    torch.set_num_threads(args.threads)
    paths = [Path(args.image), Path(args.arrows), Path(args.camera)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.mp4"
        one_run(*paths, args.size, args.frames, out)  # warm-up: imports, kernel build
        runs = [one_run(*paths, args.size, args.frames, out) for _ in range(args.repeats)]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"{args.frames} frames {args.size}x{args.size}, torch threads {torch.get_num_threads()}, {args.repeats} runs")
    print(f"{'stage':<10}{'CPU-s min':>11}{'CPU-s median':>14}")
    for key in ("parse", "flow", "splat", "fill", "encode", "total", "wall"):
        vals = [r[key] for r in runs]
        print(f"{key:<10}{min(vals):>11.3f}{statistics.median(vals):>14.3f}")
    print(f"{'peak RSS (MB)':<24}{peak_mb:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
