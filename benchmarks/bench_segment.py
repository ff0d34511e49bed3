"""Does a local control's motion stay on its object? follow / leak of every spreading method.

For one arrow dragged on one object:

* **follow** = ``|median flow on the dragged object − target| / |target|`` (0 = the object moves as asked);
* **leak** = ``median |flow| on the other pixels / |target|`` (0 = nothing else moves), as issue 19
  defines it, and **leak (mean)** = the mean instead of the median (stricter: it sees a neighbour
  that moves even when most of the frame stays still).

Flows are the last frame of stage 1 (``compute_unified_flow``, no camera). Methods: ``segment="none"``
with the two densifications (Gaussian eq. 6–7 as written, normalized), the edge-aware regions
(:class:`flowctrl.segment.EdgeSegmenter`, the default and a few parameter variants), and the layer
oracle (the true layer mask as the region: a perfect segmentation).

1. Synthetic scenes (``flowctrl.train.scenes``, exact layer ids, static camera, 256×256): the arrow
   starts at the innermost pixel of the largest foreground layer and asks for (+24, −12) px.
2. Real photos with hand-drawn object masks (polygons / an ellipse below, drawn by reading
   coordinates off a copy of each image with a 20–50 px grid): the bundled ``examples/astronaut.png``
   with ``examples/drag.txt`` (the shuttle lifts off) and each arrow of ``examples/a.json`` alone
   (head, shuttle, flag); scikit-image's ``coffee`` (cup, spoon, saucer on a table: neighbours of
   similar colour) and ``rocket`` (a thin rocket between launch towers).

    python benchmarks/bench_segment.py --scenes 24
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from flowctrl.controls import Controls
from flowctrl.controls.arrows import Arrow
from flowctrl.pipelines.stage1 import compute_unified_flow
from flowctrl.segment import EdgeSegmenter

REPO = Path(__file__).resolve().parents[1]

# hand-drawn polygons (x, y) on examples/astronaut.png (512×512)
ASTRONAUT_OBJECTS: Dict[str, List[Tuple[int, int]]] = {
    "shuttle": [(400, 0), (438, 0), (442, 15), (456, 20), (458, 200), (460, 225), (455, 245), (440, 250), (430, 270),
                (385, 270), (370, 250), (354, 222), (360, 205), (380, 185), (382, 80), (390, 40), (398, 15)],
    "head": [(175, 30), (225, 12), (275, 25), (300, 70), (295, 110), (275, 150), (255, 185), (200, 185), (175, 150),
             (155, 110), (152, 70)],
    "table": [(368, 272), (512, 262), (512, 345), (470, 350), (380, 345), (366, 300)],
    "flag": [(0, 0), (75, 0), (85, 80), (95, 180), (100, 230), (60, 270), (30, 330), (0, 360)],
}
COFFEE_OBJECTS: Dict[str, List[Tuple[int, int]]] = {  # skimage.data.coffee() (600×400); the saucer is an ellipse
    "spoon": [(405, 68), (422, 72), (412, 130), (395, 200), (385, 240), (400, 260), (405, 290), (390, 318), (360, 325),
              (335, 310), (325, 285), (335, 258), (360, 245), (372, 230), (388, 180), (400, 110)],
    "cup": [(185, 45), (230, 25), (290, 18), (350, 22), (395, 40), (410, 75), (400, 130), (385, 190), (360, 235),
            (320, 255), (260, 255), (250, 300), (225, 305), (200, 295), (195, 260), (205, 225), (185, 190), (175, 130),
            (173, 80)],
}
ROCKET_OBJECTS: Dict[str, List[Tuple[int, int]]] = {  # skimage.data.rocket() (640×427)
    "rocket": [(312, 140), (320, 128), (328, 130), (334, 145), (334, 395), (310, 395)],
    "left tower": [(183, 190), (200, 125), (205, 190), (205, 400), (165, 400)],
    "right tower": [(440, 125), (452, 125), (470, 400), (437, 400)],
}


def polygon_mask(points: Sequence[Tuple[int, int]], height: int, width: int) -> torch.Tensor:
    import cv2

    m = np.zeros((height, width), np.uint8)
    cv2.fillPoly(m, [np.asarray(points, np.int32)], 1)
    return torch.from_numpy(m.astype(bool))


def scores(flow: torch.Tensor, target: torch.Tensor, on: torch.Tensor, others: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """follow / leak of the last-frame flow ``(2, H, W)`` for the object ``on (H, W)`` and the named other regions."""
    tn = float(target.norm())
    out = {"follow": float((flow[:, on].median(dim=1).values - target).norm()) / tn}
    mag = flow.norm(dim=0)
    for name, m in others.items():
        out[f"leak {name}"] = float(mag[m].median()) / tn
        out[f"leak (mean) {name}"] = float(mag[m].mean()) / tn
    return out


def oracle(mask_of: Callable[[float, float], torch.Tensor]) -> Callable:
    """A segmenter that returns the true object under each group's first seed."""
    def seg(image: torch.Tensor, groups) -> torch.Tensor:
        return torch.stack([mask_of(float(g[0][0]), float(g[0][1])).float() for g in groups])
    return seg


