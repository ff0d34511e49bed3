"""``flowctrl generate``: animate one image with motion controls and write a video.

Everything the user can get wrong is checked before any work starts; a bad input prints one line
and exits 2 without creating any output file. Outputs are written atomically (temp + rename), and if
a later output fails the earlier ones of the same run are removed again.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO, Tuple

from flowctrl.commands._common import same_file
from flowctrl.errors import InputError, MissingWeightsError

# Flags of the diffusion backend: (argparse dest, flag, DiffusionBackend keyword). All default to None
# ("not given"), so the backend's preset / defaults apply and the warp backend can refuse them.
DIFFUSION_OPTIONS: Tuple[Tuple[str, str, str], ...] = (
    ("negative_prompt", "--negative-prompt", "negative_prompt"),
    ("steps", "--steps", "num_inference_steps"),
    ("guidance", "--guidance", "guidance_scale"),
    ("flow_guidance", "--flow-guidance", "flow_guidance_scale"),
    ("preset", "--preset", "preset"),
    ("long_video", "--long-video", "long_video"),
    ("lora", "--lora", "lora"),
    ("lora_scale", "--lora-scale", "lora_scale"),
)
# Input files whose paths no output may take (argparse dests; --image is always included).
INPUT_FILE_FLAGS = ("controls", "camera", "arrows", "drags", "ref_video", "pose", "mask", "static_mask", "depth",
                    "model", "flow_model", "depth_model", "preset", "lora")

EXAMPLE = """\
examples:
  # camera orbit + the example arrows, 49 frames at 8 fps (about a second on a laptop CPU)
  flowctrl generate --image examples/astronaut.png --camera configs/camera/orbit.json \\
      --arrows examples/a.json -o out.mp4
  # a camera preset with parameters, a side-by-side comparison video and a GIF next to it
  flowctrl generate --image photo.jpg --camera orbit:degrees=20 --side-by-side --gif -o orbit.mp4
  # only check how the controls land on the image (writes out.png, nothing else)
  flowctrl generate --image examples/astronaut.png --arrows examples/a.json --preview -o out.png
  # the learned renderer: 24 GB memory preset, 129 frames in phased windows, text + flow guidance, a LoRA
  flowctrl generate --image photo.jpg --arrows a.json --backend diffusion --model ckpt/flowctrl-5b \\
      --preset 24gb --prompt "a rocket lifts off" --negative-prompt "blurry, distorted" --steps 30 \\
      --guidance 6 --flow-guidance 1.5 --frames 129 --long-video phased --lora runs/motion/final/lora -o out.mp4

