"""compute_unified_flow: controls → one unified flow, with true answers."""
import math
import warnings

import pytest
import torch

from flowctrl.controls import Arrow, CameraTrajectory, Controls, Drag, PoseSequence
from flowctrl.errors import FlowCtrlError
from flowctrl.flow.camera import camera_flow
from flowctrl.pipelines.stage1 import UnifiedFlow, compute_unified_flow

H, W, T = 48, 64, 5


def _img():
    return torch.rand(1, 3, H, W)


def _pan(T0=T, yaw=0.05):
    w2c = torch.eye(4, dtype=torch.float64).repeat(T0, 1, 1)
    for i in range(T0):
        a = yaw * i / (T0 - 1)
        w2c[i, :3, :3] = torch.tensor([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]], dtype=torch.float64)
    return CameraTrajectory(w2c=w2c, name="pan")


@pytest.mark.parametrize("densify", ["normalized", "gaussian"])
def test_arrow_start_pixel_gets_displacement_times_strength(densify):
    ctl = Controls(arrows=[Arrow(start=(20, 30), end=(27, 26), strength=1.5), Arrow(start=(50, 10), end=(45, 12))],
                   image_size=(H, W))
    uf = compute_unified_flow(_img(), ctl, T, densify=densify, segment="none")  # the densification's own math
    assert isinstance(uf, UnifiedFlow) and uf.flow.shape == (1, T, 2, H, W)
    if densify == "normalized":
        assert torch.equal(uf.flow[0, -1, :, 30, 20], torch.tensor([10.5, -6.0]))
        assert torch.equal(uf.flow[0, -1, :, 10, 50], torch.tensor([-5.0, 2.0]))
    assert torch.equal(uf.sparse_flow[0, -1, :, 30, 20], torch.tensor([10.5, -6.0]))
    assert uf.sparse_mask[0, :, 0].sum(dim=(1, 2)).tolist() == [2.0] * T
    assert uf.flow[0, 0].abs().max() == 0 and uf.valid[0, 0].all() and uf.K is None and uf.w2c is None
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    tx, ty = xs + uf.flow[0, -1, 0], ys + uf.flow[0, -1, 1]
    inside = (tx > -0.5) & (tx < W - 0.5) & (ty > -0.5) & (ty < H - 0.5)
    assert torch.equal(uf.valid[0, -1, 0], inside)  # only pixels pushed out of the frame are invalid
    if densify == "normalized":  # default: control pixels interpolate exactly, linear easing in time
        assert torch.allclose(uf.flow[0, 2, :, 30, 20], torch.tensor([5.25, -3.0]))
    else:  # eq. 6 as written: the other arrow adds its Gaussian-weighted motion
        sigma = 170.0 * W / 512
        w = math.exp(-((30.0 ** 2 + 20.0 ** 2) / sigma ** 2))
        expect = torch.tensor([10.5, -6.0]) + w * torch.tensor([-5.0, 2.0])
        assert torch.allclose(uf.flow[0, -1, :, 30, 20], expect, atol=1e-4)


def test_controls_at_another_image_size_are_rescaled():
    ctl = Controls(arrows=[Arrow(start=(40, 60), end=(54, 52))], image_size=(2 * H, 2 * W))
    uf = compute_unified_flow(_img(), ctl, T)
    assert torch.equal(uf.flow[0, -1, :, 30, 20], torch.tensor([7.0, -4.0]))


def test_motion_mask_static_mask_and_local_mask():
    brush = torch.zeros(1, H, W, dtype=torch.bool)
    brush[:, :, :32] = True
    static = torch.zeros(1, H, W, dtype=torch.bool)
    static[:, :10] = True
    ctl = Controls(arrows=[Arrow(start=(20, 30), end=(26, 30))], motion_mask=brush, static_mask=static, image_size=(H, W))
    uf = compute_unified_flow(_img(), ctl, T)
    assert uf.flow[0, :, :, :, 32:].abs().max() == 0  # outside the brush
    assert uf.flow[0, :, :, :10].abs().max() == 0  # static rows
    assert uf.flow[0, -1, 0, 30, 25] > 0
    assert uf.local_mask.shape == (1, T, 1, H, W) and not uf.local_mask[0, :, 0, :, 32:].any()
    assert uf.local_mask[0, -1, 0, 30, 20] == 1
    outside = Controls(arrows=[Arrow(start=(40, 30), end=(46, 30)), Arrow(start=(20, 5), end=(26, 5))],
                       motion_mask=brush, static_mask=static, image_size=(H, W))
    uf = compute_unified_flow(_img(), outside, T)
    assert uf.sparse_mask.sum() == 0 and uf.sparse_flow.abs().max() == 0  # both arrows start in masked-out places


def test_drag_radius_limits_its_motion():
    ctl = Controls(drags=[Drag(points=[[30, 24], [34, 24], [40, 24]], radius=6.0)], image_size=(H, W))
    uf = compute_unified_flow(_img(), ctl, T)
    assert torch.equal(uf.flow[0, -1, :, 24, 30], torch.tensor([10.0, 0.0]))
    assert uf.flow[0, -1, :, 24, 37].abs().max() == 0 and uf.flow[0, -1, 0, 24, 35] > 0


