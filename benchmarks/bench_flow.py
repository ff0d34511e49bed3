"""Stage-1 (analytic flow) benchmark: densification accuracy and per-stage time. Prints Markdown tables.

    python benchmarks/bench_flow.py                 # both tables
    python benchmarks/bench_flow.py --only densify --scenes 12
    python benchmarks/bench_flow.py --only timing --sizes 256 512 --frames 49

Densify accuracy: synthetic scenes (``flowctrl.train.scenes``, static camera, every layer moving);
N control points are sampled on the moving layers from the exact flow, densified, and compared
with the exact flow at the last frame (EPE on moving layers and on static pixels).
Timing: ``compute_unified_flow`` with two arrows + the ``orbit`` preset (plane depth), wall seconds
per stage from the progress callback; median of ``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import time
import warnings
from typing import Dict, List, Tuple

import numpy as np
import torch


def densify_table(num_scenes: int, size: int, frames: int) -> str:
    from flowctrl.flow.densify import default_sigma, gaussian_densify
    from flowctrl.flow.sparse import sparse_flow_from_tracks
    from flowctrl.train.scenes import SceneConfig, render_scene

    variants = [("eq. 6-7 as written (sum), σ=170@512", dict(normalized=False)),
                ("normalized (default), σ=170@512", dict(normalized=True)),
                ("normalized, σ=42.5@512", dict(normalized=True, sigma=default_sigma(size, size) / 4))]
    rows: Dict[Tuple[int, str], List[Tuple[float, float]]] = {}
    used = 0
    for seed in range(20 * num_scenes):
        if used >= num_scenes:
            break
        clip = render_scene(seed, SceneConfig(num_frames=frames, height=size, width=size, camera="static",
                                              moving_probability=1.0))
        flow = clip.flow[None]
        moving = flow[0, -1].abs().sum(0) > 0.5
        if moving.sum() < 200:
            continue
        used += 1
        ys, xs = torch.nonzero(moving, as_tuple=True)
        g = torch.Generator().manual_seed(seed)
        zero = flow[0, -1].pow(2).sum(0).sqrt()
        for n in (1, 4, 16):
            pick = torch.randperm(len(ys), generator=g)[:n]
            starts = torch.stack([xs[pick], ys[pick]], 1).float()[None]
            tracks = flow[0, :, :, ys[pick], xs[pick]].permute(2, 0, 1)[None]
            sparse, mask = sparse_flow_from_tracks(tracks, starts, size, size)
            for name, kw in variants:
                dense = gaussian_densify(sparse, mask, **kw)
                err = (dense[0, -1] - flow[0, -1]).pow(2).sum(0).sqrt()
                rows.setdefault((n, name), []).append((float(err[moving].mean()), float(err[~moving].mean())))
            rows.setdefault((n, "zero flow (baseline)"), []).append((float(zero[moving].mean()), 0.0))
    lines = [f"Densification, {used} synthetic scenes {size}×{size}, T={frames}, static camera; EPE px at the last frame",
             "", "| control points | densifier | EPE moving layers | EPE static pixels |", "|---|---|---|---|"]
    for (n, name), vals in sorted(rows.items(), key=lambda kv: kv[0]):
        a = np.asarray(vals)
        lines.append(f"| {n} | {name} | {a[:, 0].mean():.2f} | {a[:, 1].mean():.2f} |")
    return "\n".join(lines)


def timing_table(sizes: List[int], frames: int, repeat: int) -> str:
    from flowctrl.controls import Arrow, Controls, load_camera
    from flowctrl.pipelines.stage1 import compute_unified_flow

    lines = [f"compute_unified_flow, 2 arrows + orbit preset (plane depth), T={frames}, {torch.get_num_threads()} threads;"
             f" median of {repeat}", "", "| size | local s | camera s | compose s | total s | + strength target s |",
             "|---|---|---|---|---|---|"]
    with warnings.catch_warnings():  # warm-up: first-use imports (scipy.spatial for slerp, kornia) are not timed
        warnings.simplefilter("ignore")
        compute_unified_flow(torch.rand(1, 3, 32, 32), Controls(camera=load_camera("orbit"), strength=1.0,
                                                                 arrows=[Arrow(start=(5, 5), end=(9, 9))], image_size=(32, 32)), 3)
    for size in sizes:
        s = size / 512
        ctl = Controls(arrows=[Arrow(start=(300 * s, 150 * s), end=(340 * s, 120 * s)),
                               Arrow(start=(100 * s, 400 * s), end=(120 * s, 380 * s), strength=2.0)],
                       camera=load_camera("orbit"), image_size=(size, size))
        image = torch.rand(1, 3, size, size)
        results = []
        for _ in range(repeat):
            marks: Dict[str, List[float]] = {}

            def callback(stage: str, done: int, total: int) -> None:
                marks.setdefault(stage, []).append(time.perf_counter())

            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compute_unified_flow(image, ctl, frames, callback=callback)
                total = time.perf_counter() - t0
                ctl.strength = 1.0
                t1 = time.perf_counter()
                compute_unified_flow(image, ctl, frames)
                with_strength = time.perf_counter() - t1
                ctl.strength = None
            span = {k: v[-1] - v[0] for k, v in marks.items()}
            results.append((span.get("local", 0), span.get("camera", 0), span.get("compose", 0), total, with_strength))
        med = np.median(np.asarray(results), axis=0)
        lines.append(f"| {size}×{size} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} | {med[3]:.2f} | {med[4]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("densify", "timing"))
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--scene-size", type=int, default=128)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if args.only in (None, "densify"):
        print(densify_table(args.scenes, args.scene_size, 9))
        print()
    if args.only in (None, "timing"):
        print(timing_table(args.sizes, args.frames, args.repeat))


if __name__ == "__main__":
    main()