outputs: .mp4/.mov/.mkv (H.264), .gif, or a folder path (PNG frames). Exit status 2 on bad input.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate", help="animate an image with motion controls (arrows, drags, camera, ...)",
        description="Animate one image: every control becomes one dense optical flow, then the image is "
                    "rendered along it (warp backend: CPU, no weights; diffusion backend: --model).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--image", required=True, metavar="FILE", help="input image (PNG/JPEG)")
    c = p.add_argument_group("controls (coordinates in pixels of the input image; formats: docs/controls.md)")
    c.add_argument("--controls", metavar="FILE", help="a control bundle JSON holding any of the controls below")
    c.add_argument("--camera", metavar="FILE|PRESET",
                   help="camera trajectory file (.json, RealEstate10K .txt, MotionCtrl .json) or preset, "
                        "e.g. orbit, pan-left, zoom-in, orbit:degrees=30")
    c.add_argument("--arrows", metavar="FILE", help="arrows JSON (e.g. examples/a.json)")
    c.add_argument("--drags", metavar="FILE", help="drag trajectories JSON or txt")
    c.add_argument("--ref-video", metavar="FILE", help="reference video whose motion is transferred")
    c.add_argument("--pose", metavar="FILE", help="pose keypoint sequence JSON")
    c.add_argument("--mask", metavar="FILE", help="motion brush mask PNG (where local motion may act)")
    c.add_argument("--static-mask", metavar="FILE", help="mask PNG of regions that must stay still")
    c.add_argument("--depth", metavar="FILE", help="depth map (PNG16/npy/exr) for camera controls")
    c.add_argument("--depth-model", metavar="auto|none|PATH|HUB_ID", default="auto",
                   help="depth for camera controls without --depth: auto (default) = Depth Anything V2 Small from "
                        "the Hugging Face cache, downloaded on first use (HF_HUB_OFFLINE honoured), else a flat "
                        "plane with a warning; none = the plane; or a Depth-Anything folder / hub id")
    c.add_argument("--plane-distance", type=float, metavar="D",
                   help="the scene's median depth (the plane's distance without a depth model), in camera-"
                        "translation units (default: the trajectory's scene depth, e.g. an orbit's look-at "
                        "distance; for camera files of unknown scale, 2x the path length; presets: 1)")
    c.add_argument("--strength", type=float, metavar="S", help="target motion strength M_s in px/frame")
    o = p.add_argument_group("rendering")
    o.add_argument("--frames", type=int, default=49, metavar="T", help="number of frames T >= 2 (default 49)")
    o.add_argument("--fps", type=float, default=8.0, help="frames per second of the output (default 8)")
    o.add_argument("--size", metavar="WxH",
                   help="working size, e.g. 512x512 (default: the image's, long side <= 512, multiples of 8)")
    o.add_argument("--backend", default="warp", choices=["warp", "diffusion"],
                   help="warp: softmax splatting, no weights (default); diffusion: learned renderer (--model)")
    o.add_argument("--model", metavar="PATH|HUB_ID", help="weights of the diffusion backend (local folder)")
    o.add_argument("--flow-model", metavar="PATH|HUB_ID", help="learned stage-1 flow model weights (optional)")
    o.add_argument("--fill", default="push-pull", choices=["push-pull", "inpaint", "none"],
                   help="hole filling of the warp backend (default push-pull; none shows holes black); "
                        "disocclusions are filled from what lies behind them")
    o.add_argument("--crop-valid", action="store_true",
                   help="warp backend: crop and zoom every frame (up to 2.5x) to the area all frames cover, so a "
                        "camera move shows no invented border content")
    o.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same video")
    d = p.add_argument_group("diffusion backend (only with --backend diffusion; defaults: the preset's, else "
                             "50 steps, guidance 6, flow guidance 1, phased)")
    d.add_argument("--prompt", default=None, metavar="TEXT", help="text prompt (the warp backend ignores it)")
    d.add_argument("--negative-prompt", metavar="TEXT", help="what to steer away from (text guidance > 1 only)")
    d.add_argument("--steps", type=int, metavar="N", help="denoising steps per window")
    d.add_argument("--guidance", type=float, metavar="G",
                   help="text guidance scale (classifier-free; <= 1 turns text guidance off)")
    d.add_argument("--flow-guidance", type=float, metavar="G",
                   help="flow guidance scale (1 = plain flow conditioning, 0 = flow dropped, > 1 = stronger)")
    d.add_argument("--preset", metavar="NAME|FILE",
                   help="memory/quality preset from configs/pipeline/ (24gb, 80gb, cpu) or a YAML file; "
                        "the flags above override its values")
    d.add_argument("--long-video", choices=["phased", "chain"],
                   help="clips longer than the model's window: phased (shared early steps, paper 004) or "
                        "chain (each window starts from the last frame)")
    d.add_argument("--lora", metavar="PATH", help="LoRA weights folder to load (e.g. flowctrl train video's final/lora)")
    d.add_argument("--lora-scale", type=float, metavar="S", help="weight of --lora (default 1)")
    w = p.add_argument_group("outputs")
    w.add_argument("-o", "--output", required=True, metavar="PATH", help="output video (.mp4, .gif) or PNG folder")
    w.add_argument("--side-by-side", action="store_true",
                   help="write input + controls | flow colours | result side by side")
    w.add_argument("--gif", nargs="?", const="", default=None, metavar="PATH",
                   help="also write a GIF (default path: the output with .gif)")
    w.add_argument("--png-dir", metavar="DIR", help="also write every frame as PNG into this new folder")
    w.add_argument("--save-flow", metavar="FILE", help="also save the unified flow (.safetensors, .npy or .flo)")
    w.add_argument("--preview", action="store_true",
                   help="only draw the controls over the image and write a PNG (the output with .png)")
    w.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no summary line")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- validation


