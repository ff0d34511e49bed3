"""Warp renderer: softmax splatting along the unified flow + hole filling (known true answers)."""

import pytest
import torch

from flowctrl.errors import InputError
from flowctrl.render import (
    check_render_size,
    fill_holes,
    importance_from_depth,
    importance_from_flow,
    push_pull_fill,
    render_warp,
)


def _image(h=24, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g)


@pytest.mark.parametrize("fill", ["push-pull", "inpaint", "none"])
def test_zero_flow_renders_input_exactly(fill):
    img = _image()
    flow = torch.zeros(1, 5, 2, 24, 32)
    out = render_warp(img, flow, fill=fill)
    assert out.video.shape == (1, 5, 3, 24, 32)
    for t in range(5):
        assert torch.equal(out.video[0, t], img[0])
    assert not out.holes.any()


def test_zero_flow_through_splat_is_identity_to_float_precision():
    # importance given explicitly, and a tiny non-zero flow elsewhere is not involved: the splat
    # itself (not the still-frame shortcut) must reproduce the image.
    img = _image()
    flow = torch.zeros(1, 2, 2, 24, 32)
    flow[0, 1, 0, 0, 0] = 1e-30  # frame 1 "moves" by a denormal: goes through the splat
    out = render_warp(img, flow, fill="none")
    assert torch.allclose(out.video[0, 1], img[0], atol=1e-6)


@pytest.mark.parametrize("dx,dy", [(3, -2), (-5, 4), (0, 7)])
def test_integer_translation_shifts_image_with_holes_only_where_content_entered(dx, dy):
    H, W = 24, 32
    img = _image(H, W)
    flow = torch.zeros(1, 2, 2, H, W)
    flow[0, 1, 0] = dx
    flow[0, 1, 1] = dy
    out = render_warp(img, flow, fill="none")
    frame, holes = out.video[0, 1], out.holes[0, 1, 0]
    expected = torch.zeros_like(img[0])
    expected_holes = torch.ones(H, W, dtype=torch.bool)
    ys, xs = slice(max(dy, 0), H + min(dy, 0)), slice(max(dx, 0), W + min(dx, 0))
    src_ys, src_xs = slice(max(-dy, 0), H + min(-dy, 0)), slice(max(-dx, 0), W + min(-dx, 0))
    expected[:, ys, xs] = img[0][:, src_ys, src_xs]
    expected_holes[ys, xs] = False
    assert torch.equal(holes, expected_holes)
    assert torch.allclose(frame, expected, atol=1e-6)
    # holes count = pixels that entered the view
    assert int(holes.sum()) == H * W - (H - abs(dy)) * (W - abs(dx))


def _two_layers():
    """A 'foreground' red 6x6 square at x=4..9 moving +8 px right over a static blue background."""
    H, W = 16, 24
    img = torch.zeros(1, 3, H, W)
    img[0, 2] = 1.0  # blue background
    img[0, :, 5:11, 4:10] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    flow = torch.zeros(1, 2, 2, H, W)
    flow[0, 1, 0, 5:11, 4:10] = 8.0
    region = (slice(5, 11), slice(12, 18))  # where the square lands, over background pixels
    return img, flow, region


def test_softmax_splatting_nearer_layer_wins_with_depth():
    img, flow, (ry, rx) = _two_layers()
    near_fg = torch.full((1, 1, 16, 24), 10.0)
    near_fg[0, 0, 5:11, 4:10] = 2.0
    out = render_warp(img, flow, depth=near_fg, fill="none")
    patch = out.video[0, 1, :, ry, rx]
    assert torch.allclose(patch[0], torch.ones_like(patch[0]), atol=1e-4)  # red: foreground on top
    assert patch[2].max() < 1e-4
    # the same scene with the square *behind* the background: the background wins there
    far_fg = torch.full((1, 1, 16, 24), 2.0)
    far_fg[0, 0, 5:11, 4:10] = 10.0
    out = render_warp(img, flow, depth=far_fg, fill="none")
    patch = out.video[0, 1, :, ry, rx]
    assert torch.allclose(patch[2], torch.ones_like(patch[2]), atol=1e-4)
    assert patch[0].max() < 1e-4
    # where the square left, the background is disoccluded: holes exactly there
    assert out.holes[0, 1, 0, 5:11, 4:10].all()
    assert int(out.holes[0, 1].sum()) == 6 * 6


def test_without_depth_the_moving_layer_wins():
    img, flow, (ry, rx) = _two_layers()
    out = render_warp(img, flow, fill="push-pull")
    patch = out.video[0, 1, :, ry, rx]
    assert torch.allclose(patch[0], torch.ones_like(patch[0]), atol=1e-3)
    # the disoccluded area is filled from the surrounding background (blue), not left black
    filled = out.video[0, 1, :, 5:11, 4:10]
    assert filled[2].min() > 0.9 and filled[0].max() < 0.1


def test_importance_from_depth_camera_identity_matches_reference_depth():
    depth = torch.rand(1, 1, 8, 10) * 5 + 1
    K = torch.tensor([[[10.0, 0, 5], [0, 10.0, 4], [0, 0, 1]]])
    w2c = torch.eye(4).expand(1, 3, 4, 4).clone()
    z_ref = importance_from_depth(depth, alpha=20.0)
    z_cam = importance_from_depth(depth, alpha=20.0, K=K, w2c=w2c)
    assert z_ref.shape == (1, 1, 1, 8, 10) and z_cam.shape == (1, 3, 1, 8, 10)
    assert torch.allclose(z_cam, z_ref.expand_as(z_cam), atol=1e-5)
    # nearest pixel has importance 0, all others below
    assert z_ref.max() == 0 and z_ref.flatten().argmax() == depth.flatten().argmin()
    # moving the camera 1 unit forward makes every pixel 1 unit nearer
    w2c[0, 1, 2, 3] = -1.0
    z_fwd = importance_from_depth(depth, alpha=20.0, K=K, w2c=w2c)[0, 1]
    zmin = depth.min() - 1
    assert torch.allclose(z_fwd, -20.0 * (1 - zmin / (depth[0] - 1)), atol=1e-4)


