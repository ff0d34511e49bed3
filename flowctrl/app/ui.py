"""The gradio layout of ``flowctrl app``: upload an image, click arrows and drag paths onto it, paint a
motion brush, pick a camera preset or upload control files, press Generate, watch the video. The work
is done by :mod:`flowctrl.app.session`.

gradio is an optional dependency (``pip install "flowctrl[app]"``); it is imported only here.

gradio passes event data (the clicked pixel) to the parameter annotated ``gr.SelectData``, and only to
positional parameters, so every handler takes the control widgets as one dict (inputs given as a set).
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from typing import Any, Dict, Optional

import numpy as np

from flowctrl.app.session import (NO_CAMERA, ArrowSketch, brush_mask, build_controls, camera_spec, generate,
                                  preview, prune_outputs)
from flowctrl.errors import FlowCtrlError, InputError

HELP = """\
**Upload an image, then click on it.** *arrow* mode: click the start, then the end; the pixel under
the start moves along the arrow over the clip. *drag* mode: click the points of a path one by one and
finish it with a double click or **finish drag**. Paint a **motion brush** to say which region may move,
add a camera move from the presets (parameters like `degrees=20`), or upload control files in the
formats of `docs/controls.md`. The warp backend renders on the CPU, no weights.
"""
# Concurrent renders per app: each warp render already uses the CPU's threads, so more at once only
# make every user wait longer; the queue keeps the rest in line (and shows their place).
GENERATE_CONCURRENCY = 2
# Seconds a rendered video stays in the app's own folder: gradio copies it into its cache when the
# handler returns, so a few minutes is plenty. gradio's cache is swept with delete_cache below.
OUTPUT_MAX_AGE_S = 300.0
DELETE_CACHE = (600, 3600)  # (every 10 min, files older than 1 h) in gradio's cache of this app


def import_gradio() -> Any:
    """The gradio module, or one clear :class:`InputError` saying how to install it."""
    try:
        import gradio
    except ImportError:
        raise InputError.at(None, None, "gradio is not installed (the web UI needs it)",
                            "pip install \"flowctrl[app]\" (or pip install gradio)") from None
    return gradio


def app_warning_text(message: Any, category: Any = None) -> str:
    """A library warning as the app shows it: one line, with the app's way to act on it (library
    messages name no CLI flag; the app has none either)."""
    from flowctrl.depth.plane import FlatDepthWarning

    text = " ".join(str(message).split())
    if isinstance(category, type) and issubclass(category, FlatDepthWarning):
        text += "; in this app: upload a depth map under 'control files'"
    return text


def build_demo(default_frames: int = 49, default_fps: float = 8.0, pipeline: Any = None,
               out_dir: Optional[str] = None) -> Any:
    """The app as a ``gradio.Blocks``; start it with :func:`launch` (queue + limits) or ``.launch()``.

    pipeline: a loaded ``FlowCtrlPipeline`` with a learned backend (``flowctrl app --model``: guided),
    offered beside the warp backend (and chosen by default), with a prompt box.
    out_dir: where renders are written before gradio takes them (default: a temp folder removed at exit).
    """
    gr = import_gradio()
    from flowctrl.controls.presets import list_camera_presets
    from flowctrl.pipelines.flowctrl_pipeline import load_image

    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="flowctrl-app-")
        atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    backends = ["warp"]
    if pipeline is not None:  # e.g. GuidedBackend -> "guided"
        backends.insert(0, type(pipeline.backend).__name__.lower().replace("backend", "") or "learned")

    def controls_of(image: Optional[np.ndarray], sketch: ArrowSketch, v: Dict[Any, Any]) -> Any:
        if image is None:
            raise InputError.at("image", None, "none uploaded", "upload an image first")
        size = image.shape[:2]
        return build_controls(size, sketch, arrow_strength=v[arrow_strength], easing=v[easing],
                              camera=camera_spec(v[preset], v[params]), camera_file=v[camera_file],
                              arrows_file=v[arrows_file], drags_file=v[drags_file], ref_video=v[ref_video],
                              strength=v[strength], pose_file=v[pose_file], mask_file=v[mask_file],
                              depth_file=v[depth_file], brush=brush_mask(v[brush], size))

    def redraw(image: Optional[np.ndarray], sketch: ArrowSketch, v: Dict[Any, Any]) -> Any:
        if image is None:
            return None
        try:
            controls = controls_of(image, sketch, v)
        except FlowCtrlError as error:  # e.g. a half-typed preset parameter: show the image, say why
            gr.Warning(str(error))
            controls = build_controls(image.shape[:2], sketch)
        return preview(image, controls, sketch)

    def on_upload(path: Optional[str]) -> Any:
        if path is None:
            return None, ArrowSketch(), None, None, ArrowSketch().describe()
        try:
            chw = load_image(path)[0]  # (3, H, W) in [0, 1]; an unreadable file -> one line naming it
        except FlowCtrlError as error:  # named by the user's file name, not gradio's cache path
            raise gr.Error(str(error).replace(path, os.path.basename(path))) from None
        image = np.ascontiguousarray((chw.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8))
        editor = {"background": image, "layers": [], "composite": image}
        return image, ArrowSketch(), image, editor, ArrowSketch().describe()

    def on_click(evt: gr.SelectData, v: Dict[Any, Any]) -> Any:
        image, sketch = v[source], v[sketch_state]
        if image is None:
            return sketch, None, sketch.describe()
        x, y = evt.index[:2]
        sketch = sketch.drag_click(x, y) if v[mode] == "drag" else sketch.click(x, y)
        return sketch, redraw(image, sketch, v), sketch.describe()

    # gradio finds the event-data parameter by its annotation as an object (postponed annotations are
    # strings that would name the local ``gr``), so give it the class itself
    on_click.__annotations__.update(evt=gr.SelectData, v=dict)

    def on_edit(action: str) -> Any:
        def edit(v: Dict[Any, Any]) -> Any:
            sketch = v[sketch_state]
            sketch = {"undo": sketch.undo, "finish": sketch.finish_drag, "clear": ArrowSketch}[action]()
            return sketch, redraw(v[source], sketch, v), sketch.describe()
        return edit

    def on_brush_open(image: Optional[np.ndarray], editor: Any) -> Any:
        # gradio's editor draws no background it received while its accordion was closed: give it
        # the image again when the accordion opens, unless something is painted already
        if image is None or brush_mask(editor, image.shape[:2]) is not None:
            return gr.skip()
        return {"background": image, "layers": [], "composite": image}

    def on_change(v: Dict[Any, Any]) -> Any:
        return redraw(v[source], v[sketch_state], v)

    # Positional parameters (not one dict): gradio injects the progress tracker only into a positional
    # parameter, and scripts (and tests) call the handler with the widget values in this order.
    def on_generate(image: Optional[np.ndarray], sketch: ArrowSketch, arrow_strength_v: float, easing_v: str,
                    preset_v: str, params_v: str, camera_file_v: Optional[str], arrows_file_v: Optional[str],
                    drags_file_v: Optional[str], ref_video_v: Optional[str], strength_v: float, frames_v: float,
                    fps_v: float, fill_v: str, prompt_v: Optional[str] = None, pose_file_v: Optional[str] = None,
                    mask_file_v: Optional[str] = None, depth_file_v: Optional[str] = None, brush_v: Any = None,
                    backend_v: Optional[str] = None, progress: Any = gr.Progress()) -> Any:
        prune_outputs(out_dir, OUTPUT_MAX_AGE_S)
        v = {arrow_strength: arrow_strength_v, easing: easing_v, preset: preset_v, params: params_v,
             camera_file: camera_file_v, arrows_file: arrows_file_v, drags_file: drags_file_v,
             ref_video: ref_video_v, strength: strength_v, pose_file: pose_file_v, mask_file: mask_file_v,
             depth_file: depth_file_v, brush: brush_v}
        use_learned = pipeline is not None and (backend_v or backends[0]) != "warp"
        try:
            controls = controls_of(image, sketch, v)
            with warnings.catch_warnings(record=True) as caught:  # e.g. "no depth given: using a plane"
                warnings.simplefilter("always")
                path = generate(image, controls, frames=int(frames_v), fps=float(fps_v), fill=fill_v,
                                out_dir=out_dir, pipeline=pipeline if use_learned else None,
                                prompt=prompt_v or None,
                                callback=lambda stage, done, total: progress((done, max(total, 1)), desc=stage))
        except FlowCtrlError as error:
            raise gr.Error(str(error)) from None
        for message in dict.fromkeys(app_warning_text(w.message, w.category) for w in caught):
            gr.Warning(message)
        return path

    with gr.Blocks(title="flowctrl", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# flowctrl: animate an image with motion controls\n" + HELP)
        source = gr.State(None)  # the uploaded image (H, W, 3) uint8, undrawn
        sketch_state = gr.State(ArrowSketch())
        with gr.Row():
            with gr.Column():
                upload = gr.UploadButton("upload image", file_types=["image"], type="filepath",
                                         elem_id="upload-image")
                canvas = gr.Image(label="image: click to draw (arrow: start, end; drag: points, double-click ends)",
                                  type="numpy", interactive=False, elem_id="canvas", buttons=[], format="png")
                mode = gr.Radio(["arrow", "drag"], value="arrow", label="click mode", elem_id="mode")
                with gr.Row():
                    finish = gr.Button("finish drag", elem_id="finish-drag")
                    undo = gr.Button("undo", elem_id="undo")
                    clear = gr.Button("clear", elem_id="clear")
                listing = gr.Markdown(ArrowSketch().describe(), elem_id="sketch-list")
                arrow_strength = gr.Slider(0.0, 3.0, value=1.0, step=0.05, label="arrow strength M_o")
                easing = gr.Radio(["linear", "ease-in-out"], value="linear", label="arrow easing")
                preset = gr.Dropdown([NO_CAMERA] + list_camera_presets(), value=NO_CAMERA, label="camera preset",
                                     elem_id="preset")
                params = gr.Textbox(label="camera parameters", placeholder="e.g. degrees=20 or distance=0.5",
                                    elem_id="camera-params")
                strength = gr.Number(value=0, label="motion strength M_s in px/frame (0 = as drawn)", minimum=0)
                with gr.Accordion("motion brush: paint the region that may move", open=False) as brush_box:
                    brush = gr.ImageEditor(type="numpy", label="motion brush", sources=(), transforms=(),
                                           layers=False, elem_id="brush",
                                           brush=gr.Brush(colors=["#ff3030"], color_mode="fixed", default_size="auto"))
                with gr.Accordion("control files (docs/controls.md)", open=False):
                    camera_file = gr.File(label="camera trajectory (.json / RealEstate10K .txt)", type="filepath")
                    arrows_file = gr.File(label="arrows (.json)", type="filepath", elem_id="arrows-file")
                    drags_file = gr.File(label="drag trajectories (.json / .txt)", type="filepath")
                    ref_video = gr.File(label="reference video (motion to copy)", type="filepath")
                    pose_file = gr.File(label="pose keypoint sequence (.json)", type="filepath")
                    mask_file = gr.File(label="motion mask (PNG, white = may move)", type="filepath")
                    depth_file = gr.File(label="depth map (PNG16 / .npy / .exr) for camera moves", type="filepath")
            with gr.Column():
                backend = gr.Radio(backends, value=backends[0], label="backend (warp: instant CPU preview)",
                                   visible=len(backends) > 1)
                prompt = gr.Textbox(label="prompt (the warp backend ignores it)", visible=pipeline is not None)
                frames = gr.Slider(2, 129, value=default_frames, step=1, label="frames", elem_id="frames")
                fps = gr.Slider(1, 30, value=default_fps, step=1, label="frames per second", elem_id="fps")
                fill = gr.Radio(["push-pull", "inpaint", "none"], value="push-pull", label="hole filling")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                video = gr.Video(label="result", autoplay=True, elem_id="result")

        controls = {arrow_strength, easing, preset, params, camera_file, arrows_file, drags_file, ref_video,
                    strength, pose_file, mask_file, depth_file, brush}
        state = {source, sketch_state, mode}
        # UI events only: the per-session state (image, sketch) cannot be passed through gradio's API
        ui_only = {"api_visibility": "private"}
        upload.upload(on_upload, [upload], [source, sketch_state, canvas, brush, listing], **ui_only)
        canvas.select(on_click, state | controls, [sketch_state, canvas, listing], **ui_only)
        for button, action in ((undo, "undo"), (finish, "finish"), (clear, "clear")):
            button.click(on_edit(action), state | controls, [sketch_state, canvas, listing], **ui_only)
        for widget in controls - {brush}:
            widget.change(on_change, state | controls, [canvas], **ui_only)
        brush.input(on_change, state | controls, [canvas], **ui_only)  # strokes fire input (not change)
        brush_box.expand(on_brush_open, [source, brush], [brush], **ui_only)
        run.click(on_generate, [source, sketch_state, arrow_strength, easing, preset, params, camera_file, arrows_file,
                                drags_file, ref_video, strength, frames, fps, fill, prompt, pose_file, mask_file,
                                depth_file, brush, backend], [video],
                  # one learned render at a time: the loaded model is shared and fills the GPU
                  concurrency_limit=GENERATE_CONCURRENCY if pipeline is None else 1, concurrency_id="generate",
                  **ui_only)
    return demo


def launch(demo: Any, **kwargs: Any) -> Any:
    """``demo.queue(...).launch(**kwargs)`` with the app's queue settings (:data:`GENERATE_CONCURRENCY`)."""
    return demo.queue(default_concurrency_limit=GENERATE_CONCURRENCY, max_size=64).launch(**kwargs)