def parse_size(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """``"WxH"`` -> ``(H, W)``; None stays None."""
    if text is None:
        return None
    parts = text.lower().replace("*", "x").split("x")
    try:
        width, height = (int(v) for v in parts)
    except ValueError:
        raise InputError.at("--size", None, f"'{text}' is not WIDTHxHEIGHT", "give e.g. --size 512x512") from None
    return height, width


def _check_output(path: Path, flag: str, inputs: Dict[str, Path], *, folder: bool = False) -> None:
    """Refuse an output whose folder is missing, that is an input, or (``folder``) a non-empty folder."""
    text = str(path)
    target = Path(text.rstrip("/" + os.sep))
    if not target.parent.is_dir():
        raise InputError.at(text, flag, f"folder '{target.parent}' does not exist",
                            "create it first or choose another path")
    if folder and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InputError.at(text, flag, "already exists and is not an empty folder", "give a new folder")
    for name, src in inputs.items():
        if same_file(target, src):
            raise InputError.at(text, flag, f"is the same file as the input {name}",
                                "choose an output path that is not an input")


def _check_backend_options(args: argparse.Namespace) -> None:
    """``--model`` and the diffusion flags need ``--backend diffusion``; their values must make sense."""
    if args.model and args.backend != "diffusion":
        raise InputError.at("--model", None, "is only used by the diffusion backend", "add --backend diffusion")
    given = [flag for dest, flag, _ in DIFFUSION_OPTIONS if getattr(args, dest) is not None]
    if given and args.backend != "diffusion":
        raise InputError.at(None, None, f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} only used by "
                            "the diffusion backend",
                            "add --backend diffusion --model PATH, or drop "
                            f"{'it' if len(given) == 1 else 'them'} for the warp backend")
    if args.backend != "diffusion":
        return
    if not args.model:
        raise MissingWeightsError.at("--backend diffusion", "--model", "no weights given",
                                     "pass --model PATH (a local folder) or use --backend warp")
    if args.steps is not None and args.steps < 1:
        raise InputError.at("--steps", None, f"is {args.steps}", "give at least 1 denoising step (default 50)")
    for flag, value in (("--guidance", args.guidance), ("--flow-guidance", args.flow_guidance)):
        if value is not None and not value >= 0:
            raise InputError.at(flag, None, f"is {value}", "give a scale >= 0 (1 = no guidance)")
    if args.lora is not None and not Path(args.lora).exists():
        raise MissingWeightsError.at(args.lora, "--lora", "not found",
                                     "give the folder holding pytorch_lora_weights.safetensors "
                                     "(flowctrl train video writes it to final/lora)")
    if args.preset is not None:
        from flowctrl.pipelines.diffusion import load_memory_preset

        load_memory_preset(args.preset)  # unknown name / bad YAML -> InputError listing the presets


@dataclasses.dataclass
class Plan:
    """What ``_validate`` resolved before any rendering."""

    image: Any                      # (1,3,h0,w0) float in [0, 1], the input at its own size
    size: Tuple[int, int]           # (H, W) working size
    controls: Any = None            # Controls in pixels of the input image
    outputs: List[Tuple[str, Path]] = dataclasses.field(default_factory=list)  # (flag, path) in write order
    preview: Optional[Path] = None  # --preview: the PNG to write instead of any video


