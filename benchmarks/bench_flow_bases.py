"""How good can a parameter-free dense flow of the controls get? (headroom of the learned models' bases)

The residual FGM and T refine the parametric interpolation P (``flowctrl.models.refiner``). This script
scores, on the benchmark's held-out synthetic scenes and sparse conditions (``bench_flow_models.py``), the
parameter-free candidates for such a base:

* ``gaussian`` — eq. 6–7 (the baseline);
* ``parametric`` — P: a robust affine fit per frame + its residuals at the controls spread with eq. 6–7;
* ``bilateral`` — P's affine fit + its residuals spread with weights that also fall with the colour
  difference to the control pixel (a joint-bilateral spread over a slightly blurred image);
* ``layer oracle`` — P computed per surface from the controls on that surface only, using the scenes'
  true layer ids (not available to a real densifier: the bound of a perfect segmentation).

The gap between ``parametric`` and ``layer oracle`` is what a model that knows which pixels share a surface
with which control can win; T's attention output models exactly that. Prints a markdown table (EPE px,
frames 1–15); ``--test-seed 5000`` for the validation scenes.

    python benchmarks/bench_flow_bases.py --test-seed 10000
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from kornia.filters import gaussian_blur2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_flow_models import MODES, epe  # noqa: E402

from flowctrl.models.refiner import parametric_interpolation, robust_affine_fit  # noqa: E402
from flowctrl.train.data import ConditionConfig, SyntheticConfig, SyntheticFlowDataset, densify, sample_condition  # noqa: E402

LOCAL_MODES = ("random", "grid", "edge")


def bilateral_spread(values: torch.Tensor, mask: torch.Tensor, image: torch.Tensor, sigma: float,
                     sigma_colour: float) -> torch.Tensor:
    """Spread sparse ``values`` (T,2,H,W) set where ``mask`` (T,1,H,W) over every pixel the way
    :func:`flowctrl.flow.densify.gaussian_densify` does (weights exp(−|p−q|²/σ²), divided by max(Σ weights, 1),
    so the spread fades far from every control), with each weight also multiplied by
    exp(−|I(p)−I(q)|²/2σ_c²) (I = the image (3,H,W) in [0, 1] blurred with σ = 1 px); exact at the controls. On a flat
    image it is that spread.
    → (T,2,H,W)."""
    t, _, h, w = values.shape
    idx = torch.nonzero(mask[:, 0].amax(0).flatten() > 0).flatten()
    if len(idx) == 0:
        return torch.zeros_like(values)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=values.dtype), torch.arange(w, dtype=values.dtype), indexing="ij")
    pos = torch.stack([xs.flatten(), ys.flatten()], 1)
    colour = gaussian_blur2d(image[None], (7, 7), (1.0, 1.0), border_type="replicate")[0].reshape(3, -1).T
    weight = torch.exp(-torch.cdist(pos, pos[idx]).square() / sigma ** 2
                       - torch.cdist(colour, colour[idx]).square() / (2 * sigma_colour ** 2))   # (HW, N)
    m = mask[:, 0].reshape(t, -1)[:, idx]                                                   # (T, N)
    v = values.reshape(t, 2, -1)[:, :, idx] * m[:, None]                                     # (T, 2, N)
    num = torch.einsum("pn,tcn->tcp", weight, v)
    den = torch.einsum("pn,tn->tp", weight, m)[:, None].clamp_min(1.0)
    dense = num / den
    dense[:, :, idx] = torch.where(m[:, None] > 0, v, dense[:, :, idx])   # exact at the controls, as eq. 6–7's
    return dense.reshape(t, 2, h, w)


def bilateral_parametric(sparse: torch.Tensor, mask: torch.Tensor, image: torch.Tensor, sigma_rel: float = 0.16,
                         sigma_colour: float = 0.4) -> torch.Tensor:
    """P with its residuals spread by :func:`bilateral_spread` (σ = ``sigma_rel``·max(H, W), P's own σ; at
    σ_c → ∞ this is P up to P's hard radius of 4σ). (T,2,H,W) px."""
    fit = robust_affine_fit(sparse[None], mask[None])[0]
    residual = (sparse - fit) * (mask > 0)
    return fit + bilateral_spread(residual, mask, image, sigma_rel * max(sparse.shape[-2:]), sigma_colour)


def layer_oracle(sparse: torch.Tensor, mask: torch.Tensor, layers: torch.Tensor) -> torch.Tensor:
    """P per surface from that surface's controls (true layer ids (1,H,W)); P of all controls on a surface
    without controls. (T,2,H,W) px."""
    out = parametric_interpolation(sparse[None], mask[None])[0]
    for layer in layers.unique():
        on = layers == layer
        m = mask * on[None]
        if m.sum() > 0:
            out = torch.where(on[None], parametric_interpolation((sparse * m)[None], m[None])[0], out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-scenes", type=int, default=12)
    ap.add_argument("--test-seed", type=int, default=10_000, help="first scene (5000: the validation scenes)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    methods: Dict[str, Callable] = {
        "Gaussian interpolation (eq. 6–7)": lambda s, m, c: densify(s, m),
        "parametric interpolation P": lambda s, m, c: parametric_interpolation(s[None], m[None])[0],
        "P, residuals spread bilaterally (colour σ 0.4, best of 0.05–0.4 on validation)": lambda s, m, c: bilateral_parametric(s, m, c["image"]),
        "layer oracle (P per true surface)": lambda s, m, c: layer_oracle(s, m, c["layers"]),
    }
    data = SyntheticFlowDataset(SyntheticConfig(num_scenes=args.test_scenes, seed=args.test_seed, num_frames=16,
                                                height=64, width=64, with_dense=False))
    errors: Dict[str, Dict[str, List[float]]] = {name: {mode: [] for mode in MODES} for name in methods}
    start = time.time()
    for i in range(args.test_scenes):
        clip = data.clip(i)
        for k, mode in enumerate(MODES):  # the same condition draws as bench_flow_models.py
            g = torch.Generator().manual_seed(777 * i + k)
            sparse, mask, _ = sample_condition(clip["image"], clip["flow"], clip["visibility"], ConditionConfig(mode=mode), g)
            for name, fn in methods.items():
                errors[name][mode].append(epe(fn(sparse, mask, clip), clip["flow"]))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    reference = mean([x for mode in LOCAL_MODES for x in errors["Gaussian interpolation (eq. 6–7)"][mode]])
    print("# Parameter-free dense flows of the controls (benchmarks/bench_flow_bases.py)\n")
    print(f"{args.test_scenes} scenes from seed {args.test_seed}, 64×64, 16 frames; EPE px ({time.time() - start:.0f} s)\n")
    print("| base (no learning) | " + " | ".join(MODES) + " | local | vs Gaussian (local) |")
    print("|---|" + "---|" * (len(MODES) + 2))
    for name, e in errors.items():
        local = mean([x for mode in LOCAL_MODES for x in e[mode]])
        print(f"| {name} | " + " | ".join(f"{mean(e[m]):.3f}" for m in MODES)
              + f" | {local:.3f} | {100 * (reference - local) / reference:+.1f}% |")


if __name__ == "__main__":
    main()