def methods(layer_mask: Optional[Callable] = None, sam: Optional[str] = None) -> Dict[str, dict]:
    out = {
        "Gaussian eq. 6–7 (segment none, densify gaussian)": {"segment": "none", "densify": "gaussian"},
        "normalized (segment none; the old default)": {"segment": "none"},
        "edges (default: β 20, reach 0.3)": {"segment": EdgeSegmenter()},
        "edges β 10": {"segment": EdgeSegmenter(beta=10)},
        "edges β 40": {"segment": EdgeSegmenter(beta=40)},
        "edges reach 0.2": {"segment": EdgeSegmenter(reach=0.2)},
        "edges reach 0.4": {"segment": EdgeSegmenter(reach=0.4)},
        "edges no blur": {"segment": EdgeSegmenter(blur_px=0)},
    }
    if sam:
        out[f"SAM ({sam})"] = {"segment": sam}
    if layer_mask is not None:
        out["layer oracle (true object as the region)"] = {"segment": oracle(layer_mask)}
    return out


def run_case(image, start, target, on, others, method_kw, frames=5) -> Tuple[Dict[str, float], float]:
    H, W = image.shape[-2:]
    ctl = Controls(arrows=[Arrow(start=start, end=(start[0] + float(target[0]), start[1] + float(target[1])))],
                   image_size=(H, W))
    t0 = time.perf_counter()
    uf = compute_unified_flow(image, ctl, frames, **method_kw)
    return scores(uf.flow[0, -1], target, on, others), time.perf_counter() - t0


def synthetic(n: int, seed0: int, sam: Optional[str]) -> None:
    from scipy import ndimage

    from flowctrl.train.scenes import SceneConfig, render_scene

    cases = []
    for seed in range(seed0, seed0 + n):
        clip = render_scene(seed, SceneConfig(num_frames=2, height=256, width=256, camera="static", num_layers=(2, 3),
                                              moving_layers=False))
        lay = clip.layer_ids[0]
        ids, counts = lay[lay > 0].unique(return_counts=True)
        if len(ids) == 0:
            continue
        layer = int(ids[counts.argmax()])
        dist = ndimage.distance_transform_edt((lay == layer).numpy())
        y, x = np.unravel_index(int(dist.argmax()), dist.shape)
        cases.append((clip.video[0][None], (float(x), float(y)), lay))
    target = torch.tensor([24.0, -12.0])
    print(f"## Synthetic scenes: {len(cases)} scenes from seed {seed0}, 256×256, one arrow of (+24, −12) px on the "
          "largest foreground layer\n")
    print("| method | follow (mean) | leak (mean of medians) | leak (mean \\|flow\\|) | scenes with follow ≤ 0.2 and leak ≤ 0.05 | s / call |")
    print("|---|---|---|---|---|---|")
    current: Dict[str, torch.Tensor] = {}
    for name, kw in methods(lambda x, y: current["lay"] == current["lay"][int(round(y)), int(round(x))], sam).items():
        rows, secs = [], []
        for image, start, lay in cases:
            current["lay"] = lay
            on = lay == lay[int(start[1]), int(start[0])]
            r, s = run_case(image, start, target, on, {"others": ~on}, kw)
            rows.append(r), secs.append(s)
        f = np.array([r["follow"] for r in rows])
        lk = np.array([r["leak others"] for r in rows])
        lm = np.array([r["leak (mean) others"] for r in rows])
        ok = int(((f <= 0.2) & (lk <= 0.05)).sum())
        print(f"| {name} | {f.mean():.3f} | {lk.mean():.3f} | {lm.mean():.3f} | {ok}/{len(rows)} | {np.mean(secs):.3f} |")
    print()


def load_rgb(path: Path) -> torch.Tensor:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float()[None] / 255.0


def _ellipse(center, axes, height, width) -> torch.Tensor:
    import cv2

    m = np.zeros((height, width), np.uint8)
    cv2.ellipse(m, center, axes, 0, 0, 360, 1, -1)
    return torch.from_numpy(m.astype(bool))