def _validate(args: argparse.Namespace) -> Plan:
    """All checks that need no rendering; returns the :class:`Plan`."""
    from flowctrl.pipelines.flowctrl_pipeline import load_image, resolve_size
    from flowctrl.render.warp_renderer import MAX_FRAMES, check_render_size
    from flowctrl.video_io import output_kind

    if args.frames < 2:
        raise InputError.at("--frames", None, f"is {args.frames}", "give at least 2 frames (default 49)")
    if args.frames > MAX_FRAMES:
        raise InputError.at("--frames", None, f"is {args.frames}, above the limit of {MAX_FRAMES}",
                            f"give at most {MAX_FRAMES}")
    if not args.fps > 0:
        raise InputError.at("--fps", None, f"is {args.fps}", "give a positive frame rate, e.g. 8")
    if args.plane_distance is not None and not (math.isfinite(args.plane_distance) and args.plane_distance > 0):
        raise InputError.at("--plane-distance", None, f"is {args.plane_distance}",
                            "give a positive distance in camera-translation units, e.g. 2")
    size = parse_size(args.size)
    if size is not None:
        check_render_size(size[0], size[1], args.frames, source="--size", field=None)
    _check_backend_options(args)

    image_path = Path(args.image)
    image = load_image(image_path)  # missing / corrupt -> InputError naming the file
    h0, w0 = image.shape[-2:]
    H, W = resolve_size((h0, w0), *(size if size is not None else (None, None)))
    check_render_size(H, W, args.frames, source="--size" if size is not None else str(image_path),
                      field=None if size is not None else "size")

    inputs = {"--image": image_path}
    for dest in INPUT_FILE_FLAGS:
        value = getattr(args, dest)
        if value and Path(value).exists():
            inputs["--" + dest.replace("_", "-")] = Path(value)

    output = Path(args.output)
    plan = Plan(image=image, size=(H, W))
    if args.preview:
        preview = output if output.suffix.lower() == ".png" else output.with_suffix(".png")
        _check_output(preview, "-o", inputs)
        plan.preview = preview
    else:
        kind = output_kind(args.output)  # unsupported suffix -> InputError
        _check_output(output, "-o", inputs, folder=kind == "png_dir")
        plan.outputs.append(("-o", output))
        if args.gif is not None:
            gif = Path(args.gif) if args.gif else output.with_suffix(".gif")
            if gif.suffix.lower() != ".gif":
                raise InputError.at(str(gif), "--gif", "does not end with .gif", "give a .gif path")
            _check_output(gif, "--gif", inputs)
            plan.outputs.append(("--gif", gif))
        if args.png_dir:
            _check_output(Path(args.png_dir), "--png-dir", inputs, folder=True)
            plan.outputs.append(("--png-dir", Path(args.png_dir)))
        if args.save_flow:
            flow_path = Path(args.save_flow)
            if flow_path.suffix.lower() not in (".safetensors", ".npy", ".flo"):
                raise InputError.at(str(flow_path), "--save-flow", f"unsupported suffix '{flow_path.suffix}'",
                                    "use .safetensors, .npy or .flo")
            _check_output(flow_path, "--save-flow", inputs)
            plan.outputs.append(("--save-flow", flow_path))
        targets = [str(p.resolve()) for _, p in plan.outputs]
        if len(set(targets)) != len(targets):
            raise InputError.at(args.output, None, "two outputs share one path", "give each output its own path")

    from flowctrl.controls import Controls

    explicit = dict(arrows=args.arrows, drags=args.drags, camera=args.camera, ref_video=args.ref_video,
                    pose=args.pose, mask=args.mask, static_mask=args.static_mask, depth=args.depth,
                    strength=args.strength)
    controls = Controls.from_files(image_size=(h0, w0), **explicit)  # bad files -> ControlFileError
    if args.controls:  # the bundle fills in what the explicit flags did not give
        bundle = Controls.from_bundle(args.controls, image_size=(h0, w0))
        overrides = {field: getattr(controls, field) for field in (
            "arrows", "drags", "camera", "ref_video", "pose", "motion_mask", "static_mask", "depth", "strength")
            if getattr(controls, field) not in (None, [])}
        controls = dataclasses.replace(bundle, **overrides)
    plan.controls = controls
    return plan


# --------------------------------------------------------------------------- progress


def _terminal_size(file: TextIO) -> Tuple[int, int]:
    """``(columns, lines)`` of the terminal behind ``file``; 80x24 where it reports none."""
    try:
        size = os.get_terminal_size(file.fileno())
        cols, rows = size.columns, size.lines
    except (AttributeError, OSError, ValueError):
        cols = rows = 0
    return cols if cols > 0 else 80, rows if rows > 0 else 24


