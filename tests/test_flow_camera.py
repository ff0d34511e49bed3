"""Camera flow: reprojection against closed forms and a real stereo pair; visibility; Plücker rays."""
import numpy as np
import pytest
import torch

from flowctrl.flow._sampling import backward_warp
from flowctrl.flow.camera import camera_flow, homography_flow, plucker_rays


def _rot(axis, angle):
    return torch.from_numpy(__import__("scipy.spatial.transform", fromlist=["Rotation"]).Rotation.from_rotvec(
        np.asarray(axis, float) / np.linalg.norm(axis) * angle).as_matrix())


def _K(f, cx, cy):
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize("axis,angle", [((0, 1, 0), 0.08), ((1, 0.3, -0.2), 0.05), ((0, 0, 1), 0.2)])
def test_pure_rotation_equals_homography_for_any_depth(axis, angle):
    H, W = 24, 32
    K = _K(28.0, 15.5, 11.5)[None]
    R = _rot(axis, angle)
    w2c = torch.eye(4, dtype=torch.float64).repeat(1, 2, 1, 1)
    w2c[0, 1, :3, :3] = R
    expected = homography_flow(K, R[None], H, W).float()
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        depth = torch.rand(1, 1, H, W, generator=g) * 20 + 0.1  # wildly varying depth
        flow, _ = camera_flow(depth, K, w2c, occlusion=False)
        assert flow[:, 0].abs().max() < 1e-6  # frame 0 is the reference itself
        assert (flow[0, 1] - expected[0]).abs().max() < 1e-3


def test_fronto_parallel_plane_translation_matches_analytic_flow():
    H, W, Z = 20, 30, 4.0
    f, cx, cy = 25.0, 14.5, 9.5
    K = _K(f, cx, cy)[None]
    steps = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.1, -0.2, 0.0], [0.2, 0.1, 0.5]], dtype=torch.float64)
    w2c = torch.eye(4, dtype=torch.float64).repeat(1, len(steps), 1, 1)
    w2c[0, :, :3, 3] = steps  # X_t = X + t
    flow, valid = camera_flow(torch.full((1, 1, H, W), Z), K, w2c)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    X, Y = (xs - cx) * Z / f, (ys - cy) * Z / f
    for t, (tx, ty, tz) in enumerate(steps.tolist()):
        u = f * (X + tx) / (Z + tz) + cx - xs
        v = f * (Y + ty) / (Z + tz) + cy - ys
        assert torch.allclose(flow[0, t, 0].double(), u, atol=1e-4)
        assert torch.allclose(flow[0, t, 1].double(), v, atol=1e-4)
    # lateral translation: constant flow f*t/Z, so a column of pixels leaves the view
    assert torch.allclose(flow[0, 1, 0], torch.full((H, W), 25.0 * 0.3 / 4.0), atol=1e-4)
    assert not valid[0, 1, 0, :, -1].any() and valid[0, 1, 0, :, :-2].all()


def test_stereo_motorcycle_disparity_is_reproduced(tmp_path):
    """Middlebury 2014 motorcycle (skimage): left camera = reference, right camera = frame 1.

    Calibration of the 4x downsampled pair (skimage docstring): f = 994.978 px, cx = 311.193,
    cy = 254.877, doffs = 31.086 px (the right camera's principal point is cx + doffs), B = 193.001 mm.
    Depth z = f·B / (d + doffs) in mm; the right camera sits at +B on x (w2c translation -B), and its
    K has cx + doffs. The flow left → right must then be (-d, 0).
    """
    skdata = pytest.importorskip("skimage.data")
    left, right, disp = skdata.stereo_motorcycle()
    f, cx, cy, doffs, B = 994.978, 311.193, 254.877, 31.086, 193.001
    ok = np.isfinite(disp) & (disp > 0)  # NaN/inf = no ground truth
    depth = np.where(ok, f * B / (np.where(ok, disp, 1.0) + doffs), 1e5)
    K0 = _K(f, cx, cy)
    K1 = K0.clone()
    K1[0, 2] += doffs
    w2c = torch.eye(4, dtype=torch.float64).repeat(1, 2, 1, 1)
    w2c[0, 1, 0, 3] = -B
    flow, valid = camera_flow(torch.from_numpy(depth).float()[None, None], torch.stack([K0, K1])[None], w2c)
    fx, fy, vis = flow[0, 1, 0].numpy(), flow[0, 1, 1].numpy(), valid[0, 1, 0].numpy()
    m = ok & vis
    assert m.mean() > 0.7
    epe = np.sqrt((fx + disp) ** 2 + fy ** 2)[m].mean()
    assert epe < 0.5
    # and the flow really aligns the images: warping the right image onto the left
    L = torch.from_numpy(left).permute(2, 0, 1)[None].float() / 255
    R = torch.from_numpy(right).permute(2, 0, 1)[None].float() / 255
    err = (backward_warp(R, flow[:, 1]) - L).abs().mean(1)[0].numpy()
    err0 = (R - L).abs().mean(1)[0].numpy()
    assert err[m].mean() < 0.3 * err0[m].mean()
    # pixels flagged hidden by the z-buffer are the ones that do not match (real occlusions)
    assert err[ok & ~vis].mean() > 3 * err[m].mean()


