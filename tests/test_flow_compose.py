"""Composition and the reference <-> consecutive conversions."""
import math

import torch

from flowctrl.flow.compose import compose_flows, to_consecutive, to_reference


def _const(b, t, h, w, per_frame):
    f = torch.zeros(b, t, 2, h, w)
    for i, (u, v) in enumerate(per_frame):
        f[:, i, 0], f[:, i, 1] = u, v
    return f


def _swirl(t=5, h=32, w=32, amp=1.5):
    """A smooth, non-uniform consecutive field (gradient well below 1)."""
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    frames = []
    for k in range(t - 1):
        u = amp * torch.sin(2 * math.pi * ys / h + k) + 0.3 * k
        v = amp * torch.cos(2 * math.pi * xs / w - k)
        frames.append(torch.stack([u, v]))
    return torch.stack(frames)[None]


def test_zero_camera_composition_is_identity():
    local = torch.randn(2, 4, 2, 10, 12)
    assert torch.equal(compose_flows(local, torch.zeros_like(local)), local)


def test_zero_local_gives_camera_and_translations_add():
    cam = torch.randn(1, 3, 2, 9, 9)
    assert torch.allclose(compose_flows(torch.zeros_like(cam), cam), cam)
    a = _const(1, 3, 9, 9, [(0, 0), (1.5, -0.5), (2.0, 1.0)])
    b = _const(1, 3, 9, 9, [(0, 0), (-0.25, 2.0), (0.5, 0.5)])
    assert torch.allclose(compose_flows(a, b), a + b)


def test_composition_samples_camera_where_the_object_went():
    h, w = 8, 16
    cam = torch.zeros(1, 2, 2, h, w)
    cam[0, 1, 0] = torch.arange(w).float()[None].expand(h, w) * 0.1  # camera flow grows with x (zoom-like)
    local = _const(1, 2, h, w, [(0, 0), (3.0, 0.0)])
    out = compose_flows(local, cam)
    # a pixel at x moves to x+3 in the scene, then the camera moves that point by 0.1*(x+3)
    assert torch.allclose(out[0, 1, 0, 4, 5], torch.tensor(3.0 + 0.1 * 8))


def test_static_mask_removes_local_motion():
    local = torch.ones(1, 2, 2, 4, 4)
    static = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    static[..., :2, :] = True
    out = compose_flows(local, torch.zeros_like(local), static)
    assert out[0, :, :, :2].abs().max() == 0 and torch.equal(out[0, :, :, 2:], local[0, :, :, 2:])


def test_round_trip_exact_for_translations():
    steps = [(0.7, 0.3), (1.2, -0.4), (-0.5, 0.9), (2.0, 0.0)]
    cons = torch.stack([_const(1, 1, 12, 14, [s])[:, 0] for s in steps], dim=1)
    ref = to_reference(cons)
    assert torch.allclose(ref[0, -1, 0], torch.full((12, 14), 3.4), atol=1e-5)
    assert torch.allclose(to_consecutive(ref), cons, atol=1e-5)


def test_round_trip_smooth_nonuniform_field():
    cons = _swirl()
    ref = to_reference(cons)
    back = to_consecutive(ref)
    inner = (slice(None), slice(None), slice(None), slice(4, -4), slice(4, -4))
    assert (back - cons)[inner].abs().mean() < 0.02
    ref2 = to_reference(back)
    assert (ref2 - ref)[inner].abs().mean() < 0.03


def test_chaining_differs_from_adding_on_nonuniform_motion():
    cons = _swirl(amp=2.0)
    chained = to_reference(cons)
    added = torch.cat([torch.zeros_like(cons[:, :1]), cons.cumsum(dim=1)], dim=1)
    assert (chained - added)[:, -1].abs().mean() > 0.5


def test_round_trip_exact_for_affine_motion_away_from_the_border():
    H = W = 40
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    X, Y = xs - 19.5, ys - 19.5
    ref = torch.zeros(1, 5, 2, H, W)
    for t in range(5):  # zoom 2 %/frame, rotation 0.01 rad/frame, translation (0.5, -0.3) px/frame
        s, a = 1 + 0.02 * t, 0.01 * t
        ref[0, t, 0] = s * (math.cos(a) * X - math.sin(a) * Y) - X + 0.5 * t
        ref[0, t, 1] = s * (math.sin(a) * X + math.cos(a) * Y) - Y - 0.3 * t
    back = to_reference(to_consecutive(ref))
    assert (back - ref)[..., 8:-8, 8:-8].abs().max() < 1e-3