def test_importance_from_flow_prefers_motion_and_is_zero_when_still():
    flow = torch.zeros(2, 2, 8, 8)
    flow[1, 0, 2:6, 2:6] = 3.0
    z = importance_from_flow(flow)
    assert torch.equal(z[0], torch.zeros_like(z[0]))
    assert z[1, 0, 3:5, 3:5].min() > z[1, 0, 0, 0]


def test_invalid_sources_are_not_splatted():
    img = _image(12, 12)
    flow = torch.zeros(1, 2, 2, 12, 12)
    flow[0, 1, 0] = 1.0
    valid = torch.ones(1, 2, 1, 12, 12, dtype=torch.bool)
    valid[0, 1, 0, :, :6] = False
    out = render_warp(img, flow, valid=valid, fill="none")
    holes = out.holes[0, 1, 0]
    assert holes[:, :7].all() and not holes[:, 7:].any()
    assert torch.allclose(out.video[0, 1, :, :, 7:], img[0, :, :, 6:11], atol=1e-6)


def test_push_pull_fills_constant_and_keeps_known_pixels():
    g = torch.Generator().manual_seed(1)
    video = torch.tensor([0.2, 0.5, 0.9])[None, :, None, None].expand(3, 3, 20, 30).clone()
    holes = torch.rand(3, 1, 20, 30, generator=g) < 0.7
    holes[2, 0, :, 5:25] = True  # a big hole
    noisy = torch.where(holes, torch.rand(3, 3, 20, 30, generator=g), video)
    filled = push_pull_fill(noisy, (~holes).float())
    assert torch.allclose(filled, video, atol=1e-5)
    assert torch.equal(filled[~holes.expand_as(filled)], noisy[~holes.expand_as(noisy)])


def test_push_pull_interpolates_between_known_sides():
    # left half 0, right half 1, a 4-px gap in between: filled values lie between and increase
    video = torch.zeros(1, 1, 8, 32)
    video[..., 18:] = 1.0
    holes = torch.zeros(1, 1, 8, 32, dtype=torch.bool)
    holes[..., 14:18] = True
    row = push_pull_fill(torch.where(holes, torch.full_like(video, 0.5), video), (~holes).float())[0, 0, 4]
    gap = row[14:18]
    assert (gap >= 0).all() and (gap <= 1).all() and (gap[1:] >= gap[:-1] - 1e-6).all()


def test_inpaint_and_none_modes():
    video = torch.full((2, 3, 16, 16), 0.6)
    holes = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    holes[:, :, 6:10, 6:10] = True
    damaged = torch.where(holes, torch.zeros_like(video), video)
    out = fill_holes(damaged, holes, "inpaint")
    assert torch.allclose(out, video, atol=3 / 255)  # Telea works in uint8, off by <= 2 levels
    assert torch.equal(out[~holes.expand_as(out)], damaged[~holes.expand_as(out)])
    none = fill_holes(damaged + 0.1 * holes, holes, "none")
    assert (none[holes.expand_as(none)] == 0).all()
    with pytest.raises(InputError, match="fill"):
        fill_holes(video, holes, "magic")


def test_any_frame_count_and_size_limits():
    img = _image(8, 8)
    for T in (2, 3, 17):
        flow = torch.randn(1, T, 2, 8, 8, generator=torch.Generator().manual_seed(T))
        flow[:, 0] = 0
        out = render_warp(img, flow)
        assert out.video.shape == (1, T, 3, 8, 8) and torch.isfinite(out.video).all()
        assert out.video.min() >= 0 and out.video.max() <= 1
    for args in [(512, 512, 1), (4096, 512, 2), (4, 512, 2), (512, 512, 5000), (2048, 2048, 60)]:
        with pytest.raises(InputError) as info:
            check_render_size(*args)
        assert "\n" not in str(info.value)
    check_render_size(2048, 2048, 49)


def test_progress_callback_reports_every_frame():
    calls = []
    flow = torch.ones(1, 4, 2, 8, 8)
    flow[:, 0] = 0
    render_warp(_image(8, 8), flow, callback=lambda s, d, t: calls.append((s, d, t)))
    assert ("splat", 4, 4) in calls and ("fill", 4, 4) in calls


@pytest.mark.parametrize("shape", [(3, 17, 23), (2, 32, 32), (1, 9, 2), (2, 1, 1), (1, 5, 40), (3, 261, 140), (2, 261, 140)])
def test_sparse_push_pull_equals_dense_reference(shape):
    from flowctrl.render.fill import push_pull_fill_holes

    g = torch.Generator().manual_seed(sum(shape))
    N, H, W = shape
    video = torch.rand(N, 3, H, W, generator=g)
    holes = torch.rand(N, 1, H, W, generator=g) < 0.6
    if H > 200:  # large frames: the bounding-box push, batched (similar boxes) or per frame
        holes = torch.zeros_like(holes)
        holes[0, :, :, :17] = True
        holes[0, :, 100:150, 60:90] = True
        if N == 3:  # a small far-away box in frame 2 makes the union much larger: per-frame path
            holes[2, :, 240:250, 120:130] = True
    dense = push_pull_fill(video, (~holes).float())
    sparse = push_pull_fill_holes(video, holes)
    assert torch.allclose(dense, sparse, atol=1e-6)
    keep = ~holes.expand_as(video)
    assert torch.equal(sparse[keep], video[keep])