def test_zbuffer_marks_disocclusion_behind_a_near_layer():
    H, W = 16, 40
    depth = torch.full((1, 1, H, W), 10.0)
    depth[..., 16:24] = 1.0  # a near pole in front of a far wall
    K = _K(20.0, 19.5, 7.5)[None]
    w2c = torch.eye(4, dtype=torch.float64).repeat(1, 2, 1, 1)
    w2c[0, 1, 0, 3] = -0.3  # camera moves right: the near pole shifts 6 px left, the wall 0.6 px
    flow, valid = camera_flow(depth, K, w2c)
    assert torch.allclose(flow[0, 1, 0, :, 18], torch.full((H,), -6.0), atol=1e-4)
    hidden = ~valid[0, 1, 0]
    # wall pixels now behind the pole (landing on its new position 10..17) are hidden; the pole is not
    assert hidden[:, 11:16].all() and not hidden[:, 16:24].any()
    assert not hidden[:, 26:38].any()


def test_per_frame_intrinsics_zoom():
    H, W = 12, 16
    K0 = _K(10.0, 7.5, 5.5)
    K1 = _K(20.0, 7.5, 5.5)
    w2c = torch.eye(4, dtype=torch.float64).repeat(1, 2, 1, 1)
    flow, _ = camera_flow(torch.rand(1, 1, H, W) + 1, torch.stack([K0, K1])[None], w2c, occlusion=False)
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    assert torch.allclose(flow[0, 1, 0], xs - 7.5, atol=1e-4)  # doubling focal doubles the offset from centre
    assert torch.allclose(flow[0, 1, 1], ys - 5.5, atol=1e-4)


def test_plucker_rays():
    H, W = 6, 8
    K = _K(5.0, 3.5, 2.5)[None]
    w2c = torch.eye(4, dtype=torch.float64).repeat(1, 2, 1, 1)
    R = _rot((0, 1, 0), 0.3)
    w2c[0, 1, :3, :3] = R
    w2c[0, 1, :3, 3] = torch.tensor([0.5, -0.2, 0.1], dtype=torch.float64)
    rays = plucker_rays(K, w2c, H, W).double()
    assert rays.shape == (1, 2, 6, H, W)
    m, d = rays[0, :, :3], rays[0, :, 3:]
    assert torch.allclose(d.norm(dim=1), torch.ones(2, H, W, dtype=torch.float64), atol=1e-5)
    assert m[0].abs().max() < 1e-6  # frame 0: camera at the origin
    assert (m * d).sum(1).abs().max() < 1e-5  # moment ⟂ direction
    # frame-1 ray of pixel (x=2, y=4) passes through the point seen there at depth 3
    c2w = torch.linalg.inv(w2c[0, 1])
    o = c2w[:3, 3]
    Xc = 3.0 * torch.linalg.inv(K[0]) @ torch.tensor([2.0, 4.0, 1.0], dtype=torch.float64)
    Xw = c2w[:3, :3] @ Xc + o
    assert torch.allclose(torch.linalg.cross(Xw, d[1, :, 4, 2]), m[1, :, 4, 2], atol=1e-5)


def test_camera_flow_is_differentiable_in_depth():
    depth = (torch.rand(1, 1, 8, 8) + 1).requires_grad_()
    w2c = torch.eye(4).repeat(1, 2, 1, 1)
    w2c[0, 1, 0, 3] = 0.2
    flow, _ = camera_flow(depth, _K(8.0, 3.5, 3.5).float()[None], w2c)
    flow.sum().backward()
    assert torch.isfinite(depth.grad).all() and depth.grad.abs().sum() > 0


@pytest.mark.parametrize("normal", [(0.0, 0.0, 1.0), (0.0, 0.7, 0.7), (0.3, 0.6, 0.74)])
def test_zbuffer_has_almost_no_false_occlusions_on_a_plane(normal):
    """A plane cannot occlude itself: the nearest-pixel z-buffer must (almost) never flag it,
    even where a dolly-out compresses several source pixels into one target pixel."""
    H = W = 96
    f = 80.0
    K = _K(f, 47.5, 47.5)[None]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    n = torch.tensor(normal, dtype=torch.float64)
    n = n / n.norm()
    denom = n[0] * (xs - 47.5) / f + n[1] * (ys - 47.5) / f + n[2]
    depth = (1.5 / denom).clamp(max=50.0)[None, None].float()
    for t_z, yaw in [(1.0, 0.0), (0.0, 0.2)]:
        w2c = torch.eye(4, dtype=torch.float64).repeat(1, 2, 1, 1)
        w2c[0, 1, 2, 3] = t_z
        w2c[0, 1, :3, :3] = _rot((0, 1, 0), yaw) if yaw else torch.eye(3, dtype=torch.float64)
        _, with_z = camera_flow(depth, K, w2c)
        _, without = camera_flow(depth, K, w2c, occlusion=False)
        assert (without & ~with_z).float().mean() < 0.005
