"""Refinement network T (seed 004 §3.2): pixel-to-pixel U-Net from the Gaussian dense flow to a refined flow.

Like pix2pix (Isola et al. 2017) the generator is a U-Net of 4×4 stride-2 convolutions with
LeakyReLU/ReLU, normalisation and skip connections. It runs per frame on
``(image RGB, bounded dense flow tanh(F/s), sparse mask, t/(T−1))`` and predicts a residual in pixels::

    refined[t] = base[t] + s · head(U-Net(x_t))      (head zero-initialised → T starts as ``base``)

With ``guided=False`` (the seed's T) ``base`` is the Gaussian dense flow itself, so an untrained T returns
the Gaussian interpolation exactly. With ``guided=True`` T also gets two derived, parameter-free inputs
computed from the same controls (the control values are the dense flow at the mask pixels):

* the **parametric interpolation** P (:func:`parametric_interpolation`): per frame a robust (Cauchy IRLS),
  ridge-regularised affine fit to the control points — the global/camera motion that eq. 6–7 lets fade
  to zero away from the points — plus the fit's residuals at the points spread with a narrow Gaussian
  (eq. 6–7 at σ = ``residual_sigma``·max(H, W)); ``base = P``;
* the distance of every pixel to its nearest control point (relative to max(H, W)).

No ground truth enters these inputs; they only re-express the controls. The benchmark reports P alone
as its own row, so what the learning adds on top of it is visible.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from flowctrl.models.control_tokens import true_indices
from flowctrl.flow.grid import pixel_grid


def _norm(ch: int) -> nn.Module:
    return nn.GroupNorm(min(8, ch), ch)


GUIDED_CHANNELS = 3  # tanh(P/s) (2) + distance to the nearest control (1)
CLIP_CHANNELS = 9    # image (3), mask at any frame (1), distance (1), tanh(dense/s) and tanh(base/s) at the last frame (2+2)


def robust_affine_fit(sparse: torch.Tensor, mask: torch.Tensor, ridge: float = 0.3, irls_steps: int = 3) -> torch.Tensor:
    """Per frame, a ridge-regularised affine flow fitted to the controls, re-weighted (Cauchy IRLS, scale
    max(H, W)/64 px) once a frame has ≥ 4 points so a minority of points on another layer does not pull it.

    Args:
        sparse: ``(B, T, 2, H, W)`` px, meaningful where ``mask`` is set; mask: ``(B, T, 1, H, W)``.
        ridge: weight (per control point) pulling the non-translation terms to 0; larger → closer to a
            pure translation (few points cannot pin an affine motion).
    Returns:
        ``(B, T, 2, H, W)`` px; zero at frames without controls.
    """
    b, t, _, h, w = sparse.shape
    size = float(max(h, w))
    dt = sparse.dtype
    m = (mask > 0).to(dt).reshape(b * t, h * w)                          # (N, P) point weights
    v = (sparse * (mask > 0)).reshape(b * t, 2, h * w).transpose(1, 2)    # (N, P, 2)
    xs, ys = pixel_grid(h, w, dtype=dt, device=sparse.device)
    A = torch.stack([torch.ones_like(xs), (xs - (w - 1) / 2) / (size / 2), (ys - (h - 1) / 2) / (size / 2)], -1)
    A = A.reshape(h * w, 3)
    count = m.sum(1)                                                       # (N,)
    reg = torch.diag(torch.tensor([1e-6, ridge, ridge], dtype=dt, device=sparse.device))
    scale = size / 64.0

    def solve(wts: torch.Tensor) -> torch.Tensor:
        M = torch.einsum("pi,np,pj->nij", A, wts, A) + reg * wts.sum(1).clamp_min(1.0)[:, None, None]
        rhs = torch.einsum("pi,np,npc->nic", A, wts, v)
        return torch.linalg.solve(M, rhs)                                 # (N, 3, 2)

    coef = solve(m)
    robust = (count >= 4)[:, None]
    for _ in range(irls_steps):
        r = (torch.einsum("pi,nic->npc", A, coef) - v).norm(dim=-1)
        coef = solve(torch.where(robust, m / (1 + (r / scale) ** 2), m))
    fit = torch.einsum("pi,nic->npc", A, coef) * (count > 0).to(dt)[:, None, None]
    return fit.transpose(1, 2).reshape(b, t, 2, h, w)


def parametric_interpolation(sparse: torch.Tensor, mask: torch.Tensor, ridge: float = 0.3, residual_sigma: float = 0.16,
                             irls_steps: int = 3) -> torch.Tensor:
    """Dense flow from sparse controls: :func:`robust_affine_fit` + its residuals at the controls spread
    with eq. 6–7 (:func:`flowctrl.flow.densify.gaussian_densify`) at σ = ``residual_sigma``·max(H, W).

    Args/Returns: as :func:`robust_affine_fit`; ``(B, T, 2, H, W)`` px, exact at the control pixels.
    """
    from flowctrl.flow.densify import gaussian_densify

    size = float(max(sparse.shape[-2:]))
    fit = robust_affine_fit(sparse, mask, ridge, irls_steps)
    resid = (sparse - fit) * (mask > 0)
    return fit + gaussian_densify(resid, mask, sigma=residual_sigma * size, radius=4 * residual_sigma * size)


def nearest_control_distance(mask: torch.Tensor) -> torch.Tensor:
    """``(B, T, 1, H, W)`` mask → ``(B, 1, H, W)`` distance to the nearest control pixel / max(H, W) (1 if none)."""
    b, _, _, h, w = mask.shape
    grid = pixel_grid(h, w, device=mask.device).reshape(2, -1).T  # (HW, 2)
    out = torch.ones(b, 1, h * w, device=mask.device)
    anyp = mask[:, :, 0].amax(dim=1).reshape(b, -1) > 0
    for i in range(b):
        pts = grid[anyp[i]]
        if len(pts):
            out[i, 0] = (torch.cdist(grid, pts).amin(dim=1) / max(h, w)).clamp_max(1.0)
    return out.view(b, 1, h, w)


def layer_affinity_loss(features: torch.Tensor, layers: torch.Tensor, samples: int = 256,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Auxiliary training loss of the attention output: φ(p)·φ(q)/√D should say whether p and q lie on the
    same surface. Binary cross-entropy over ``samples`` random pixel pairs per image.

    features: (B, D, H, W) or (B, T, D, H, W) (every frame scored against the clip's layers);
    layers: (B, 1, H, W) integer surface ids (the synthetic scenes' ``layer_ids``). → scalar.
    """
    if features.dim() == 5:
        t = features.shape[1]
        features = features.flatten(0, 1)
        layers = layers.repeat_interleave(t, dim=0)
    n, d, h, w = features.shape
    idx = torch.randint(0, h * w, (n, samples), generator=generator).to(features.device)
    f = torch.gather(features.reshape(n, d, h * w), 2, idx[:, None].expand(n, d, samples))   # (n, D, S)
    lab = torch.gather(layers.reshape(n, h * w).to(features.device), 1, idx)                 # (n, S)
    logits = torch.einsum("nds,ndr->nsr", f, f) / d ** 0.5
    same = (lab[:, :, None] == lab[:, None, :]).to(features.dtype)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, same)