class StageProgress:
    """``callback(stage, done, total)`` that draws one tqdm bar per stage on ``file`` (stderr).

    Stages run one after another, so a new stage closes the bars still open. A bar is timed from the
    previous report (the end of the stage before), because many stages report only when they finish.
    The size is given to tqdm explicitly: a pseudo-terminal that reports 0x0 (``script``, some CI and
    IDE consoles) otherwise makes tqdm treat every bar as below the screen and print nothing.
    Disabled, it does nothing; :meth:`write` then prints plainly.
    """

    BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"

    def __init__(self, enabled: bool, file: Optional[TextIO] = None) -> None:
        self.enabled = enabled
        self.file = file if file is not None else sys.stderr
        self.bars: Dict[str, Any] = {}  # open bars by stage
        self._last_report = time.time()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            self.close()
            cols, rows = _terminal_size(self.file)
            # delay > 0: no 0% line before start_t is set; refresh() below draws the first one.
            bar = self.bars[stage] = tqdm(total=total, desc=f"{stage:>10}", file=self.file, leave=True,
                                          ncols=min(100, cols), nrows=rows, bar_format=self.BAR_FORMAT, delay=1e-9)
            bar.start_t = self._last_report
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            self.bars.pop(stage).close()
        self._last_report = time.time()

    def start(self) -> None:
        """Time the first stage from now (call right before the work that reports)."""
        self._last_report = time.time()

    def write(self, line: str) -> None:
        """Print one line to ``file`` without tearing an open bar."""
        if self.enabled and self.bars:
            from tqdm import tqdm

            tqdm.write(line, file=self.file)
        else:
            print(line, file=self.file)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


# --------------------------------------------------------------------------- run


def side_by_side(image: Any, controls: Any, flow: Any, video: Any) -> Any:
    """``(T, 3, H, 3W)``: input with the controls drawn | flow colours (one scale) | result.

    ``image (1,3,H,W)``, ``flow (1,T,2,H,W)`` px and ``video (T,3,H,W)`` in [0, 1] at the working size.
    """
    import torch

    from flowctrl.flow.viz import draw_controls, flow_video

    T, _, H, W = video.shape
    overlay = draw_controls(image[0], controls, num_frames=T)[:, :H, :W]
    colors = flow_video(flow)  # (T,3,H,W)
    return torch.cat([overlay[None].expand(T, -1, -1, -1), colors.to(video.dtype), video], dim=3)


def _write_png(path: Path, image_chw: Any) -> None:
    """``image_chw (3,H,W)`` in [0, 1] -> PNG at ``path`` (temp file + rename)."""
    from PIL import Image

    from flowctrl.video_io import _umask, to_uint8_frames

    frame = to_uint8_frames(image_chw[None])[0]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(frame).save(tmp, format="PNG")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_outputs(plan: Plan, video: Any, flow: Any, fps: float, progress: StageProgress) -> None:
    """Write every planned output; if one fails, remove the ones already written (no partial set)."""
    from flowctrl.flow.io import save_flow
    from flowctrl.video_io import write_video

    outputs = plan.outputs
    written: List[Path] = []
    progress("encode", 0, len(outputs))
    try:
        for flag, path in outputs:
            if flag == "--save-flow":
                save_flow(path, flow)
            elif flag == "--png-dir":  # a trailing separator selects the PNG-folder writer
                write_video(str(path).rstrip("/" + os.sep) + os.sep, video, fps=fps)
            else:
                write_video(path, video, fps=fps)
            written.append(path)
            progress("encode", len(written), len(outputs))
    except BaseException:
        _remove(written)
        raise


