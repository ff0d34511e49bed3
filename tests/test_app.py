"""`flowctrl app`: the web UI's logic (clicked arrows, controls, preview, generation) and its command."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from flowctrl.app.session import ArrowSketch, build_controls, camera_spec, generate, preview
from flowctrl.errors import ControlFileError, InputError

HAS_GRADIO = importlib.util.find_spec("gradio") is not None


def _image(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def test_two_clicks_make_one_arrow_and_undo_steps_back():
    s = ArrowSketch().click(10, 20)
    assert s.pending == (10.0, 20.0) and s.arrows == ()
    s = s.click(30, 5)
    assert s.pending is None and s.arrows == (((10.0, 20.0), (30.0, 5.0)),)
    s = s.click(1, 1)
    assert s.undo().arrows == s.arrows and s.undo().pending is None  # undo drops the pending start first
    assert s.undo().undo().arrows == ()
    assert ArrowSketch().click(4, 4).click(4, 4) == ArrowSketch()  # no zero-length arrow
    arrows = ArrowSketch().click(0, 0).click(8, 6).to_arrows(strength=0.5, easing="ease-in-out")
    assert len(arrows) == 1 and arrows[0].displacement == (4.0, 3.0) and arrows[0].easing == "ease-in-out"


def test_camera_spec_from_dropdown_and_parameters():
    assert camera_spec("none") is None and camera_spec(None) is None
    assert camera_spec("orbit") == "orbit"
    assert camera_spec("orbit", " degrees=20 ; depth=3 ") == "orbit:degrees=20,depth=3"


def test_build_controls_adds_clicked_arrows_to_an_arrows_file(tmp_path):
    (tmp_path / "a.json").write_text('{"arrows": [{"start": [5, 5], "end": [9, 5]}]}')
    sketch = ArrowSketch().click(1, 2).click(3, 4)
    controls = build_controls((48, 64), sketch, camera=camera_spec("pan-left", "degrees=5"),
                              arrows_file=str(tmp_path / "a.json"), strength=0)
    assert [a.start for a in controls.arrows] == [(1.0, 2.0), (5.0, 5.0)]
    assert controls.camera is not None and controls.strength is None and controls.image_size == (48, 64)
    with pytest.raises(ControlFileError, match="degreez"):  # a typo names the parameter and the valid ones
        build_controls((48, 64), sketch, camera=camera_spec("orbit", "degreez=5"))


def test_preview_keeps_the_image_size_and_draws_arrow_and_pending_start():
    image = np.full((48, 64, 3), 128, np.uint8)
    sketch = ArrowSketch().click(8, 24).click(40, 24).click(56, 8)
    out = preview(image, build_controls((48, 64), sketch), sketch)
    assert out.shape == image.shape and out.dtype == np.uint8
    on_arrow = out[24, 16:32].astype(int)
    assert (on_arrow[:, 0] > on_arrow[:, 1] + 100).all()  # red along the arrow's shaft
    assert (out[24, 50:60] == 128).all()                   # untouched away from the drawings
    ring = out[:, :, 0].astype(int) - 128
    assert np.abs(ring[0:16, 48:64]).sum() > 0              # the pending start's ring
    assert (preview(image, build_controls((48, 64), ArrowSketch()), ArrowSketch()) == image).all()


def test_generate_writes_the_pipelines_video(tmp_path):
    import torch

    from flowctrl import FlowCtrlPipeline
    from flowctrl.video_io import read_video, write_video

    image = _image()
    controls = build_controls((48, 64), ArrowSketch().click(20, 20).click(30, 26))
    stages = []
    path = generate(image, controls, frames=5, fps=4, out_dir=str(tmp_path),
                    callback=lambda stage, done, total: stages.append(stage))
    frames = read_video(path)
    assert frames.shape == (5, 48, 64, 3) and "render" in stages
    expected = FlowCtrlPipeline()(image, controls=controls, num_frames=5,
                                  generator=torch.Generator().manual_seed(0)).frames
    write_video(tmp_path / "ref.mp4", expected, fps=4)
    assert open(path, "rb").read() == open(tmp_path / "ref.mp4", "rb").read()


def test_generate_refuses_empty_controls_and_bad_values_without_writing(tmp_path):
    empty = build_controls((48, 64), ArrowSketch())
    with pytest.raises(InputError, match="click twice"):
        generate(_image(), empty, frames=5, out_dir=str(tmp_path))
    arrow = build_controls((48, 64), ArrowSketch().click(1, 1).click(5, 5))
    with pytest.raises(InputError, match="frames"):
        generate(_image(), arrow, frames=1, out_dir=str(tmp_path))
    with pytest.raises(InputError, match="fps"):
        generate(_image(), arrow, frames=5, fps=0, out_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_app_command_without_gradio_says_how_to_install_it():
    # gradio hidden (a None entry in sys.modules makes its import fail), so this runs where it is installed too
    hide = ("import runpy, sys; sys.modules['gradio'] = None; sys.argv = ['flowctrl', 'app']; "
            "runpy.run_module('flowctrl', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "flowctrl[app]"' in lines[0]


@pytest.mark.skipif(not HAS_GRADIO, reason="gradio (the [app] extra) is not installed")
def test_app_ui_builds_and_its_generate_handler_renders(tmp_path, monkeypatch):
    from flowctrl.app.ui import build_demo
    from flowctrl.video_io import read_video

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    demo = build_demo(default_frames=5)
    handlers = {fn.name: fn.fn for fn in demo.fns.values()}
    on_generate = handlers["on_generate"]
    sketch = ArrowSketch().click(20, 20).click(30, 26)
    controls_defaults = (1.0, "linear", "pan-left", "degrees=5", None, None, None, None, 0)
    path = on_generate(_image(), sketch, *controls_defaults, 5, 4, "push-pull", progress=lambda *a, **k: None)
    assert read_video(path).shape == (5, 48, 64, 3)
    import gradio as gr

    image = np.full((48, 64, 3), 128, np.uint8)
    on_click = handlers["on_click"]
    state, drawn = on_click(image, ArrowSketch(), *controls_defaults, evt=gr.SelectData(None, {"index": [8, 24], "value": None}))
    state, drawn = on_click(image, state, *controls_defaults, evt=gr.SelectData(None, {"index": [40, 24], "value": None}))
    assert state.arrows == (((8.0, 24.0), (40.0, 24.0)),) and drawn.shape == image.shape
    assert (drawn[24, 16:32, 0].astype(int) > drawn[24, 16:32, 1].astype(int) + 100).all()  # the arrow is drawn
    with pytest.raises(gr.Error, match="upload an image"):
        on_generate(None, sketch, *controls_defaults, 5, 4, "push-pull", progress=lambda *a, **k: None)
