"""`flowctrl flow`: writes the flow and its visualizations; bad input exits 2 with one line, no file."""
import json
import numpy as np
import pytest
import torch
from PIL import Image

from flowctrl.cli import main
from flowctrl.flow.io import load_flow, load_flow_file


@pytest.fixture()
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "a.json").write_text(json.dumps({"units": "px", "arrows": [{"start": [20, 30], "end": [27, 26], "strength": 1.5}]}))
    return tmp_path


def test_flow_command_writes_flow_video_and_overlay(inputs, capsys):
    out = inputs / "out" / "flow.safetensors"
    out.parent.mkdir()
    rc = main(["flow", "--image", str(inputs / "img.png"), "--arrows", str(inputs / "a.json"), "--camera", "orbit",
               "--frames", "5", "-o", str(out), "--quiet", "--all-tensors"])
    assert rc == 0
    data = load_flow_file(out)
    assert data["flow"].shape == (1, 5, 2, 48, 64)
    assert {"valid", "local_mask", "sparse_flow", "sparse_mask", "depth", "K", "K_frames", "w2c"} <= set(data)
    assert data["valid"].dtype == torch.uint8 and data["w2c"].shape == (1, 5, 4, 4)
    # the arrow's start pixel (no camera: check the local component) moved by displacement × strength
    assert torch.equal(data["local_flow"][0, -1, :, 30, 20], torch.tensor([10.5, -6.0]))
    assert (inputs / "out" / "flow_flow.mp4").stat().st_size > 0 and (inputs / "out" / "flow_controls.png").is_file()
    assert "parallax is flat" in capsys.readouterr().err  # plane-fallback warning, one line


@pytest.mark.parametrize("suffix", [".npy", ".flo"])
def test_flow_command_other_formats_no_viz(inputs, suffix):
    out = inputs / f"f{suffix}"
    assert main(["flow", "--image", str(inputs / "img.png"), "--arrows", str(inputs / "a.json"), "--frames", "3",
                 "-o", str(out), "--no-viz", "--quiet"]) == 0
    flow = load_flow(out)
    assert flow.shape == (1, 3, 2, 48, 64) and torch.equal(flow[0, -1, :, 30, 20], torch.tensor([10.5, -6.0]))
    assert sorted(p.name for p in inputs.iterdir()) == sorted(["img.png", "a.json", out.name])


@pytest.mark.parametrize("make_args,needle", [
    (lambda d: ["--arrows", str(d / "missing.json")], "missing.json"),
    (lambda d: ["--arrows", str(d / "bad.json")], "bad.json"),
    (lambda d: ["--camera", "no-such-preset"], "no-such-preset"),
    (lambda d: ["--depth", str(d / "img.png"), "--camera", "orbit", "--depth-kind", "disparity"], "depth"),
    (lambda d: ["--frames", "1"], "--frames"),
    (lambda d: ["--depth-model", str(d / "nomodel"), "--camera", "orbit"], "depth_model"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(inputs, make_args, needle, capsys):
    (inputs / "bad.json").write_text('{"units": "px", "arrows": [{"start": [1, "x"], "end": [2, 2]}]}')
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(inputs / "img.png")  # all-zero: not a usable disparity
    before = sorted(p.name for p in inputs.iterdir())
    rc = main(["flow", "--image", str(inputs / "img.png"), "-o", str(inputs / "f.safetensors"), "--quiet"] + make_args(inputs))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("flowctrl flow: error:") and needle in err[0]
    assert sorted(p.name for p in inputs.iterdir()) == before


def test_output_may_not_overwrite_an_input(inputs, capsys):
    rc = main(["flow", "--image", str(inputs / "img.png"), "--arrows", str(inputs / "a.json"), "-o",
               str(inputs / "img.npy"), "--viz", str(inputs / "a.json"), "--quiet"])
    assert rc == 2 and "same file as the input" in capsys.readouterr().err


def test_bundle_with_flag_override(inputs):
    (inputs / "b.json").write_text(json.dumps({"arrows": "a.json", "strength": 0.2}))
    (inputs / "a2.json").write_text(json.dumps({"units": "px", "arrows": [{"start": [10, 10], "end": [14, 10]}]}))
    out = inputs / "f.npy"
    assert main(["flow", "--image", str(inputs / "img.png"), "--bundle", str(inputs / "b.json"), "--arrows",
                 str(inputs / "a2.json"), "--frames", "3", "-o", str(out), "--no-viz", "--quiet"]) == 0
    flow = load_flow(out)
    from flowctrl.flow.strength import motion_strength

    assert abs(float(motion_strength(flow)) - 0.2) < 2e-3  # strength from the bundle
    assert flow[0, -1, 0, 10, 10] > 0 and flow[0, -1, 0, 10, 10] / flow[0, -1, 0, 30, 20] > 1.5  # a2's arrow, not a.json's


def test_reference_video_from_a_real_clip(inputs, shared_dir):
    clip = sorted((shared_dir / "data" / "re10k").glob("*.mp4"))
    if not clip:
        pytest.skip("no RealEstate10K clips")
    out = inputs / "v.safetensors"
    assert main(["flow", "--image", str(inputs / "img.png"), "--ref-video", str(clip[0]), "--frames", "4",
                 "-o", str(out), "--no-viz", "--quiet"]) == 0
    data = load_flow_file(out)
    assert data["flow"].shape == (1, 4, 2, 48, 64) and data["flow"][0, 0].abs().max() == 0
    assert data["flow"][0, -1].abs().mean() > 0.1 and data["local_mask"].all()
