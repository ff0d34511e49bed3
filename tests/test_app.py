"""`flowctrl app`: the web UI's logic (clicked arrows, controls, preview, generation) and its command."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from flowctrl.app.session import ArrowSketch, brush_mask, build_controls, camera_spec, generate, preview, prune_outputs
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
def test_app_ui_click_handler_gets_gradios_event_data(tmp_path):
    # gradio injects the clicked pixel by the parameter's annotation; this is what broke with gradio 6
    import gradio as gr
    from gradio.helpers import special_args

    from flowctrl.app.ui import build_demo

    demo = build_demo(default_frames=5, out_dir=str(tmp_path))
    handlers = {fn.name: fn.fn for fn in demo.fns.values()}
    event = gr.EventData(None, {"index": [8, 24], "value": None})
    inputs, _, event_index, _ = special_args(handlers["on_click"], inputs=[{}], event_data=event)
    assert event_index == 0 and isinstance(inputs[0], gr.SelectData) and inputs[0].index == [8, 24]
    generate_inputs = [fn for fn in demo.fns.values() if fn.name == "on_generate"][0].inputs
    _, progress_index, _, _ = special_args(handlers["on_generate"], inputs=[None] * len(generate_inputs))
    assert progress_index == len(generate_inputs) == 20  # the progress bar is injected after every widget


def test_drag_clicks_make_a_path_finished_by_a_double_click_or_the_button():
    s = ArrowSketch().drag_click(1, 1).drag_click(10, 1).drag_click(10, 8)
    assert s.path == ((1.0, 1.0), (10.0, 1.0), (10.0, 8.0)) and s.drags == ()
    done = s.drag_click(10.5, 8)  # a second click on (nearly) the last point: a double click
    assert done.path == () and done.drags == (s.path,) and done.history == ("drag",)
    assert s.finish_drag() == done
    assert done.drag_click(10, 8) == done  # a double click's second click on the finished end: ignored
    assert s.drag_click(20, 20).drag_click(20, 20).drag_click(20, 20).drags[-1][-1] == (20.0, 20.0)
    assert s.drag_click(20, 20).drag_click(20, 20).drag_click(20, 20).path == ()  # double click at a new spot
    assert ArrowSketch().drag_click(3, 3).finish_drag() == ArrowSketch()  # one point is no drag
    assert s.undo().path == s.path[:-1]
    mixed = done.click(0, 0).click(5, 5)
    assert mixed.undo() == done and mixed.undo().undo() == ArrowSketch()  # undo in drawing order
    drags = done.to_drags()
    assert len(drags) == 1 and np.allclose(drags[0].points, [[1, 1], [10, 1], [10, 8]])
    text = mixed.describe()
    assert "arrow 1: (0, 0) → (5, 5)" in text and "drag 1: (1, 1) → (10, 1) → (10, 8)" in text
    assert "in progress" in ArrowSketch().drag_click(2, 2).describe()
    assert ArrowSketch().describe() == "no arrows or drags yet"


def test_brush_mask_is_the_painted_alpha_at_the_image_size():
    assert brush_mask(None, (48, 64)) is None
    layer = np.zeros((24, 32, 4), np.uint8)
    assert brush_mask({"background": None, "layers": [layer], "composite": None}, (48, 64)) is None
    layer[4:8, 10:20, 3] = 255
    mask = brush_mask({"layers": [layer]}, (48, 64))
    assert mask.shape == (1, 48, 64) and mask.dtype == torch.bool
    assert int(mask.sum()) == 4 * 10 * 4 and bool(mask[0, 8:16, 20:40].all())


def test_build_controls_takes_drags_brush_and_uploaded_mask_pose_depth(tmp_path):
    from PIL import Image

    from flowctrl.depth import save_depth_png16

    mask_png = np.zeros((48, 64), np.uint8)
    mask_png[:, :8] = 255
    Image.fromarray(mask_png).save(tmp_path / "m.png")
    save_depth_png16(tmp_path / "d.png", torch.full((1, 1, 48, 64), 2.0))
    brush = torch.zeros(1, 48, 64, dtype=torch.bool)
    brush[:, 40:, 40:] = True
    sketch = ArrowSketch().drag_click(10, 10).drag_click(20, 12).finish_drag()
    controls = build_controls((48, 64), sketch, brush=brush, mask_file=str(tmp_path / "m.png"),
                              depth_file=str(tmp_path / "d.png"), camera="orbit")
    assert len(controls.drags) == 1 and controls.depth == tmp_path / "d.png"
    assert int(controls.motion_mask.sum()) == 48 * 8 + 8 * 24  # brush and mask file add up
    assert build_controls((48, 64), sketch, brush=brush).motion_mask.equal(brush)


def test_prune_outputs_removes_only_old_renders(tmp_path):
    import os
    import time

    old, new, other = tmp_path / "flowctrl-aaa.mp4", tmp_path / "flowctrl-bbb.mp4", tmp_path / "keep.txt"
    for f in (old, new, other):
        f.write_bytes(b"x")
    os.utime(old, (time.time() - 1000, time.time() - 1000))
    os.utime(other, (time.time() - 1000, time.time() - 1000))
    assert prune_outputs(str(tmp_path), 300) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flowctrl-bbb.mp4", "keep.txt"]


def test_library_warnings_name_no_cli_flag_and_the_app_says_what_to_do_in_it():
    import warnings

    from flowctrl.depth import plane_depth

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plane_depth(4, 4, distance=2.0)
    message = str(caught[0].message)
    assert "parallax is flat" in message and "--" not in message
    if HAS_GRADIO:
        from flowctrl.app.ui import app_warning_text

        text = app_warning_text(caught[0].message, caught[0].category)
        assert "--" not in text and text.endswith("upload a depth map under 'control files'")


class _FakeGuided:
    """A stand-in learned backend: the reference image repeated (records the prompt it got)."""

    def __init__(self, model=None):
        self.model, self.prompts = model, []

    def render(self, image, unified, *, num_frames, generator=None, callback=None, prompt=None, **kw):
        self.prompts.append(prompt)
        return image[:, None].expand(-1, num_frames, -1, -1, -1).clone()


def test_a_learned_pipeline_renders_through_generate_with_the_prompt(tmp_path):
    from flowctrl import FlowCtrlPipeline
    from flowctrl.video_io import read_video

    pipe = FlowCtrlPipeline(backend=_FakeGuided(model="m"))
    yy, xx = np.mgrid[0:48, 0:64]
    image = np.stack([xx * 4, yy * 5, np.full_like(xx, 128)], axis=-1).astype(np.uint8)  # smooth: H.264 keeps it
    controls = build_controls((48, 64), ArrowSketch().click(20, 20).click(30, 26))
    path = generate(image, controls, frames=4, fps=4, out_dir=str(tmp_path), pipeline=pipe, prompt="a cat")
    video = read_video(path).astype(int)
    assert video.shape == (4, 48, 64, 3) and pipe.backend.prompts == ["a cat"]
    assert np.abs(video - image.astype(int)).mean() < 3  # the fake backend's still frames, through H.264


@pytest.mark.skipif(not HAS_GRADIO, reason="gradio (the [app] extra) is not installed")
def test_app_offers_a_loaded_learned_pipeline_beside_warp(tmp_path, capsys):
    from flowctrl import FlowCtrlPipeline
    from flowctrl.app.ui import build_demo
    from flowctrl.cli import main
    from flowctrl.video_io import read_video

    pipe = FlowCtrlPipeline(backend=_FakeGuided(model="m"))
    demo = build_demo(default_frames=5, pipeline=pipe, out_dir=str(tmp_path))
    handlers = {fn.name: fn.fn for fn in demo.fns.values()}
    radio = [b for b in demo.blocks.values() if type(b).__name__ == "Radio" and "backend" in str(b.label)][0]
    assert [c[0] for c in radio.choices] == ["_fakeguided", "warp"] and radio.visible
    sketch = ArrowSketch().click(20, 20).click(30, 26)
    controls = (1.0, "linear", "none", "", None, None, None, None, 0)
    quiet = {"progress": lambda *a, **k: None}
    path = handlers["on_generate"](_image(), sketch, *controls, 5, 4, "push-pull", "a cat", **quiet)
    assert read_video(path).shape == (5, 48, 64, 3) and pipe.backend.prompts == ["a cat"]
    path = handlers["on_generate"](_image(), sketch, *controls, 5, 4, "push-pull", "a dog", None, None, None, None,
                                   "warp", **quiet)  # the warp backend chosen in the radio
    assert read_video(path).shape == (5, 48, 64, 3) and pipe.backend.prompts == ["a cat"]
    capsys.readouterr()
    rc = main(["app", "--model", str(tmp_path / "missing")])  # no guided backend, or no such model: one line
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "--model" in lines[0]


@pytest.mark.skipif(not HAS_GRADIO, reason="gradio (the [app] extra) is not installed")
def test_app_command_serves_the_page_on_the_given_port(tmp_path):
    import os
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "flowctrl", "app", "--port", str(port), "--frames", "9"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline, page = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert page is not None, proc.stdout.read() if proc.poll() is not None else "no answer in 120 s"
        assert "<title>flowctrl</title>" in page or "flowctrl" in page
        config = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10).read().decode()
        assert '"generate"' in config and '"upload-image"' in config  # our widgets, by elem_id
    finally:
        proc.terminate()
        proc.wait(timeout=30)
