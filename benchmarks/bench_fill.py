"""Disocclusions and sharpness of the warp renderer.

    python benchmarks/bench_fill.py [--size 512 --frames 49] [--fill push-pull inpaint] [--crop-valid]

Table 1 (``--camera pan-left`` on examples/astronaut.png, default settings otherwise): the hole area
of the last frame (pixels no source reached, filled afterwards), the sharpness ratio = variance of
the Laplacian of the last frame / frame 0 (whole frame, and over the pixels the splat covered), and
the middle frame's ratio; with ``--crop-valid`` the same for the cropped video.
Table 2 (a synthetic two-depth scene: a near red square before a far textured wall, camera trucks
right): the mean colour error inside the disoccluded hole against the true wall behind it, and the
share of the hole filled with foreground-like (red) colour.
Nothing is asserted; tests check the known answers.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def lap_var(frame: torch.Tensor, mask: torch.Tensor = None) -> float:
    """Variance of the Laplacian of the grey frame ``(3, H, W)`` in [0, 1] (x255), inside ``mask``."""
    import cv2

    grey = (frame.clamp(0, 1).mean(0) * 255).numpy().astype(np.float64)
    lap = cv2.Laplacian(grey, cv2.CV_64F)[1:-1, 1:-1]
    if mask is not None:
        m = mask.numpy()[1:-1, 1:-1]
        return float(lap[m].var()) if m.any() else float("nan")
    return float(lap.var())


def pan_left(size: int, frames: int, fill: str, crop_valid: bool, sharp: bool = False):
    from flowctrl.controls import Controls, load_camera
    from flowctrl.pipelines import FlowCtrlPipeline
    from flowctrl.pipelines.flowctrl_pipeline import resize_image, load_image

    image = resize_image(load_image(REPO / "examples" / "astronaut.png"), (size, size))
    controls = Controls(camera=load_camera("pan-left"), image_size=(size, size))
    pipe = FlowCtrlPipeline(backend="warp", fill=fill, crop_valid=crop_valid, sharp=sharp)
    t0 = time.perf_counter()
    out = pipe(image, controls=controls, num_frames=frames, height=size, width=size)
    seconds = time.perf_counter() - t0
    video = out.video[0].float()
    holes = out.masks["holes"][0, :, 0]
    last, mid = video.shape[0] - 1, video.shape[0] // 2
    v0 = lap_var(video[0])
    return {"fill": fill + (" +sharp" if sharp else "") + (" +crop" if crop_valid else ""), "hole %": 100 * float(holes[last].float().mean()),
            "sharp last/0": lap_var(video[last]) / v0,
            "sharp last/0 covered": lap_var(video[last], ~holes[last]) / lap_var(video[0], ~holes[last]),
            "sharp mid/0": lap_var(video[mid]) / v0, "lapvar 0": v0, "lapvar last": lap_var(video[last]),
            "s": seconds}


def two_depth(fill: str, size: int = 96):
    """Near red square (z=1) before a far textured wall (z=4); the camera trucks right."""
    from flowctrl.flow.camera import camera_flow
    from flowctrl.render import render_warp

    H = W = size
    g = torch.Generator().manual_seed(0)
    wall = 0.35 + 0.3 * torch.rand(1, 3, H // 8, W // 8, generator=g)
    wall = torch.nn.functional.interpolate(wall, size=(H, W), mode="nearest")
    wall[:, 0] *= 0.3  # the wall has little red: red in the hole means foreground smear
    image = wall.clone()
    depth = torch.full((1, 1, H, W), 4.0)
    sl = slice(H // 3, 2 * H // 3)
    image[:, :, sl, sl] = torch.tensor([0.95, 0.1, 0.1]).view(1, 3, 1, 1)
    depth[:, :, sl, sl] = 1.0
    K = torch.tensor([[[float(W), 0, (W - 1) / 2], [0, float(W), (H - 1) / 2], [0, 0, 1]]])
    w2c = torch.eye(4).repeat(1, 2, 1, 1)
    w2c[0, 1, 0, 3] = -0.12  # camera moves right by 0.12: the square moves left 12 % of W more than the wall
    flow, valid = camera_flow(depth, K, w2c)
    r = render_warp(image, flow, depth=depth, valid=valid, K=K, w2c=w2c, fill=fill)
    # truth: the wall seen from the new camera (the wall is a plane at z=4: shift by f * 0.12 / 4 px)
    wall_flow, _ = camera_flow(torch.full((1, 1, H, W), 4.0), K, w2c)
    truth = render_warp(wall, wall_flow, fill="push-pull").video[0, 1]
    hole = r.holes[0, 1, 0]
    hole = hole & (torch.arange(W)[None, :] < W - 6)  # leave out the strip entering at the border
    err = (r.video[0, 1] - truth).abs().mean(0)[hole]
    red = (r.video[0, 1, 0] - r.video[0, 1, 1:].mean(0))[hole] > 0.35
    return {"fill": fill, "hole px": int(hole.sum()), "colour error": float(err.mean()), "red share": float(red.float().mean())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--frames", type=int, default=49)
    p.add_argument("--fill", nargs="+", default=["push-pull", "inpaint"])
    p.add_argument("--crop-valid", action="store_true")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="no depth given")
    rows = []
    for fill in args.fill:
        rows.append(pan_left(args.size, args.frames, fill, False))
        rows.append(pan_left(args.size, args.frames, fill, False, sharp=True))  # --sharp
        if args.crop_valid:
            rows.append(pan_left(args.size, args.frames, fill, True, sharp=True))
    keys = list(rows[0])
    print(f"pan-left, examples/astronaut.png, {args.size}x{args.size}, {args.frames} frames\n")
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    print("\ntwo-depth scene (near red square before a far wall, camera trucks right)\n")
    rows = [two_depth(f) for f in args.fill]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
