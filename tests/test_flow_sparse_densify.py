"""Sparse flow (eq. 5) and Gaussian densification (eq. 6-7)."""
import math

import torch

from flowctrl.flow.densify import default_radius, default_sigma, gaussian_densify
from flowctrl.flow.sparse import pose_tracks, sparse_flow_from_tracks


def _one_point(h=40, w=50, x=20, y=15, d=(3.0, -2.0), t=3):
    tracks = torch.linspace(0, 1, t)[:, None] * torch.tensor(d)[None]
    return sparse_flow_from_tracks(tracks[None, None], torch.tensor([[[float(x), float(y)]]]), h, w)


def test_sparse_puts_displacement_at_start_pixel_only():
    sp, m = _one_point()
    assert sp.shape == (1, 3, 2, 40, 50) and m.shape == (1, 3, 1, 40, 50)
    assert torch.equal(sp[0, -1, :, 15, 20], torch.tensor([3.0, -2.0]))
    assert m[0, :, 0].sum() == 3 and m[0, :, 0, 15, 20].all()
    assert sp.abs().sum() == sp[0, :, :, 15, 20].abs().sum()


def test_sparse_rounds_drops_outside_averages_collisions_and_honours_valid():
    tracks = torch.tensor([[[[0, 0], [2, 0]], [[0, 0], [4, 2]], [[0, 0], [9, 9]], [[0, 0], [1, 1]]]], dtype=torch.float32)
    starts = torch.tensor([[[3.4, 2.6], [2.6, 3.4], [-1.0, 2.0], [5.0, 5.0]]])
    valid = torch.tensor([[[True, True], [True, True], [True, True], [True, False]]])
    sp, m = sparse_flow_from_tracks(tracks, starts, 8, 8, valid)
    assert torch.equal(sp[0, 1, :, 3, 3], torch.tensor([3.0, 1.0]))  # two points on pixel (3,3) averaged
    assert m[0, 1, 0].sum() == 1  # the outside point is dropped, the invalid one masked
    assert m[0, 0, 0, 5, 5] == 1 and m[0, 1, 0, 5, 5] == 0


def test_default_sigma_is_170_at_512_and_scales():
    assert default_sigma(512, 512) == 170.0
    assert default_sigma(256, 128) == 85.0
    assert math.isclose(default_radius(170.0), 170.0 * math.sqrt(math.log(20.0)))


def test_gaussian_falls_off_as_specified_eq6_and_cuts_at_eq7():
    h, w, sigma = 40, 120, 12.0
    sp, m = _one_point(h, w, x=10, y=20, d=(6.0, 8.0))  # |f| = 10
    dense = gaussian_densify(sp, m, sigma=sigma, normalized=False)
    row = dense[0, -1, :, 20, :]  # along x from the point
    D = torch.arange(w, dtype=torch.float32) - 10
    weight = torch.exp(-(D / sigma) ** 2)
    keep = (10 * weight) > 0.05 * 10  # eq. 7 with R relative to the largest sparse magnitude
    assert torch.allclose(row[0], 6.0 * weight * keep, atol=1e-5)
    assert torch.allclose(row[1], 8.0 * weight * keep, atol=1e-5)
    cut = sigma * math.sqrt(math.log(20.0))
    assert (row[:, (D.abs() > cut + 0.5)] == 0).all() and (row[:, D.abs() < cut - 0.5].abs().sum(0) > 0).all()
    # normalized mode: identical for a single point
    dn = gaussian_densify(sp, m, sigma=sigma, normalized=True)
    assert torch.allclose(dn, dense, atol=1e-5)
    # frame 0 (all-zero sparse values) stays zero
    assert dense[0, 0].abs().max() == 0


def test_normalized_mode_does_not_add_up_agreeing_points_but_eq6_does():
    h, w = 30, 30
    starts = torch.tensor([[[x, 15.0] for x in range(10, 21)]])
    tracks = torch.tensor([0.0, 2.0])[None, None, :, None].expand(1, 11, 2, 2).clone()  # all move (2, 2)
    sp, m = sparse_flow_from_tracks(tracks, starts, h, w)
    nw = gaussian_densify(sp, m, sigma=6.0, normalized=True)
    raw = gaussian_densify(sp, m, sigma=6.0, normalized=False)
    assert torch.allclose(nw[0, 1, :, 16, 15], torch.tensor([2.0, 2.0]), atol=1e-3)  # inside the cloud: the common motion
    assert raw[0, 1, 0, 16, 15] > 8.0  # eq. 6 as written sums ~ Σ exp(-(D/σ)²)
    assert torch.allclose(nw[0, 1, :, 15, 12], torch.tensor([2.0, 2.0]))  # control pixels keep their value


def test_explicit_radius_limits_reach_and_densify_is_differentiable():
    sp, m = _one_point(30, 30, x=15, y=15, d=(4.0, 0.0))
    sp = sp.clone().requires_grad_()
    dense = gaussian_densify(sp, m, sigma=100.0, radius=5.0)
    assert dense[0, -1, 0, 15, 20] > 3.9 and dense[0, -1, 0, 15, 21] == 0
    dense.sum().backward()
    assert sp.grad[0, -1, 0, 15, 15] > 1.0


def test_pose_tracks_follow_limbs():
    kp = torch.tensor([[[10.0, 10.0], [30.0, 10.0]], [[10.0, 10.0], [30.0, 20.0]]])  # joint 1 moves down 10
    conf = torch.ones(2, 2)
    tracks, starts, valid = pose_tracks(kp, conf, limbs=[(0, 1)], samples_per_limb=3)
    assert tracks.shape == (5, 2, 2) and valid.all()
    assert torch.allclose(starts[2:], torch.tensor([[15.0, 10.0], [20.0, 10.0], [25.0, 10.0]]))
    assert torch.allclose(tracks[2:, 1], torch.tensor([[0.0, 2.5], [0.0, 5.0], [0.0, 7.5]]))  # linear along the limb
    conf[1, 1] = 0.0  # joint 1 lost at frame 1: it and its limb become invalid there
    _, _, valid = pose_tracks(kp, conf, limbs=[(0, 1)], samples_per_limb=3)
    assert valid[0].all() and not valid[1, 1] and not valid[2:, 1].any()
