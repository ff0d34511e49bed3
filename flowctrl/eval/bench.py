"""Benchmark harness: camera accuracy (oracle vs generated) and reconstruction (Table 2 protocol).

Both write ``results.json``, ``results.md`` (Markdown tables) and, for the camera benchmark,
``paths.png`` (estimated vs requested camera centres, top view) into an output folder. Files are
written to a temporary name and renamed, so an interrupted run leaves no partial result.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from flowctrl.errors import InputError

logger = logging.getLogger("flowctrl")

__all__ = ["CameraCase", "basic_cases", "difficult_cases", "re10k_cases", "render_with_backend",
           "run_camera_bench", "run_reconstruct_bench", "BASIC_PRESETS"]

# Presets with camera translation (COLMAP cannot triangulate pure rotations or focal zooms).
BASIC_PRESETS = ("dolly-in", "dolly-out", "truck-left", "truck-right", "pedestal-up", "orbit-left", "orbit-right")
SUITES = ("basic", "difficult", "re10k")
# Presets move 0.3-0.5 units (orbits 1 unit around a point 3.7 units ahead); the scene's walls are
# 3-7 units away, so straight moves are scaled for usable parallax (orbits already have it).
PRESET_SCALE = {"orbit-left": 1.0, "orbit-right": 1.0}
DEFAULT_PRESET_SCALE = 3.0


@dataclass
class CameraCase:
    """One benchmark item.

    Attributes:
        name, suite: labels. video: ``(T,3,H,W)`` ground-truth video (the oracle input).
        w2c: ``(T,4,4)`` requested trajectory (relative to frame 0). K: ``(3,3)`` pixels.
        depth: ``(1,1,H,W)`` true depth of frame 0 when known (synthetic), else None.
    """

    name: str
    suite: str
    video: Tensor
    w2c: Tensor
    K: Tensor
    depth: Optional[Tensor] = None


def _scene_config(num_frames: int, height: int, width: int, camera: Any, camera_scale: float = 1.0):
    from flowctrl.train.scenes import SceneConfig

    return SceneConfig(num_frames=num_frames, height=height, width=width, camera=camera, moving_layers=False,
                       camera_scale=camera_scale,
                       num_layers=(3, 3), textures=("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"))


def _preset_w2c(name: str, num_frames: int) -> Tensor:
    from flowctrl.controls import load_camera

    return load_camera(name, num_frames).w2c.to(torch.float64)


def basic_cases(num_frames: int = 16, height: int = 256, width: int = 256, seed: int = 0) -> List[CameraCase]:
    """Regularly sampled presets (:data:`BASIC_PRESETS`) on synthetic scenes with exact depth."""
    from flowctrl.train.scenes import render_scene

    cases = []
    for i, preset in enumerate(BASIC_PRESETS):
        clip = render_scene(seed + i, _scene_config(num_frames, height, width, _preset_w2c(preset, num_frames),
                                                    camera_scale=PRESET_SCALE.get(preset, DEFAULT_PRESET_SCALE)))
        cases.append(CameraCase(preset, "basic", clip.video, clip.w2c.double(), clip.K.double(), clip.depth[:1]))
    return cases


def _irregular(w2c: Tensor, num_frames: int, rng: np.random.Generator) -> Tensor:
    """Resample a dense path with uneven speed (the paper's irregularly sampled "difficult" paths).

    The dense poses get random, uneven timestamps; resampling evenly in time then takes unevenly
    spaced steps along the path (slerp / linear between neighbours, A's ``CameraTrajectory.resample``).
    """
    from flowctrl.controls import CameraTrajectory

    gaps = np.exp(rng.uniform(np.log(0.1), 0.0, size=w2c.shape[0] - 1))
    times = torch.from_numpy(np.concatenate([[0.0], np.cumsum(gaps)]))
    return CameraTrajectory(w2c=w2c, timestamps=times).resample(num_frames).w2c.to(torch.float64)


def difficult_cases(num_frames: int = 16, height: int = 256, width: int = 256, seed: int = 100) -> List[CameraCase]:
    """Irregularly sampled compound paths (random smooth paths with larger rotations, uneven speed)."""
    from flowctrl.train.scenes import random_trajectory, render_scene

    cases = []
    for i in range(5):
        rng = np.random.default_rng(seed + i)
        dense = random_trajectory(rng, 2 * num_frames, max_translation=1.2, max_rotation_deg=20.0)
        w2c = _irregular(dense, num_frames, rng)
        clip = render_scene(seed + i, _scene_config(num_frames, height, width, w2c))
        cases.append(CameraCase(f"random-{i}", "difficult", clip.video, clip.w2c.double(), clip.K.double(),
                                clip.depth[:1]))
    return cases


def re10k_cases(folder: os.PathLike, num_frames: int = 16, height: int = 256, width: int = 384) -> List[CameraCase]:
    """RealEstate10K clips: every ``<id>.mp4`` with its ``<id>.txt`` camera file in ``folder``."""
    from flowctrl.controls import load_camera, load_reference_video

    folder = Path(folder)
    videos = sorted(folder.glob("*.mp4"))
    if not videos:
        raise InputError.at(folder, "re10k", "no .mp4 clips found", "give the folder holding <id>.mp4 + <id>.txt")
    cases = []
    for path in videos:
        txt = path.with_suffix(".txt")
        if not txt.is_file():
            logger.warning("skipping %s: no camera file %s", path.name, txt.name)
            continue
        traj = load_camera(txt, num_frames)
        video = load_reference_video(path, num_frames=num_frames, size=(height, width))
        cases.append(CameraCase(path.stem, "re10k", video, traj.w2c.to(torch.float64),
                                traj.intrinsics(height, width).to(torch.float64)))
    return cases


def fit_plane_distance(video: Tensor, K: Tensor, w2c: Tensor, flow: Optional[Tensor] = None) -> float:
    """Distance of the fronto-parallel plane whose camera flow best explains a real clip.

    RealEstate10K translations have an arbitrary SfM scale, so a fixed plane distance gives flows
    off by that unknown factor. This picks, on a log grid from 0.1 to 100 units, the distance whose
    analytic camera flow (B's ``camera_flow``) has the smallest median end-point error against the
    flow measured on the clip (DIS).

    Args:
        video: ``(T,3,H,W)``. K: ``(3,3)`` px. w2c: ``(T,4,4)``. flow: measured ``(T,2,H,W)`` if known.
    """
    from flowctrl.flow.camera import camera_flow
    from flowctrl.flow.estimate import estimate_flow

    measured = flow if flow is not None else estimate_flow(video)[0]
    # a quarter-resolution fit is as good (flow and K scale together) and 16x cheaper
    factor = 4
    H, W = video.shape[-2] // factor, video.shape[-1] // factor
    measured = torch.nn.functional.interpolate(measured.float(), size=(H, W), mode="area") / factor
    K_small = K.clone().to(torch.float32)
    K_small[:2] /= factor
    K_small[0, 2] = (K[0, 2] + 0.5) / factor - 0.5
    K_small[1, 2] = (K[1, 2] + 0.5) / factor - 0.5
    best, best_err = 1.0, float("inf")
    for distance in np.geomspace(0.1, 100.0, 25):
        depth = torch.full((1, 1, H, W), float(distance))
        predicted, _ = camera_flow(depth, K_small[None], w2c[None].float())
        # every pixel counts: a too-near plane pushes pixels out of view, which must cost, not vanish
        value = float((predicted[0, 1:] - measured[1:]).norm(dim=1).median())
        if value < best_err:
            best, best_err = float(distance), value
    return best


def render_with_backend(case: CameraCase, backend: Any = "warp", plane_distance: Optional[float] = None,
                        default: bool = False, **backend_kwargs: Any) -> Tensor:
    """Animate frame 0 of ``case`` along its requested trajectory → ``(T,3,H,W)``.

    Uses the scene's true depth when known, otherwise a fronto-parallel plane at ``plane_distance``
    (RealEstate10K trajectories have an arbitrary SfM scale; None fits it with
    :func:`fit_plane_distance`). ``default=True`` renders what a user gets with default settings and
    nothing from the clip but frame 0 and the camera file: ``--depth-model auto`` and the scene size
    of :mod:`flowctrl.depth.scale` (``plane_distance``, when given, still overrides).
    """
    from flowctrl.controls import CameraTrajectory, Controls
    from flowctrl.pipelines import FlowCtrlPipeline

    T, _, H, W = case.video.shape
    K_norm = case.K.clone()
    K_norm[0, :] /= W
    K_norm[1, :] /= H
    K_norm[0, 2] = (case.K[0, 2] + 0.5) / W  # A's convention: pixel cx = cx_norm·W − 0.5
    K_norm[1, 2] = (case.K[1, 2] + 0.5) / H
    K_norm[2] = torch.tensor([0.0, 0.0, 1.0], dtype=K_norm.dtype)
    traj = CameraTrajectory(w2c=case.w2c, K_normalized=K_norm, name=case.name, scale_free=case.depth is None)
    controls = Controls(camera=traj, image_size=(H, W))
    if case.depth is not None:
        depth = case.depth
    elif default:
        depth = None
    else:
        if plane_distance is None:
            plane_distance = fit_plane_distance(case.video, case.K, case.w2c)
            logger.info("%s: plane distance %.3g fitted to the clip's flow", case.name, plane_distance)
        depth = torch.full((1, 1, H, W), float(plane_distance))
    pipe = backend if callable(backend) and not isinstance(backend, str) else None
    if pipe is None:
        pipe = FlowCtrlPipeline(backend=backend, **backend_kwargs)
    extra = {"plane_distance": plane_distance} if default and plane_distance is not None else {}
    out = pipe(case.video[:1], controls=controls, num_frames=T, height=H, width=W, depth=depth, return_flow=False,
               **extra)
    return out.video[0].float().clamp(0, 1)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    from flowctrl.io_safety import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, flag="--output") as tmp:
        write(tmp)


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def camera_markdown(rows: List[Dict[str, Any]]) -> str:
    """Markdown table of camera benchmark rows (medians over successful trials)."""
    head = ("| case | suite | video | RotErr Σ | TransErr Σ | CamMC Σ | RotErr/f | TransErr/f | CamMC/f | failed |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {r['case']} | {r['suite']} | {r['video']} | {_fmt(r['RotErr'])} | {_fmt(r['TransErr'])} | {_fmt(r['CamMC'])} | "
        f"{_fmt(r['RotErr_mean'], 4)} | {_fmt(r['TransErr_mean'], 4)} | {_fmt(r['CamMC_mean'], 4)} | "
        f"{r['failures']}/{r['trials']} |\n" for r in rows)
    summary = ["\n| suite | video | median RotErr Σ | median TransErr Σ | median CamMC Σ | failure rate |\n",
               "|---|---|---:|---:|---:|---:|\n"]
    for suite in dict.fromkeys(r["suite"] for r in rows):
        for video in dict.fromkeys(r["video"] for r in rows):
            sel = [r for r in rows if r["suite"] == suite and r["video"] == video]
            if not sel:
                continue
            def med(key: str) -> float:
                vals = [r[key] for r in sel if not math.isnan(r[key])]
                return float(median(vals)) if vals else float("nan")
            rate = sum(r["failures"] for r in sel) / max(sum(r["trials"] for r in sel), 1)
            summary.append(f"| {suite} | {video} | {_fmt(med('RotErr'))} | {_fmt(med('TransErr'))} | "
                           f"{_fmt(med('CamMC'))} | {rate:.2f} |\n")
    return head + body + "".join(summary)


def _plot_paths(entries: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flowctrl.eval.camera import normalize_trajectory

    n = len(entries)
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, entry in zip(axes.flat, entries):
        req = normalize_trajectory(entry["requested"])[:, :3, 3].numpy()
        ax.plot(req[:, 0], req[:, 2], "k-o", ms=2, label="requested")
        for label, w2c, style in entry["estimates"]:
            if w2c is None:
                continue
            est = normalize_trajectory(w2c)[:, :3, 3].numpy()
            ax.plot(est[:, 0], est[:, 2], style, ms=2, label=label)
        ax.set_title(entry["name"], fontsize=8)
        ax.set_xlabel("x", fontsize=7)
        ax.set_ylabel("z", fontsize=7)
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles = {}
    for ax in axes.flat:  # one legend with every label (a failed row is missing from some panels)
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=len(handles), fontsize=7)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def run_camera_bench(suites: Sequence[str] = SUITES, backend: Optional[str] = "warp", trials: int = 3,
                     out_dir: os.PathLike = "outputs/bench/camera", re10k_dir: Optional[os.PathLike] = None,
                     num_frames: int = 16, size: int = 256, matcher: str = "sequential", seed: int = 0,
                     plane_distance: Optional[float] = None, num_threads: int = -1,
                     printer: Callable[[str], None] = print) -> Dict[str, Any]:
    """Oracle vs generated camera accuracy for every case of ``suites``; writes JSON, Markdown, PNG.

    Args:
        backend: stage-2 backend for the generated row (``"warp"``, ``"diffusion"``) or None for the
            oracle rows only.
        size: synthetic scenes are ``size×size``; RealEstate10K clips keep their 3:2 aspect
            (``size × 1.5·size``).
    """
    from flowctrl.eval.camera import evaluate_camera

    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise InputError.at(None, "suite", f"unknown suite(s) {unknown}", f"use some of {list(SUITES)}")
    cases: List[CameraCase] = []
    if "basic" in suites:
        cases += basic_cases(num_frames, size, size, seed)
    if "difficult" in suites:
        cases += difficult_cases(num_frames, size, size, seed + 100)
    if "re10k" in suites:
        if re10k_dir is None:
            raise InputError.at(None, "re10k", "no RealEstate10K folder given", "pass --re10k DIR")
        cases += re10k_cases(re10k_dir, num_frames, size, int(round(size * 1.5 / 8)) * 8)
    rows, plots = [], []
    start = time.perf_counter()
    for case in cases:
        videos = [("oracle", case.video)]
        if backend is not None:
            videos.append((str(backend), render_with_backend(case, backend, plane_distance=plane_distance)))
            if case.depth is None:  # real clips: also what default settings give (no fitting to the clip)
                videos.append((f"{backend}-default", render_with_backend(case, backend, default=True)))
        entry = {"name": f"{case.suite}/{case.name}", "requested": case.w2c, "estimates": []}
        for (label, video), style in zip(videos, ("b-", "r--", "g:")):
            acc = evaluate_camera(video, case.K, case.w2c, trials=trials, matcher=matcher, seed=seed,
                                  num_threads=num_threads)
            row = {"case": case.name, "suite": case.suite, "video": label, **acc.summary(),
                   "per_trial": [e.as_dict() for e in acc.errors]}
            rows.append(row)
            best = next((e.w2c for e in acc.estimates if e.success), None)
            entry["estimates"].append((label, best, style))
            printer(f"{case.suite:9s} {case.name:18s} {label:8s} RotErr {_fmt(row['RotErr'])}  "
                    f"TransErr {_fmt(row['TransErr'])}  CamMC {_fmt(row['CamMC'])}  failed {acc.failures}/{trials}")
        plots.append(entry)
    out_dir = Path(out_dir)
    meta = {"suites": list(suites), "backend": backend, "trials": trials, "num_frames": num_frames, "size": size,
            "matcher": matcher, "seed": seed, "plane_distance": plane_distance,
            "seconds": round(time.perf_counter() - start, 1)}
    result = {"meta": meta, "rows": rows}
    markdown = camera_markdown(rows)
    _atomic_write(out_dir / "results.json", lambda p: p.write_text(json.dumps(result, indent=1)))
    _atomic_write(out_dir / "results.md", lambda p: p.write_text(markdown))
    if plots:
        _plot_paths(plots, out_dir / "paths.png")
    printer(markdown)
    return result


def run_reconstruct_bench(re10k_dir: os.PathLike, out_dir: os.PathLike = "outputs/bench/reconstruct",
                          num_frames: int = 16, height: int = 256, width: int = 384,
                          plane_distance: Optional[float] = None, lpips_path: Optional[os.PathLike] = None,
                          flow_method: str = "dis", printer: Callable[[str], None] = print) -> Dict[str, Any]:
    """Table 2 protocol: animate frame 0 of every real clip and compare each frame with the clip.

    Three controls per clip: ``reference-video`` (the flow estimated from the clip itself),
    ``camera`` (the clip's trajectory, plane depth at ``plane_distance``, fitted per clip when None)
    and ``camera-default`` (the trajectory with default settings: auto depth, scene size from the path,
    nothing fitted to the clip). All with the warp backend.
    """
    from flowctrl.controls import Controls
    from flowctrl.eval.quality import frame_quality, load_lpips
    from flowctrl.pipelines import FlowCtrlPipeline

    lpips = load_lpips(lpips_path) if lpips_path is not None else None
    cases = re10k_cases(re10k_dir, num_frames, height, width)
    pipe = FlowCtrlPipeline(backend="warp")
    per: Dict[str, Dict[str, List[List[float]]]] = {}
    rows = []
    for case in cases:
        ref_controls = Controls(ref_video=case.video, image_size=(height, width))
        videos = {
            "reference-video": pipe(case.video[:1], controls=ref_controls, num_frames=num_frames, height=height,
                                    width=width, return_flow=False).video[0],
            "camera": render_with_backend(case, pipe, plane_distance=plane_distance),
            # default settings: auto depth and the scene size from the camera file alone (no fitting)
            "camera-default": render_with_backend(case, pipe, default=True),
        }
        for control, video in videos.items():
            q = frame_quality(video.float().clamp(0, 1), case.video, lpips)
            for metric, values in q.items():
                per.setdefault(control, {}).setdefault(metric, []).append(values.tolist())
            row = {"clip": case.name, "control": control,
                   **{m: float(v[1:].mean()) for m, v in q.items()}}  # frame 0 is the input itself
            rows.append(row)
            printer(f"{case.name} {control:16s} " + "  ".join(f"{m} {row[m]:.3f}" for m in q))
    metrics = list(next(iter(per.values())).keys())
    per_frame = {c: {m: np.mean(np.array(v), axis=0).tolist() for m, v in d.items()} for c, d in per.items()}
    lines = ["| control | " + " | ".join(metrics) + " |\n", "|---|" + "---:|" * len(metrics) + "\n"]
    for control in per:
        sel = [r for r in rows if r["control"] == control]
        lines.append(f"| {control} | " + " | ".join(f"{np.mean([r[m] for r in sel]):.3f}" for m in metrics) + " |\n")
    lines.append("\nPer frame index (mean over clips; frame 0 is the input):\n\n")
    lines.append("| control | metric | " + " | ".join(str(t) for t in range(num_frames)) + " |\n")
    lines.append("|---|---|" + "---:|" * num_frames + "\n")
    for control, d in per_frame.items():
        for metric, values in d.items():
            lines.append(f"| {control} | {metric} | " + " | ".join(
                "inf" if math.isinf(v) else f"{v:.2f}" if metric == "PSNR" else f"{v:.3f}" for v in values) + " |\n")
    markdown = "".join(lines)
    result = {"meta": {"num_frames": num_frames, "height": height, "width": width, "plane_distance": plane_distance,
                       "lpips": lpips_path is not None, "flow_method": flow_method},
              "rows": rows, "per_frame": per_frame}
    out_dir = Path(out_dir)
    _atomic_write(out_dir / "results.json", lambda p: p.write_text(json.dumps(result, indent=1, default=float)))
    _atomic_write(out_dir / "results.md", lambda p: p.write_text(markdown))
    printer(markdown)
    return result