def photos() -> List[dict]:
    """The real photos: image ``(1, 3, H, W)``, disjoint object masks (first listed wins), one-control cases."""
    import json

    import skimage.data

    out = []
    image = load_rgb(REPO / "examples" / "astronaut.png")
    H, W = image.shape[-2:]
    masks = {k: polygon_mask(v, H, W) for k, v in ASTRONAUT_OBJECTS.items()}
    drag = np.loadtxt(REPO / "examples" / "drag.txt", delimiter=",")
    arrows = json.loads((REPO / "examples" / "a.json").read_text())["arrows"]
    cases = [("drag.txt: the shuttle lifts off", (float(drag[0, 0]), float(drag[0, 1])),
              tuple(map(float, drag[-1] - drag[0])), "shuttle")]
    for (name, obj), a in zip((("a.json head arrow", "head"), ("a.json shuttle arrow", "shuttle"),
                               ("a.json flag arrow", "flag")), arrows):
        cases.append((name, tuple(map(float, a["start"])), (a["end"][0] - a["start"][0], a["end"][1] - a["start"][1]), obj))
    out.append({"name": "examples/astronaut.png (512×512)", "image": image, "masks": masks, "cases": cases})

    coffee = torch.from_numpy(skimage.data.coffee().copy()).permute(2, 0, 1).float()[None] / 255.0
    H, W = coffee.shape[-2:]
    spoon = polygon_mask(COFFEE_OBJECTS["spoon"], H, W)
    cup = polygon_mask(COFFEE_OBJECTS["cup"], H, W) & ~spoon
    saucer = _ellipse((277, 240), (205, 160), H, W) & ~cup & ~spoon
    masks = {"spoon": spoon, "cup": cup, "saucer": saucer, "table": ~(spoon | cup | saucer)}
    cases = [("cup (arrow in the coffee)", (290.0, 150.0), (40.0, -20.0), "cup"),
             ("spoon (arrow on its bowl)", (365.0, 285.0), (25.0, 15.0), "spoon"),
             ("saucer (arrow on its rim)", (130.0, 300.0), (-20.0, 10.0), "saucer")]
    out.append({"name": "skimage.data.coffee() (600×400)", "image": coffee, "masks": masks, "cases": cases})

    rocket = torch.from_numpy(skimage.data.rocket().copy()).permute(2, 0, 1).float()[None] / 255.0
    H, W = rocket.shape[-2:]
    masks = {k: polygon_mask(v, H, W) for k, v in ROCKET_OBJECTS.items()}
    cases = [("rocket lifts off", (322.0, 250.0), (0.0, -60.0), "rocket")]
    out.append({"name": "skimage.data.rocket() (640×427)", "image": rocket, "masks": masks, "cases": cases})
    return out


def photo(sam: Optional[str]) -> None:
    for spec in photos():
        image, masks = spec["image"], spec["masks"]
        H, W = image.shape[-2:]

        def mask_at(x: float, y: float, masks=masks, H=H, W=W) -> torch.Tensor:
            for m in masks.values():
                if bool(m[int(round(y)), int(round(x))]):
                    return m
            return torch.zeros(H, W, dtype=torch.bool)

        print(f"## {spec['name']}, one control at a time, hand-drawn object masks\n")
        print("leak X = median |flow| on object X / |target| (mean in brackets); 'rest' = every pixel off the dragged object\n")
        for case, start, target, obj in spec["cases"]:
            target = torch.tensor(target, dtype=torch.float32)
            others = {k: m for k, m in masks.items() if k != obj}
            others["rest"] = ~masks[obj]
            print(f"### {case}: start {start}, target ({float(target[0]):+.0f}, {float(target[1]):+.0f}) px on the {obj}\n")
            print("| method | follow | " + " | ".join(f"leak {k}" for k in others) + " | s |")
            print("|---|---|" + "---|" * len(others) + "---|")
            for name, kw in methods(mask_at, sam).items():
                if not name.startswith(("Gaussian", "normalized", "edges (default", "SAM", "layer")):
                    continue
                r, s = run_case(image, start, target, masks[obj], others, kw)
                print(f"| {name} | {r['follow']:.3f} | "
                      + " | ".join(f"{r[f'leak {k}']:.3f} ({r[f'leak (mean) {k}']:.3f})" for k in others) + f" | {s:.2f} |")
            print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sam", default=None, help="also score SAM from this folder / hub id")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("# Does local motion stay on its object? (benchmarks/bench_segment.py)\n")
    synthetic(args.scenes, args.seed, args.sam)
    photo(args.sam)


if __name__ == "__main__":
    main()