def test_pose_is_densified_along_limbs():
    kp = torch.zeros(2, 17, 2)
    conf = torch.zeros(2, 17)
    kp[:, 5] = torch.tensor([[20.0, 20.0], [20.0, 20.0]])  # left shoulder stays
    kp[:, 7] = torch.tensor([[40.0, 20.0], [40.0, 30.0]])  # left elbow moves down 10
    conf[:, [5, 7]] = 1.0
    ctl = Controls(pose=PoseSequence(kp, conf, "coco17"), image_size=(H, W))
    uf = compute_unified_flow(_img(), ctl, 3)
    assert torch.allclose(uf.flow[0, -1, :, 20, 40], torch.tensor([0.0, 10.0]))
    mid = uf.flow[0, -1, 1, 20, 30]  # mid-limb pixel: half the elbow's motion
    assert abs(float(mid) - 5.0) < 1.0
    assert uf.sparse_mask[0, -1, 0].sum() > 2  # limb samples are part of the sparse condition


def test_camera_only_equals_camera_flow_and_zero_camera_is_identity():
    depth = torch.rand(1, 1, H, W) + 1.0
    ctl = Controls(camera=_pan(), image_size=(H, W))
    uf = compute_unified_flow(_img(), ctl, T, depth=depth)
    expect, valid = camera_flow(depth, uf.K_frames, uf.w2c)
    assert torch.allclose(uf.flow, expect, atol=1e-5) and torch.equal(uf.valid, valid)
    assert uf.K.shape == (1, 3, 3) and uf.w2c.shape == (1, T, 4, 4) and torch.equal(uf.depth, depth)
    arrows = [Arrow(start=(20, 30), end=(26, 28))]
    still = Controls(arrows=arrows, camera=CameraTrajectory(w2c=torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)), image_size=(H, W))
    none = Controls(arrows=arrows, image_size=(H, W))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = _img()  # one image: the arrow's region depends on it
        a = compute_unified_flow(image, still, T)
    b = compute_unified_flow(image, none, T)
    assert torch.allclose(a.flow, b.flow, atol=1e-5)


def test_plane_fallback_warns_and_strength_target_is_met():
    from flowctrl.depth import FlatDepthWarning

    with pytest.warns(FlatDepthWarning, match="parallax is flat"):
        uf = compute_unified_flow(_img(), Controls(camera=_pan(), image_size=(H, W)), T)
    assert torch.allclose(uf.depth, torch.ones(1, 1, H, W))
    ctl = Controls(arrows=[Arrow(start=(20, 30), end=(30, 30))], strength=0.4, image_size=(H, W))
    uf = compute_unified_flow(_img(), ctl, T)
    assert abs(uf.motion_strength() - 0.4) < 2e-3 and uf.strength_scale > 0
    assert torch.allclose(uf.sparse_flow[0, -1, :, 30, 20], uf.flow[0, -1, :, 30, 20])  # condition scaled alike


def test_reference_video_tensor_transfers_its_motion():
    from scipy.ndimage import gaussian_filter, shift

    base = gaussian_filter(torch.rand(H + 20, W + 20).numpy(), 1.5)
    frames = [shift(base, (0, 0.8 * t), order=3, mode="reflect")[10:10 + H, 10:10 + W] for t in range(T)]
    video = torch.from_numpy(__import__("numpy").stack(frames))[:, None].expand(T, 3, H, W).float()
    video = (video - video.min()) / (video.max() - video.min())
    calls = []
    uf = compute_unified_flow(_img(), Controls(ref_video=video, image_size=(H, W)), T,
                              callback=lambda s, d, n: calls.append((s, d, n)))
    assert abs(float(uf.flow[0, -1, 0, 12:-12, 12:-12].median()) - 3.2) < 0.25
    assert uf.sparse_mask.all()
    assert ("local", 1, 1) in calls and ("compose", 1, 1) in calls


def test_bad_arguments_are_user_errors():
    with pytest.raises(FlowCtrlError, match="num_frames"):
        compute_unified_flow(_img(), None, 1)
    with pytest.raises(FlowCtrlError, match="image"):
        compute_unified_flow(torch.rand(3, H, W), None, 4)
    with pytest.raises(FlowCtrlError, match="densify"):
        compute_unified_flow(_img(), None, 4, densify="bilateral")


def test_unified_flow_to_keeps_bool_masks():
    uf = compute_unified_flow(_img(), Controls(arrows=[Arrow(start=(5, 5), end=(9, 5))], image_size=(H, W)), 3)
    half = uf.to("cpu", torch.float64)
    assert half.flow.dtype == torch.float64 and half.valid.dtype == torch.bool and half.num_frames == 3
    assert half.size == (H, W) and set(uf.tensors()) >= {"flow", "valid", "local_mask", "sparse_flow", "sparse_mask"}


def test_plane_distance_scales_translation_flow():
    w2c = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    w2c[1, 0, 3] = -0.1  # camera moves right by 0.1
    ctl = Controls(camera=CameraTrajectory(w2c=w2c), image_size=(H, W))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        near = compute_unified_flow(_img(), ctl, 2, plane_distance=1.0)
        far = compute_unified_flow(_img(), ctl, 2, plane_distance=4.0)
    fx = float(near.K[0, 0, 0])
    assert torch.allclose(near.flow[0, 1, 0], torch.full((H, W), -0.1 * fx), atol=1e-3)
    assert torch.allclose(far.flow[0, 1, 0], near.flow[0, 1, 0] / 4, atol=1e-3)
    with pytest.raises(FlowCtrlError, match="plane_distance"):
        compute_unified_flow(_img(), ctl, 2, plane_distance=0.0)