class RefinementNet(ModelMixin, ConfigMixin):
    """T: (image (B,3,H,W), dense (B,T,2,H,W) px, mask (B,T,1,H,W)) → refined flow (B,T,2,H,W) px.

    Config: ``channels`` (U-Net widths, one 4×4 s2 down/up level each; H and W must be divisible by
    2**len(channels)), ``flow_scale`` (px), ``guided`` (derived inputs + parametric base, module docstring),
    ``ridge`` / ``residual_sigma`` (of :func:`parametric_interpolation`).
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, channels: Sequence[int] = (32, 64, 128, 128), flow_scale: float = 8.0, in_channels: int = 7,
                 guided: bool = False, ridge: float = 0.3, residual_sigma: float = 0.16, output: str = "residual",
                 feature_dim: int = 16, attention_sigma: float = 0.33, clip_features: bool = False) -> None:
        super().__init__()
        if output not in ("residual", "attention"):
            raise ValueError(f"output must be 'residual' or 'attention', got {output!r}")
        if clip_features and output != "attention":
            raise ValueError("clip_features needs output='attention'")
        # per clip: image, any-frame mask, nearest-control distance, dense and base flow of the last frame
        in_channels = CLIP_CHANNELS if clip_features else in_channels + (GUIDED_CHANNELS if guided else 0)
        self.down = nn.ModuleList()
        prev = in_channels
        for i, ch in enumerate(channels):
            layers = [nn.Conv2d(prev, ch, 4, 2, 1)]
            if i > 0:
                layers.append(_norm(ch))
            layers.append(nn.LeakyReLU(0.2))
            self.down.append(nn.Sequential(*layers))
            prev = ch
        self.up = nn.ModuleList()
        rev = list(channels)[::-1]
        for i, ch in enumerate(rev[1:] + [rev[-1]]):
            in_ch = prev if i == 0 else prev * 2
            self.up.append(nn.Sequential(nn.ConvTranspose2d(in_ch, ch, 4, 2, 1), _norm(ch), nn.ReLU()))
            prev = ch
        if output == "residual":
            self.head = nn.Conv2d(prev + in_channels, 2, 3, padding=1)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        else:  # per-pixel features (D) + the logit of keeping the base flow (1)
            self.head = nn.Conv2d(prev + in_channels, feature_dim + 1, 3, padding=1)
            nn.init.zeros_(self.head.bias)
            with torch.no_grad():  # small random features (a zero φ would get no gradient: φ(p)·φ(q)), keep-base logit 3
                nn.init.normal_(self.head.weight[:feature_dim], std=0.02)
                self.head.weight[feature_dim:].zero_()
                self.head.bias[-1] = 3.0
            self.log_sigma = nn.Parameter(torch.tensor(float(attention_sigma)).log())

    def base_flow(self, dense: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """What an untrained T returns: the dense flow itself, or (guided) the parametric interpolation."""
        if not self.config.guided:
            return dense
        with torch.no_grad():
            return parametric_interpolation(dense.detach() * (mask > 0), mask, self.config.ridge, self.config.residual_sigma)

    def forward(self, image: torch.Tensor, dense: torch.Tensor, mask: torch.Tensor,
                times: Optional[torch.Tensor] = None, return_features: bool = False):
        """image (B,3,H,W) in [0,1]; dense flow (B,T,2,H,W) px; mask (B,T,1,H,W) → (B,T,2,H,W) px.

        ``times`` (T,) or (B,T): the frames' positions t/(T_clip−1) in [0, 1] when ``dense`` holds a subset of a
        clip's frames (training on a few frames per clip); default evenly spaced. Frames at time 0 are 0.
        ``return_features`` (attention output): also return the pixel features φ, (B, D, H, W) with
        ``clip_features`` else (B, T, D, H, W), for :func:`layer_affinity_loss`.
        """
        b, t, _, h, w = dense.shape
        s = self.config.flow_scale
        if times is None:
            times = torch.linspace(0.0, 1.0, t, device=dense.device, dtype=dense.dtype)
        times = times.to(dense).expand(b, t)
        tt = times.view(b, t, 1, 1, 1).expand(b, t, 1, h, w)
        parts = [image.unsqueeze(1).expand(b, t, 3, h, w).to(dense.dtype) * 2 - 1,
                 torch.tanh(dense / s), mask.to(dense.dtype), tt]
        base = self.base_flow(dense, mask)
        if self.config.clip_features:  # one U-Net pass per clip: layer membership does not change over time
            parts = [image.to(dense.dtype) * 2 - 1, mask.to(dense.dtype).amax(dim=1), nearest_control_distance(mask).to(dense.dtype),
                     torch.tanh(dense[:, -1] / s), torch.tanh(base[:, -1] / s)]
        elif self.config.guided:
            dist = nearest_control_distance(mask).to(dense.dtype)
            parts += [torch.tanh(base / s), dist.unsqueeze(1).expand(b, t, 1, h, w)]
        x = torch.cat(parts, dim=1) if self.config.clip_features else torch.cat(parts, dim=2).flatten(0, 1)
        skips = []
        y = x
        for layer in self.down:
            y = layer(y)
            skips.append(y)
        skips.pop()
        for i, layer in enumerate(self.up):
            y = layer(y if i == 0 else torch.cat([y, skips.pop()], dim=1))
        y = self.head(torch.cat([y, x], dim=1))
        if self.config.output == "residual":
            out = base + y.view(b, t, 2, h, w) * s
        else:
            feats = y[:, :self.config.feature_dim]
            if self.config.clip_features:
                y = y.unsqueeze(1).expand(b, t, *y.shape[1:]).flatten(0, 1)
            else:
                feats = feats.view(b, t, *feats.shape[1:])
            out = self._attend(y, base.flatten(0, 1), dense.flatten(0, 1), mask.flatten(0, 1)).view(b, t, 2, h, w)
        out = out * (times > 0).to(out.dtype).view(b, t, 1, 1, 1)
        if return_features:
            if self.config.output != "attention":
                raise ValueError("return_features needs output='attention'")
            return out, feats
        return out

    def _attend(self, y: torch.Tensor, base: torch.Tensor, dense: torch.Tensor, mask: torch.Tensor,
                max_elements: int = 1 << 24) -> torch.Tensor:
        """Attention head: every pixel p takes a softmax mix of the base flow and the values of the frame's
        control points q, logits ``φ(p)·φ(q)/√D − |p−q|²/(σ·max(H,W))²`` (σ learned) and a learned keep-base logit.
        y (N, D+1, H, W) head output; base/dense (N, 2, H, W); mask (N, 1, H, W) → (N, 2, H, W)."""
        n, _, h, w = base.shape
        d = self.config.feature_dim
        idx, valid = true_indices(mask.reshape(n, h * w) > 0)                             # control pixels (N, k)
        k = idx.shape[1]
        feat = y[:, :d].reshape(n, d, h * w)
        keep = y[:, d].reshape(n, h * w)
        fq = torch.gather(feat, 2, idx[:, None].expand(n, d, k))                          # (N, D, k)
        vq = torch.gather(dense.reshape(n, 2, h * w), 2, idx[:, None].expand(n, 2, k))    # (N, 2, k)
        grid = pixel_grid(h, w, dtype=y.dtype, device=y.device).reshape(2, -1).T / max(h, w)                 # (HW, 2)
        sig2 = self.log_sigma.exp().square()
        out = torch.empty(n, 2, h * w, device=y.device, dtype=y.dtype)
        step = max(1, max_elements // (h * w * k))
        for a in range(0, n, step):
            sl = slice(a, a + step)
            pq = grid[idx[sl]]                                                             # (n', k, 2)
            d2 = (grid[None, :, None, :] - pq[:, None]).square().sum(-1)                   # (n', HW, k)
            logits = torch.einsum("ndp,ndk->npk", feat[sl], fq[sl]) / d ** 0.5 - d2 / sig2
            logits = logits.masked_fill(~valid[sl, None, :], float("-inf"))
            att = torch.softmax(torch.cat([keep[sl, :, None], logits], dim=2), dim=2)     # (n', HW, 1+k)
            out[sl] = base[sl].reshape(-1, 2, h * w) * att[None, :, :, 0].transpose(0, 1) + \
                torch.einsum("npk,nck->ncp", att[:, :, 1:], vq[sl])
        return out.view(n, 2, h, w)