def _remove(paths: List[Path]) -> None:
    """Delete outputs already written (files or PNG folders) after a later output failed."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def run(args: argparse.Namespace) -> int:
    """The subcommand: validate everything, render, write the outputs; 0 on success.

    User errors propagate as ``FlowCtrlError`` (flowctrl.cli prints the one line and exits 2).
    """
    progress = StageProgress(enabled=not args.quiet and sys.stderr.isatty())

    def show(message: Any, *_: Any, **__: Any) -> None:
        # Library warnings (e.g. "no depth given: using a plane") as one plain line each, above the bars.
        progress.write(f"flowctrl generate: warning: {' '.join(str(message).split())}")

    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            return _run(args, progress)
        finally:
            progress.close()


def _run(args: argparse.Namespace, progress: StageProgress) -> int:
    """:func:`run` inside its warning handler; ``progress`` is the stage callback."""
    plan = _validate(args)
    import torch

    from flowctrl.pipelines.flowctrl_pipeline import FlowCtrlPipeline, _resize_image

    H, W = plan.size
    controls = plan.controls
    image = _resize_image(plan.image, (H, W))  # (1,3,H,W) at the working size, for overlays
    if plan.preview is not None:
        from flowctrl.flow.viz import draw_controls

        _write_png(plan.preview, draw_controls(image[0], controls.resized(H, W), num_frames=args.frames))
        if not args.quiet:
            print(f"wrote {plan.preview}", file=sys.stderr)
        return 0

    if args.backend == "diffusion":
        options = {kw: getattr(args, dest) for dest, _, kw in DIFFUSION_OPTIONS if getattr(args, dest) is not None}
        pipe = FlowCtrlPipeline.from_pretrained(args.model, flow_model=args.flow_model, **options)
    else:
        pipe = FlowCtrlPipeline(backend="warp", flow_model=args.flow_model, fill=args.fill,
                                **({"crop_valid": True} if args.crop_valid else {}))
    render_kwargs: Dict[str, Any] = {} if args.prompt is None else {"prompt": args.prompt}
    if args.prompt is not None and args.backend == "warp":
        # kept usable (scripts pass one prompt to both backends) but never silently dropped
        warnings.warn("--prompt is ignored by the warp backend (it only moves pixels); "
                      "use --backend diffusion --model PATH for text guidance")
    t0 = time.perf_counter()
    progress.start()
    if _can_stream(args, plan):
        # the warp renderer a few frames at a time, straight into the encoder (same frames as below)
        chunks = pipe.stream(plan.image, controls=controls, num_frames=args.frames, height=H, width=W,
                             callback=progress, depth_model=args.depth_model, plane_distance=args.plane_distance)
        _stream_outputs(plan, chunks, args.fps, progress)
        _report(args, plan, W, H, t0, progress)
        return 0
    out = pipe(plan.image, controls=controls, num_frames=args.frames, height=H, width=W,
               generator=torch.Generator().manual_seed(args.seed), callback=progress,
               depth_model=args.depth_model, plane_distance=args.plane_distance, **render_kwargs)
    if args.side_by_side:
        video = side_by_side(image, controls.resized(H, W), out.flow, out.video[0])
    else:
        video = out.frames  # (T,H,W,3) uint8, converted once
    _write_outputs(plan, video, out.flow, args.fps, progress)
    _report(args, plan, W, H, t0, progress)
    return 0


def _can_stream(args: argparse.Namespace, plan: Plan) -> bool:
    """The warp backend renders chunk by chunk unless an output needs the whole flow (side-by-side, --save-flow)."""
    return (args.backend == "warp" and args.flow_model is None and not args.side_by_side
            and all(flag != "--save-flow" for flag, _ in plan.outputs))


def _stream_outputs(plan: Plan, chunks: Any, fps: float, progress: StageProgress) -> None:
    """Feed every rendered chunk to every planned output; all outputs appear only when all succeeded."""
    from flowctrl.video_io import VideoWriter

    writers = []
    done: List[Path] = []
    try:
        for flag, path in plan.outputs:  # a trailing separator selects the PNG-folder writer
            target = str(path).rstrip("/" + os.sep) + os.sep if flag == "--png-dir" else path
            writers.append(VideoWriter(target, fps=fps))
        for chunk in chunks:
            for writer in writers:
                writer.write(chunk)
        progress("encode", 0, len(writers))
        for writer in writers:
            done.append(writer.close())
            progress("encode", len(done), len(writers))
    except BaseException:
        for writer in writers:
            writer.abort()
        _remove(done)
        raise


def _report(args: argparse.Namespace, plan: Plan, W: int, H: int, t0: float, progress: StageProgress) -> None:
    progress.close()
    if not args.quiet:
        names = ", ".join(str(p) for _, p in plan.outputs)
        print(f"wrote {names} ({args.frames} frames {W}x{H}, {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
