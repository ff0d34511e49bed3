"""Synthetic scene engine: exact flow, determinism, cameras as requested."""
import numpy as np
import pytest
import torch

from flowctrl.errors import InputError
from flowctrl.flow.camera import camera_flow
from flowctrl.flow.warp import backward_warp
from flowctrl.train.scenes import SceneConfig, SyntheticClip, random_trajectory, render_scene

SMALL = SceneConfig(num_frames=6, height=64, width=80)


@pytest.fixture(scope="module")
def clip() -> SyntheticClip:
    return render_scene(11, SceneConfig(num_frames=6, height=96, width=128, num_layers=(2, 3)))


def test_shapes_and_reference_frame(clip):
    T, H, W = 6, 96, 128
    assert clip.video.shape == (T, 3, H, W) and clip.depth.shape == (T, 1, H, W)
    assert clip.flow.shape == (T, 2, H, W) and clip.visibility.shape == (T, 1, H, W)
    assert clip.w2c.shape == (T, 4, 4) and clip.K.shape == (3, 3) and clip.layer_ids.shape == (1, H, W)
    assert torch.allclose(clip.w2c[0], torch.eye(4), atol=1e-6)
    assert clip.flow[0].abs().max() == 0 and bool(clip.visibility[0].bool().all())
    assert float(clip.video.min()) >= 0 and float(clip.video.max()) <= 1 and float(clip.depth.min()) > 0
    assert int(clip.layer_ids.max()) >= 1  # foreground layers are visible in the reference


def test_deterministic_from_seed():
    a, b, c = render_scene(5, SMALL), render_scene(5, SMALL), render_scene(6, SMALL)
    for key in ("video", "depth", "flow", "visibility", "w2c", "K", "layer_ids"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert not torch.equal(a.video, c.video)


def test_flow_is_exact_warping_back_reproduces_reference(clip):
    warped = backward_warp(clip.video, clip.flow, mode="bilinear", padding="border")
    err = (warped - clip.video[:1]).abs().mean(1, keepdim=True)
    visible = clip.visibility.bool()
    visible[0] = False
    # only texture resampling error remains where the reference pixel is visible
    assert float(err[visible].mean()) < 0.05
    zero = (clip.video - clip.video[:1]).abs().mean(1, keepdim=True)
    assert float(err[visible].mean()) < 0.25 * float(zero[visible].mean())


def test_static_pixels_follow_the_camera_reprojection_of_the_depth(clip):
    # B's analytic camera flow from frame-0 depth must equal the scene's camera flow (same geometry)
    flow, valid = camera_flow(clip.depth[:1], clip.K[None], clip.w2c[None])
    assert torch.allclose(flow[0], clip.camera_flow, atol=1e-2)
    static = ~clip.moving_mask
    diff = (clip.flow - clip.camera_flow).norm(dim=1, keepdim=True)
    assert float(diff[:, static].max()) < 1e-3
    if bool(clip.moving_mask.any()):
        assert float(diff[:, clip.moving_mask].max()) > 0.1  # moving layers add their own motion


def test_camera_given_as_tensor_or_preset():
    w2c = random_trajectory(np.random.default_rng(0), 5, max_translation=0.5)
    clip = render_scene(1, SceneConfig(num_frames=5, height=48, width=64, camera=w2c))
    assert torch.allclose(clip.w2c.double(), w2c, atol=1e-6)
    preset = render_scene(1, SceneConfig(num_frames=5, height=48, width=64, camera="pan-left"))
    assert preset.w2c.shape == (5, 4, 4) and not torch.allclose(preset.w2c[-1], torch.eye(4))
    with pytest.raises(InputError):
        render_scene(1, SceneConfig(num_frames=5, height=48, width=64, camera=w2c[:3]))
