"""Object regions without weights: geodesic distance on the image's colour gradients.

The region of a seed point is every pixel reachable from it along a path whose length, with each
step costing ``1 + β·|∇I|`` (``I`` = the image in [0, 1] blurred with σ = 2 px, gradients by Sobel
per pixel), stays below ``τ = 0.3·max(H, W)``; the region fades linearly from 1 at ``τ`` to 0 at
``1.25·τ``. A flat object is a disk of radius τ cut by the edges around it; a strong edge (a
colour step of 0.3) costs ``β·0.3 ≈ 6`` px per pixel crossed, so the spread stops at object borders
instead of sheeting over the neighbours. β = 20, σ = 2 px and τ = 0.3 were chosen on the synthetic
scenes of ``benchmarks/bench_segment.py`` (the sweep is in the notes there): lower β or larger τ leak
onto neighbours, higher β or smaller τ stop inside textured objects.

Everything runs at a working size whose long side is 256 px (the parameters are in those pixels) and
the regions are resized back, so the cost does not grow with the image (about 20 ms per seed).
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch
import torch.nn.functional as F_nn

WORK_SIZE = 256
BETA = 20.0
BLUR_PX = 2.0
REACH = 0.3
FADE = 0.25


class EdgeSegmenter:
    """``segmenter(image (1, 3, H, W) in [0, 1], groups) -> (G, H, W)`` float regions in [0, 1].

    ``groups`` is a list of ``(N_i, 2)`` seed points ``(x, y)`` in pixels of the image; the region of a
    group is the pixels near (geodesically) any of its seeds. Per-image cost maps are kept for the
    last image, so several calls on one image compute the gradients once.
    """

    name = "edges"

    def __init__(self, beta: float = BETA, blur_px: float = BLUR_PX, reach: float = REACH, fade: float = FADE,
                 work_size: int = WORK_SIZE):
        self.beta, self.blur_px, self.reach, self.fade, self.work_size = beta, blur_px, reach, fade, work_size

    def cost_map(self, image: torch.Tensor) -> np.ndarray:
        """``(h, w)`` float64 step costs ``1 + β·|∇I|`` at the working size."""
        import cv2

        h, w = image.shape[-2:]
        s = min(1.0, self.work_size / max(h, w))
        small = image[0].detach().float().cpu()
        if s < 1.0:
            small = F_nn.interpolate(small[None], size=(max(1, round(h * s)), max(1, round(w * s))), mode="area")[0]
        im = np.ascontiguousarray(small.permute(1, 2, 0).numpy(), dtype=np.float32)
        if self.blur_px > 0:
            im = cv2.GaussianBlur(im, (0, 0), self.blur_px)
        gx = cv2.Sobel(im, cv2.CV_32F, 1, 0, ksize=3) / 8.0  # Sobel's weights sum to 8: per-pixel slope
        gy = cv2.Sobel(im, cv2.CV_32F, 0, 1, ksize=3) / 8.0
        grad = np.sqrt((gx * gx + gy * gy).sum(-1))
        return 1.0 + self.beta * grad.astype(np.float64)

    def regions_from_cost(self, cost: np.ndarray, groups: Sequence[torch.Tensor], size) -> torch.Tensor:
        """Regions ``(G, H, W)`` for seed groups (pixels of the full ``size = (H, W)``) on a working-size cost map."""
        from skimage.graph import MCP_Geometric

        H, W = int(size[0]), int(size[1])
        h, w = cost.shape
        sy, sx = h / H, w / W
        tau = self.reach * max(h, w)
        out: List[torch.Tensor] = []
        for pts in groups:
            pts = torch.as_tensor(pts, dtype=torch.float32).reshape(-1, 2)
            seeds = {(min(h - 1, max(0, int((float(y) + 0.5) * sy))), min(w - 1, max(0, int((float(x) + 0.5) * sx))))
                     for x, y in pts.tolist()}
            if not seeds:
                out.append(torch.zeros(H, W))
                continue
            dist, _ = MCP_Geometric(cost).find_costs(sorted(seeds))
            region = np.clip(((1.0 + self.fade) * tau - dist) / (self.fade * tau), 0.0, 1.0).astype(np.float32)
            r = torch.from_numpy(region)[None, None]
            if (h, w) != (H, W):
                r = F_nn.interpolate(r, size=(H, W), mode="bilinear", align_corners=False).clamp_(0, 1)
            out.append(r[0, 0])
        return torch.stack(out) if out else torch.zeros(0, H, W)

    def __call__(self, image: torch.Tensor, groups: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.regions_from_cost(self.cost_map(image), groups, image.shape[-2:])
