"""Disocclusions filled from behind, one sharp resampling per frame, and --crop-valid (known answers)."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from flowctrl.flow.camera import camera_flow
from flowctrl.render import render_warp
from flowctrl.render.crop import crop_to_valid, valid_crop, zoom_flow
from flowctrl.render.fill import behind_fill, disocclusions
from flowctrl.render.warp_renderer import render_warp_frames

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RED = torch.tensor([0.9, 0.1, 0.1])
WALL = torch.tensor([0.2, 0.5, 0.8])


def _two_depth(H=48, W=64, move=-0.12):
    """A near red square (z=1) before a flat blue wall (z=4); the camera trucks right by -move."""
    image = WALL.view(1, 3, 1, 1).expand(1, 3, H, W).clone()
    depth = torch.full((1, 1, H, W), 4.0)
    image[:, :, 16:32, 24:40] = RED.view(1, 3, 1, 1)
    depth[:, :, 16:32, 24:40] = 1.0
    K = torch.tensor([[[float(W), 0, (W - 1) / 2], [0, float(W), (H - 1) / 2], [0, 0, 1]]])
    w2c = torch.eye(4).repeat(1, 2, 1, 1)
    w2c[0, 1, 0, 3] = move
    flow, valid = camera_flow(depth, K, w2c)
    return image, depth, K, w2c, flow, valid


@pytest.mark.parametrize("fill", ["push-pull", "inpaint"])
def test_disocclusion_is_filled_with_the_background_not_the_foreground(fill):
    image, depth, K, w2c, flow, valid = _two_depth()
    r = render_warp(image, flow, depth=depth, valid=valid, K=K, w2c=w2c, fill=fill)
    hole = r.holes[0, 1, 0].clone()
    hole[:, -6:] = False  # the strip entering at the border has no "behind"
    assert int(hole.sum()) >= 16 * 5  # the square moved ~6 px more than the wall: a disocclusion
    filled = r.video[0, 1][:, hole]  # (3, n)
    assert torch.allclose(filled, WALL[:, None].expand_as(filled), atol=0.02)  # wall colour, no red smear


def test_behind_fill_picks_the_far_side_and_keeps_known_pixels():
    video = torch.zeros(1, 3, 5, 9)
    video[..., :3] = 1.0  # near side (white), far side black
    holes = torch.zeros(1, 1, 5, 9, dtype=torch.bool)
    holes[..., 3:6] = True
    far = torch.zeros(1, 1, 5, 9)
    far[..., 6:] = 10.0  # the right side lies behind
    assert bool(disocclusions(holes, far)[0, 0, 2, 4])
    out = behind_fill(video, holes, far)
    assert torch.equal(out[..., ~holes[0, 0]], video[..., ~holes[0, 0]])
    assert float(out[..., 3:6].abs().max()) < 1e-6  # black, from behind
    # one surface only: the base fill (push-pull) is kept, a blend of both sides
    same = behind_fill(video, holes, torch.zeros(1, 1, 5, 9))
    assert 0.2 < float(same[0, 0, 2, 4]) < 0.8


def _lap_var(x):
    k = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    return float(F.conv2d(x.mean(1, keepdim=True), k)[..., 4:-4, 4:-4].var())


def test_subpixel_motion_keeps_the_detail_of_the_source():
    g = torch.Generator().manual_seed(0)
    image = F.interpolate(torch.rand(1, 3, 24, 24, generator=g), size=(48, 48), mode="bicubic",
                          align_corners=False).clamp(0, 1)
    flow = torch.zeros(1, 3, 2, 48, 48)
    flow[:, 1:, 0] = 0.5  # half a pixel right, then 1.5 px
    flow[:, 2, 0] = 1.5
    flow[:, 1:, 1] = 0.5
    sharp = render_warp(image, flow, fill="push-pull")
    soft = render_warp_frames(image, flow, fill="push-pull", resample="splat")
    v0 = _lap_var(image)
    for t in (1, 2):
        assert _lap_var(sharp.video[:, t]) / v0 > 0.8  # one bicubic resampling of the source
    assert _lap_var(soft.video[:, 1]) / v0 < 0.6  # the bilinear splat's blend halves the detail
    # frame t is the source sampled at p - flow (interior, away from the entering border)
    xs = torch.arange(48.0)
    grid = torch.stack(torch.meshgrid(xs - 0.5, xs - 0.5, indexing="xy"), -1)[None] / 47 * 2 - 1
    expected = F.grid_sample(image, grid, mode="bicubic", align_corners=True).clamp(0, 1)
    assert torch.allclose(sharp.video[0, 1][:, 4:-4, 4:-4], expected[0][:, 4:-4, 4:-4], atol=1e-4)


def test_crop_valid_removes_the_entering_strip():
    H, W, T = 32, 48, 5
    image = torch.rand(1, 3, H, W)
    flow = torch.zeros(1, T, 2, H, W)
    for t in range(T):
        flow[:, t, 0] = 2.0 * t  # content moves right by 8 px: a strip enters on the left
    x0, y0, zoom = valid_crop(flow)
    assert x0 >= 8.0 - 1e-6 and 1.0 < zoom < 2.5
    assert zoom_flow(flow, 0.0, 0.0, 1.0) is flow
    cropped, _ = crop_to_valid(flow)
    r = render_warp(image, cropped, fill="none")
    assert float(r.holes.float().mean()) < 0.01
    plain = render_warp(image, flow, fill="none")
    assert float(plain.holes[0, -1].float().mean()) > 0.15


def test_cli_crop_valid(tmp_path, repo_dir):
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo_dir)}
    r = subprocess.run([sys.executable, "-m", "flowctrl", "generate", "--image", str(repo_dir / "examples" / "astronaut.png"),
                        "--camera", "pan-left", "--frames", "5", "--size", "64x64", "--crop-valid",
                        "-o", str(tmp_path / "c.mp4")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "c.mp4").stat().st_size > 0


def test_magnified_frames_have_no_splat_gaps():
    # a 2.2x zoom: forward splatting alone leaves one-pixel gaps between the sources
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    flow = zoom_flow(torch.zeros(1, 2, 2, 32, 32), 8.0, 8.0, 2.2)
    r = render_warp(image, flow, fill="none")
    assert float(r.holes[0, 1].float().mean()) < 0.05
    # the frame is the crop [8, 8 + 32/2.2] of the source, sampled once (bicubic)
    xs = (torch.arange(32.0) + 0.5) / 2.2 - 0.5 + 8.0
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1)[None] / 31 * 2 - 1
    expected = F.grid_sample(image, grid, mode="bicubic", align_corners=True).clamp(0, 1)[0]
    known = ~r.holes[0, 1, 0]
    assert torch.allclose(r.video[0, 1][:, known], expected[:, known], atol=2e-3)
