"""Flow files round trip; color wheel and control overlay."""
import numpy as np
import pytest
import torch

from flowctrl.errors import FlowCtrlError
from flowctrl.flow.io import load_flow, load_flow_file, save_flow
from flowctrl.flow.viz import color_wheel, draw_controls, flow_to_color, flow_video


@pytest.mark.parametrize("suffix", [".flo", ".npy", ".safetensors"])
def test_round_trip(tmp_path, suffix):
    flow = torch.randn(1, 3, 2, 7, 9) * 5
    path = save_flow(tmp_path / f"f{suffix}", flow)
    assert torch.equal(load_flow(path), flow)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_flo_single_field_is_standard_middlebury(tmp_path):
    flow = torch.randn(2, 5, 4)
    path = save_flow(tmp_path / "one.flo", flow)
    raw = path.read_bytes()
    assert np.frombuffer(raw[:4], np.float32)[0] == np.float32(202021.25)
    assert tuple(np.frombuffer(raw[4:12], np.int32)) == (4, 5)
    data = np.frombuffer(raw[12:], np.float32).reshape(5, 4, 2)
    assert np.array_equal(data[..., 0], flow[0].numpy()) and np.array_equal(data[..., 1], flow[1].numpy())


def test_safetensors_keeps_extras(tmp_path):
    flow = torch.randn(1, 2, 2, 4, 4)
    valid = torch.rand(1, 2, 1, 4, 4) > 0.5
    path = save_flow(tmp_path / "f.safetensors", flow, extras={"valid": valid, "K": torch.eye(3)[None]})
    out = load_flow_file(path)
    assert torch.equal(out["valid"].bool(), valid) and torch.equal(out["K"], torch.eye(3)[None])


def test_bad_flow_files_are_user_errors(tmp_path):
    (tmp_path / "bad.flo").write_bytes(b"\x00" * 20)
    (tmp_path / "bad.npy").write_text("nope")
    np.save(tmp_path / "nan.npy", np.full((1, 2, 2, 3, 3), np.nan, np.float32))
    for name, match in [("bad.flo", "tag"), ("bad.npy", "readable"), ("nan.npy", "NaN"), ("missing.flo", "not found")]:
        with pytest.raises(FlowCtrlError, match=match):
            load_flow(tmp_path / name)
    with pytest.raises(FlowCtrlError, match="suffix"):
        save_flow(tmp_path / "f.png", torch.zeros(2, 3, 3))


def test_color_wheel_known_colors():
    assert color_wheel().shape == (55, 3)
    f = torch.zeros(2, 1, 4)
    f[:, 0, 1] = torch.tensor([1.0, 0.0])  # right
    f[:, 0, 2] = torch.tensor([0.0, -1.0])  # up
    f[:, 0, 3] = torch.tensor([-1.0, 0.0])  # left
    c = flow_to_color(f, max_norm=1.0)[:, 0]
    assert torch.allclose(c[:, 0], torch.ones(3))  # zero flow is white
    assert c[0, 1] == 1 and c[1, 1] == 0  # right: red
    assert c[2, 3] == 1 and c[0, 3] == 0 and abs(c[1, 3] - (1 - 2 / 11)) < 1e-6  # left: wheel index 27, cyan-blue
    assert abs(c[0, 2] - 4.5 / 13) < 1e-5 and c[2, 2] == 1 and c[1, 2] == 0  # up: index 40.5, blue-violet
    half = flow_to_color(f * 0.5, max_norm=1.0)[:, 0, 1]
    assert torch.allclose(half, torch.tensor([1.0, 0.5, 0.5 + 0.5 * c[2, 1]]), atol=1e-5)  # saturation = magnitude


def test_flow_video_and_overlay_draw_controls():
    from flowctrl.controls import Arrow, Controls, Drag, load_camera

    video = flow_video(torch.randn(1, 4, 2, 40, 60))
    assert video.shape == (4, 3, 40, 60) and video.min() >= 0 and video.max() <= 1
    img = torch.zeros(3, 96, 128)
    ctl = Controls(arrows=[Arrow(start=(10, 10), end=(60, 10))], drags=[Drag(points=[[20, 60], [40, 70], [60, 60]])],
                   camera=load_camera("orbit"), image_size=(96, 128))
    out = draw_controls(img, ctl, flow=torch.randn(4, 2, 96, 128))
    assert out.shape == (3, 96, 256)
    assert out[0, 10, 30] > 0.8 and out[1, 10, 30] < 0.3  # the arrow is drawn in red along y = 10
    assert out[2, 60, 20] > 0.8  # drag start dot in blue
    assert (out[:, 96 - 36:92, 128 - 36:124] > 0.9).float().mean() > 0.5  # the camera inset (white plot)
