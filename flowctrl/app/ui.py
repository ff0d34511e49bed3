"""The gradio layout of ``flowctrl app``: upload an image, click arrows onto it, pick a camera preset or
upload control files, press Generate, watch the video. The work is done by :mod:`flowctrl.app.session`.

gradio is an optional dependency (``pip install "flowctrl[app]"``); it is imported only here.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np

from flowctrl.app.session import NO_CAMERA, ArrowSketch, build_controls, camera_spec, generate, preview
from flowctrl.errors import FlowCtrlError, InputError

HELP = """\
**Click twice on the image to draw an arrow** (start, then end): the pixel under the start moves
along it over the clip. Add a camera move from the presets (parameters like `degrees=20`), or upload
control files in the formats of `docs/controls.md`. The warp backend renders on the CPU, no weights.
"""


def import_gradio() -> Any:
    """The gradio module, or one clear :class:`InputError` saying how to install it."""
    try:
        import gradio
    except ImportError:
        raise InputError.at(None, None, "gradio is not installed (the web UI needs it)",
                            "pip install \"flowctrl[app]\" (or pip install gradio)") from None
    return gradio


def build_demo(default_frames: int = 49, default_fps: float = 8.0, pipeline: Any = None) -> Any:
    """The app as a ``gradio.Blocks`` (call ``.launch()`` on it). ``pipeline``: a ``FlowCtrlPipeline`` with a
    learned backend (``flowctrl app --model``: guided) rendering instead of the warp backend; adds a prompt box."""
    gr = import_gradio()
    from flowctrl.controls.presets import list_camera_presets

    def controls_of(image: Optional[np.ndarray], sketch: ArrowSketch, arrow_strength: float, easing: str,
                    preset: str, params: str, camera_file: Optional[str], arrows_file: Optional[str],
                    drags_file: Optional[str], ref_video: Optional[str], strength: float) -> Any:
        if image is None:
            raise InputError.at("image", None, "none uploaded", "upload an image first")
        return build_controls(image.shape[:2], sketch, arrow_strength=arrow_strength, easing=easing,
                              camera=camera_spec(preset, params), camera_file=camera_file,
                              arrows_file=arrows_file, drags_file=drags_file, ref_video=ref_video,
                              strength=strength)

    def redraw(image: Optional[np.ndarray], sketch: ArrowSketch, *control_inputs: Any) -> Any:
        if image is None:
            return None
        try:
            controls = controls_of(image, sketch, *control_inputs)
        except FlowCtrlError as error:  # e.g. a half-typed preset parameter: show the image, say why
            gr.Warning(str(error))
            controls = build_controls(image.shape[:2], sketch)
        return preview(image, controls, sketch)

    def on_upload(image: Optional[np.ndarray]) -> Any:
        return image, ArrowSketch(), image

    def on_click(source: Optional[np.ndarray], sketch: ArrowSketch, *control_inputs: Any,
                 evt: gr.SelectData) -> Any:
        if source is None:
            return sketch, None
        sketch = sketch.click(*evt.index[:2])
        return sketch, redraw(source, sketch, *control_inputs)

    def on_edit(action: str) -> Any:
        def edit(source: Optional[np.ndarray], sketch: ArrowSketch, *control_inputs: Any) -> Any:
            sketch = sketch.undo() if action == "undo" else ArrowSketch()
            return sketch, redraw(source, sketch, *control_inputs)
        return edit

    def on_generate(source: Optional[np.ndarray], sketch: ArrowSketch, *rest: Any,
                    progress: Any = gr.Progress()) -> Any:
        prompt = None
        if pipeline is not None:
            *rest, prompt = rest
        *control_inputs, frames, fps, fill = rest
        try:
            controls = controls_of(source, sketch, *control_inputs)
            with warnings.catch_warnings(record=True) as caught:  # e.g. "no depth given: using a plane"
                warnings.simplefilter("always")
                path = generate(source, controls, frames=int(frames), fps=float(fps), fill=fill,
                                pipeline=pipeline, prompt=prompt,
                                callback=lambda stage, done, total: progress((done, max(total, 1)), desc=stage))
        except FlowCtrlError as error:
            raise gr.Error(str(error)) from None
        for message in dict.fromkeys(" ".join(str(w.message).split()) for w in caught):
            gr.Warning(message)
        return path

    with gr.Blocks(title="flowctrl") as demo:
        gr.Markdown("# flowctrl: animate an image with motion controls\n" + HELP)
        source = gr.State(None)  # the uploaded image, undrawn
        sketch = gr.State(ArrowSketch())
        with gr.Row():
            with gr.Column():
                canvas = gr.Image(label="image (click: arrow start, click again: arrow end)", type="numpy",
                                  sources=["upload", "clipboard"], interactive=True)
                with gr.Row():
                    undo = gr.Button("undo arrow")
                    clear = gr.Button("clear arrows")
                arrow_strength = gr.Slider(0.0, 3.0, value=1.0, step=0.05, label="arrow strength M_o")
                easing = gr.Radio(["linear", "ease-in-out"], value="linear", label="arrow easing")
                preset = gr.Dropdown([NO_CAMERA] + list_camera_presets(), value=NO_CAMERA, label="camera preset")
                params = gr.Textbox(label="camera parameters", placeholder="e.g. degrees=20 or distance=0.5")
                strength = gr.Number(value=0, label="motion strength M_s in px/frame (0 = as drawn)", minimum=0)
                with gr.Accordion("control files (docs/controls.md)", open=False):
                    camera_file = gr.File(label="camera trajectory (.json / RealEstate10K .txt)", type="filepath")
                    arrows_file = gr.File(label="arrows (.json)", type="filepath")
                    drags_file = gr.File(label="drag trajectories (.json / .txt)", type="filepath")
                    ref_video = gr.File(label="reference video (motion to copy)", type="filepath")
            with gr.Column():
                frames = gr.Slider(2, 129, value=default_frames, step=1, label="frames")
                fps = gr.Slider(1, 30, value=default_fps, step=1, label="frames per second")
                fill = gr.Radio(["push-pull", "inpaint", "none"], value="push-pull", label="hole filling")
                prompt = gr.Textbox(label="prompt", visible=pipeline is not None)
                run = gr.Button("Generate", variant="primary")
                video = gr.Video(label="result", autoplay=True)

        control_inputs = [arrow_strength, easing, preset, params, camera_file, arrows_file, drags_file,
                          ref_video, strength]
        # UI events only: the per-session state (image, sketch) cannot be passed through gradio's API
        ui_only = {"api_visibility": "private"}
        canvas.upload(on_upload, [canvas], [source, sketch, canvas], **ui_only)
        canvas.clear(lambda: (None, ArrowSketch()), None, [source, sketch], **ui_only)
        canvas.select(on_click, [source, sketch, *control_inputs], [sketch, canvas], **ui_only)
        undo.click(on_edit("undo"), [source, sketch, *control_inputs], [sketch, canvas], **ui_only)
        clear.click(on_edit("clear"), [source, sketch, *control_inputs], [sketch, canvas], **ui_only)
        for widget in control_inputs:
            widget.change(redraw, [source, sketch, *control_inputs], [canvas], **ui_only)
        run.click(on_generate, [source, sketch, *control_inputs, frames, fps, fill] + ([prompt] if pipeline else []),
                  [video], **ui_only)
    return demo
