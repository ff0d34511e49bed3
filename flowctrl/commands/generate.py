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
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO, Tuple

from flowctrl.commands._common import same_file, terminal_size
from flowctrl.commands._messages import cli_warning_text
from flowctrl.controls.registry import local_control_entries
from flowctrl.errors import InputError, MissingWeightsError
from flowctrl.pipelines.backend_options import BACKENDS, construction_options, flags_not_taken
from flowctrl.pipelines.backend_options import FLAGS as BACKEND_FLAGS
from flowctrl.pipelines.backend_options import backends_taking

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
  # many clips from one file (one JSON object per line: a control bundle + "image" + "output"),
  # resumable; `accelerate launch -m flowctrl generate --jobs ...` splits the jobs across processes
  flowctrl generate --jobs jobs.jsonl --frames 25
  # the learned renderer: 24 GB memory preset, 129 frames in phased windows, text + flow guidance, a LoRA
  flowctrl generate --image photo.jpg --arrows a.json --backend diffusion --model ckpt/flowctrl-5b \\
      --preset 24gb --prompt "a rocket lifts off" --negative-prompt "blurry, distorted" --steps 30 \\
      --guidance 6 --flow-guidance 1.5 --frames 129 --long-video phased --lora runs/motion/final/lora -o out.mp4
  # a public image-to-video model follows the warp with no training (Time-to-Move; GPU)
  flowctrl generate --image photo.jpg --arrows a.json --camera orbit --backend guided \\
      --model THUDM/CogVideoX-5b-I2V --preset offload --prompt "a rocket lifts off" -o out.mp4

outputs: {outputs}. Exit status 2 on bad input.
"""


# = flowctrl.video_io.OUTPUT_TYPES_TEXT (what an unsupported -o suffix is told); spelled here so that
# `flowctrl --help` does not import torch. tests/test_cli_jobs.py checks that the two agree.
OUTPUT_TYPES = ".mp4/.mov/.mkv (H.264), .gif, or a folder path (PNG frames)"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate", help="animate an image with motion controls (arrows, drags, camera, ...)",
        description="Animate one image: every control becomes one dense optical flow, then the image is "
                    "rendered along it (warp backend: CPU, no weights; diffusion backend: --model).",
        epilog=EXAMPLE.replace("{outputs}", OUTPUT_TYPES), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--image", metavar="FILE", help="input image (PNG/JPEG); required unless --jobs")
    c = p.add_argument_group("controls (coordinates in pixels of the input image; formats: docs/controls.md)")
    c.add_argument("--controls", metavar="FILE", help="a control bundle JSON holding any of the controls below")
    c.add_argument("--camera", metavar="FILE|PRESET",
                   help="camera trajectory file (.json, RealEstate10K .txt, MotionCtrl .json) or preset, "
                        "e.g. orbit, pan-left, zoom-in, orbit:degrees=30")
    for kind in local_control_entries():  # --arrows, --drags, --pose and every registered local control
        c.add_argument(kind.flag, metavar="FILE", help=kind.help)
    c.add_argument("--ref-video", metavar="FILE", help="reference video whose motion is transferred")
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
    c.add_argument("--segment", default="auto", metavar="auto|sam|edges|none|PATH|HUB_ID",
                   help="where an arrow/drag/pose moves: the object under its start point, from Segment Anything "
                        "(sam: downloads facebook/sam-vit-base; or a SAM folder / hub id) or image edges (edges, no "
                        "weights); auto = SAM when cached, else edges (default); none = spread by distance only")
    o = p.add_argument_group("rendering")
    o.add_argument("--frames", type=int, default=49, metavar="T", help="number of frames T >= 2 (default 49)")
    o.add_argument("--fps", type=float, default=8.0, help="frames per second of the output (default 8)")
    o.add_argument("--size", metavar="WxH",
                   help="working size, e.g. 512x512 (default: the image's, long side <= 512, multiples of 8)")
    o.add_argument("--backend", default="warp", choices=["warp", "diffusion", "guided"],
                   help="warp: softmax splatting, no weights (default); diffusion: learned renderer (--model); "
                        "guided: a public image-to-video model follows the warp, no training (--model)")
    o.add_argument("--model", metavar="PATH|HUB_ID",
                   help="weights of the diffusion backend (local folder), or the image-to-video model of the guided "
                        "backend (folder or hub id, e.g. THUDM/CogVideoX-5b-I2V; downloaded on request)")
    o.add_argument("--flow-model", metavar="PATH|HUB_ID", help="learned stage-1 flow model weights (optional)")
    o.add_argument("--fill", default="push-pull", choices=["push-pull", "inpaint", "none"],
                   help="hole filling of the warp backend (default push-pull; none shows holes black); "
                        "disocclusions are filled from what lies behind them")
    o.add_argument("--crop-valid", action="store_true",
                   help="warp backend: crop and zoom every frame (up to 2.5x) to the area all frames cover, so a "
                        "camera move shows no invented border content")
    o.add_argument("--sharp", action="store_true",
                   help="warp backend: sample every frame once from the image (bicubic) instead of keeping the "
                        "splat's bilinear blend: sharper frames, about 1.6x the render time")
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
                   help="memory/quality preset from flowctrl/presets/pipeline/ (24gb, 80gb, cpu) or a YAML file; "
                        "the flags above override its values")
    d.add_argument("--long-video", choices=["phased", "chain"],
                   help="clips longer than the model's window: phased (shared early steps, paper 004) or "
                        "chain (each window starts from the last frame)")
    d.add_argument("--lora", metavar="PATH", help="LoRA weights folder to load (e.g. flowctrl train video's final/lora)")
    d.add_argument("--lora-scale", type=float, metavar="S", help="weight of --lora (default 1)")
    g = p.add_argument_group("guided backend (--backend guided --model PATH|HUB_ID; also --prompt, "
                             "--negative-prompt, --steps, --guidance, --preset full|offload|low|cpu)")
    g.add_argument("--t-weak", type=int, metavar="I",
                   help="step index where denoising starts from the noised warp (default per model family, "
                        "e.g. 4 of 50 for CogVideoX, 3 for Wan; scaled with --steps)")
    g.add_argument("--t-strong", type=int, metavar="I",
                   help="step index until which the motion region is re-imposed from the warp (default 9 of 50 "
                        "for CogVideoX, 7 for Wan, 5 for Wan camera-only)")
    w = p.add_argument_group("outputs")
    w.add_argument("-o", "--output", metavar="PATH", help=f"output: {OUTPUT_TYPES}; required unless --jobs")
    w.add_argument("--side-by-side", action="store_true",
                   help="write input + controls | flow colours | result side by side")
    w.add_argument("--gif", nargs="?", const="", default=None, metavar="PATH",
                   help="also write a GIF (default path: the output with .gif)")
    w.add_argument("--png-dir", metavar="DIR", help="also write every frame as PNG into this new folder")
    w.add_argument("--save-flow", metavar="FILE", help="also save the unified flow (.safetensors, .npy or .flo)")
    w.add_argument("--preview", action="store_true",
                   help="only draw the controls over the image and write a PNG (the output with .png)")
    w.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no summary line")
    from flowctrl.commands.jobs import add_jobs_argument

    add_jobs_argument(p)
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
    """Only the flags the chosen backend takes (:mod:`flowctrl.pipelines.backend_options`), with sensible values."""
    given = [o.keyword for o in BACKEND_FLAGS if getattr(args, o.dest, None) is not None]
    extra = flags_not_taken(args.backend, given)
    if extra:
        flags = ", ".join(o.flag for o in extra)
        verb = "is" if len(extra) == 1 else "are"
        users = [name for name in BACKENDS if all(name in backends_taking(o.keyword) for o in extra)]
        drop = "it" if len(extra) == 1 else "them"
        if users:
            hints = " or ".join(BACKENDS[name].hint.replace("add ", "", 1) for name in users)
            raise InputError.at(None, None, f"{flags} {verb} only used by the {' and '.join(users)} "
                                f"backend{'s' if len(users) > 1 else ''}", f"add {hints}, or drop {drop}")
        raise InputError.at(None, None, f"{flags} {verb} not used by the {args.backend} backend",
                            f"drop {drop} (flowctrl generate --help lists each backend's flags)")
    if args.backend == "guided":
        return _check_guided_options(args)
    if args.backend != "diffusion":
        return
    if not args.model:
        raise MissingWeightsError.at("--backend diffusion", "--model", "no weights given",
                                     "pass --model PATH (a local folder) or use --backend warp")
    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise InputError.at("--steps", None, f"is {args.steps}", "give 1 to 1000 denoising steps (default 50)")
    for flag, value in (("--guidance", args.guidance), ("--flow-guidance", args.flow_guidance)):
        if value is not None and not 0 <= value <= 100:
            raise InputError.at(flag, None, f"is {value}", "give a scale in [0, 100] (1 = no guidance)")
    if args.lora_scale is not None and not -100 <= args.lora_scale <= 100:
        raise InputError.at("--lora-scale", None, f"is {args.lora_scale}", "give a weight in [-100, 100] (default 1)")
    if args.lora is not None and not Path(args.lora).exists():
        raise MissingWeightsError.at(args.lora, "--lora", "not found",
                                     "give the folder holding pytorch_lora_weights.safetensors "
                                     "(flowctrl train video writes it to final/lora)")
    if args.preset is not None:
        from flowctrl.pipelines.diffusion import load_memory_preset

        load_memory_preset(args.preset)  # unknown name / bad YAML -> InputError listing the presets


def _check_guided_options(args: argparse.Namespace) -> None:
    """``--backend guided``: a model and sensible values (which flags it takes is checked before)."""
    if not args.model:
        raise MissingWeightsError.at("--backend guided", "--model", "no model given",
                                     "pass --model PATH_OR_HUB_ID of an image-to-video pipeline, e.g. "
                                     "THUDM/CogVideoX-5b-I2V or Wan-AI/Wan2.2-I2V-A14B-Diffusers")
    if args.steps is not None and args.steps < 1:
        raise InputError.at("--steps", None, f"is {args.steps}", "give at least 1 denoising step (default 50)")
    if args.guidance is not None and not args.guidance >= 0:
        raise InputError.at("--guidance", None, f"is {args.guidance}", "give a scale >= 0 (1 = no guidance)")
    for flag, value in (("--t-weak", args.t_weak), ("--t-strong", args.t_strong)):
        if value is not None and value < 0:
            raise InputError.at(flag, None, f"is {value}", "give a step index >= 0")
    steps = args.steps if args.steps is not None else 50  # every family's default
    if args.t_weak is not None and args.t_weak >= steps:
        raise InputError.at("--t-weak", None, f"is {args.t_weak}, not below --steps {steps}",
                            f"give a step index in 0..{steps - 1}")
    if args.t_strong is not None and args.t_strong > steps:
        raise InputError.at("--t-strong", None, f"is {args.t_strong}, above --steps {steps}",
                            f"give a step index in 0..{steps}")
    if args.t_weak is not None and args.t_strong is not None and args.t_strong < args.t_weak:
        raise InputError.at("--t-strong", None, f"is {args.t_strong}, below --t-weak {args.t_weak}",
                            "give --t-strong >= --t-weak (equal = plain SDEdit from the warp)")
    if args.preset is not None:
        from flowctrl.pipelines.denoisers import MEMORY_PRESETS

        if args.preset not in MEMORY_PRESETS:
            raise InputError.at("--preset", None, f"unknown preset '{args.preset}' for the guided backend",
                                f"use one of {', '.join(MEMORY_PRESETS)}")


@dataclasses.dataclass
class Plan:
    """What ``_validate`` resolved before any rendering."""

    image: Any                      # (1,3,h0,w0) float in [0, 1], the input at its own size
    size: Tuple[int, int]           # (H, W) working size
    controls: Any = None            # Controls in pixels of the input image
    outputs: List[Tuple[str, Path]] = dataclasses.field(default_factory=list)  # (flag, path) in write order
    preview: Optional[Path] = None  # --preview: the PNG to write instead of any video


def _validate(args: argparse.Namespace) -> Plan:
    """All checks that need no rendering; returns the :class:`Plan`.

    Every file the checks read (the image, control files and the files they name: masks, depth,
    reference videos, an arrow's mask, a bundle's image) is recorded, and no output may resolve to
    any of them (:func:`flowctrl.io_safety.check_outputs`)."""
    from flowctrl.io_safety import check_outputs, recording_inputs

    if not args.output.strip():
        raise InputError.at("-o", None, "is an empty path", "give an output file name, e.g. -o out.mp4")
    with recording_inputs() as log:
        plan, inputs = _validate_recorded(args)
        targets = [("-o", plan.preview)] if plan.preview is not None else plan.outputs
        check_outputs(targets, inputs.values(), log=log)
    return plan


def _validate_recorded(args: argparse.Namespace) -> Tuple[Plan, Dict[str, Path]]:
    """:func:`_validate` inside the input log; returns the plan and the input files named by flags."""
    from flowctrl.pipelines.flowctrl_pipeline import load_image, resolve_size
    from flowctrl.render.warp_renderer import MAX_FRAMES, check_render_size
    from flowctrl.video_io import output_kind

    if args.frames < 2:
        raise InputError.at("--frames", None, f"is {args.frames}", "give at least 2 frames (default 49)")
    if args.frames > MAX_FRAMES:
        raise InputError.at("--frames", None, f"is {args.frames}, above the limit of {MAX_FRAMES}",
                            f"give at most {MAX_FRAMES}")
    from flowctrl.video_io import FPS_RANGE

    if not FPS_RANGE[0] <= args.fps <= FPS_RANGE[1]:
        raise InputError.at("--fps", None, f"is {args.fps}", f"give a frame rate in [{FPS_RANGE[0]:g}, {FPS_RANGE[1]:g}], e.g. 8")
    if args.plane_distance is not None and not (math.isfinite(args.plane_distance) and args.plane_distance > 0):
        raise InputError.at("--plane-distance", None, f"is {args.plane_distance}",
                            "give a positive distance in camera-translation units, e.g. 2")
    size = parse_size(args.size)
    if size is not None:
        check_render_size(size[0], size[1], args.frames, source="--size", field=None)
    _check_backend_options(args)
    from flowctrl.io_safety import check_safetensors_folder

    for flag, value in (("--model", args.model), ("--flow-model", args.flow_model), ("--lora", args.lora),
                        ("--depth-model", args.depth_model)):
        if value:
            check_safetensors_folder(value, flag)  # safetensors only: a .bin-only folder is one line

    image_path = Path(args.image)
    image = load_image(image_path)  # missing / corrupt -> InputError naming the file
    h0, w0 = image.shape[-2:]
    H, W = resolve_size((h0, w0), *(size if size is not None else (None, None)))
    check_render_size(H, W, args.frames, source="--size" if size is not None else str(image_path),
                      field=None if size is not None else "size")

    inputs = {"--image": image_path}
    for dest in dict.fromkeys((*INPUT_FILE_FLAGS, *(kind.field for kind in local_control_entries()))):
        value = getattr(args, dest, None)
        if value and isinstance(value, (str, os.PathLike)) and Path(value).exists():
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

    explicit = dict(camera=args.camera, ref_video=args.ref_video, mask=args.mask, static_mask=args.static_mask,
                    depth=args.depth, strength=args.strength,
                    **{kind.field: getattr(args, kind.field, None) for kind in local_control_entries()})
    controls = Controls.from_files(image_size=(h0, w0), **explicit)  # bad files -> ControlFileError
    if args.controls:  # the bundle fills in what the explicit flags did not give
        bundle = (args.controls.load((h0, w0)) if hasattr(args.controls, "load")  # an inline bundle (--jobs)
                  else Controls.from_bundle(args.controls, image_size=(h0, w0)))
        overrides = {field: getattr(controls, field) for field in (
            "camera", "ref_video", "motion_mask", "static_mask", "depth", "strength",
            *(kind.field for kind in local_control_entries()))
            if getattr(controls, field) not in (None, [])}
        controls = bundle.updated(**overrides)
    plan.controls = controls
    return plan, inputs


# --------------------------------------------------------------------------- progress


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
            cols, rows = terminal_size(self.file)
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

    from flowctrl.io_safety import atomic_path
    from flowctrl.video_io import to_uint8_frames

    frame = to_uint8_frames(image_chw[None])[0]
    with atomic_path(path, flag="--preview", suffix=".png") as tmp:
        Image.fromarray(frame).save(tmp, format="PNG")


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
    if getattr(args, "jobs", None) is not None:  # batch mode: flowctrl/commands/jobs.py
        from flowctrl.commands.jobs import run_jobs

        return run_jobs(args, run_one=lambda job_args: _run(job_args, StageProgress(enabled=False)))
    for flag, value in (("--image", args.image), ("-o", args.output)):
        if value is None:
            raise InputError.at(flag, None, "is required", "give --image FILE -o PATH, or --jobs FILE (flowctrl generate --help)")
    progress = StageProgress(enabled=not args.quiet and sys.stderr.isatty())

    def show(message: Any, category: Any = None, *_: Any, **__: Any) -> None:
        # Library warnings (e.g. "no depth given: using a plane") as one plain line each, above the bars.
        if args.quiet and getattr(category, "__name__", "") == "SegmentFallbackWarning":
            return  # -q: the working fallback is not worth a line; real problems still are
        progress.write(f"flowctrl generate: warning: {cli_warning_text(message, category)}")

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

    from flowctrl.pipelines.flowctrl_pipeline import FlowCtrlPipeline, resize_image

    H, W = plan.size
    controls = plan.controls
    image = resize_image(plan.image, (H, W))  # (1,3,H,W) at the working size, for overlays
    if plan.preview is not None:
        from flowctrl.flow.viz import draw_controls

        from flowctrl.pipelines.regions import local_motion_region

        local = controls.resized(H, W)
        moving = local_motion_region(image, local, args.frames, segment=args.segment)
        _write_png(plan.preview, draw_controls(image[0], local, num_frames=args.frames, moving=moving))
        if not args.quiet:
            print(f"wrote {plan.preview}", file=sys.stderr)
        return 0

    options = construction_options(args.backend, vars(args))
    if args.backend == "diffusion":
        pipe = FlowCtrlPipeline.from_pretrained(options.pop("model"), flow_model=args.flow_model, **options)
    elif args.backend == "guided":
        pipe = FlowCtrlPipeline(backend="guided", flow_model=args.flow_model, fill=args.fill, **options)
    else:
        pipe = FlowCtrlPipeline(backend="warp", flow_model=args.flow_model, fill=args.fill,
                                **({"crop_valid": True} if args.crop_valid else {}),
                                **({"sharp": True} if args.sharp else {}))
    render_kwargs: Dict[str, Any] = {} if args.prompt is None else {"prompt": args.prompt}
    if args.prompt is not None and args.backend == "warp":
        # kept usable (scripts pass one prompt to both backends) but never silently dropped
        warnings.warn("--prompt is ignored by the warp backend (it only moves pixels); "
                      "use --backend guided --model PATH_OR_HUB_ID for text guidance", stacklevel=2)
    t0 = time.perf_counter()
    progress.start()
    if _can_stream(args, plan):
        # the warp renderer a few frames at a time, straight into the encoder (same frames as below)
        chunks = pipe.stream(plan.image, controls=controls, num_frames=args.frames, height=H, width=W,
                             callback=progress, depth_model=args.depth_model, plane_distance=args.plane_distance,
                             segment=args.segment)
        _stream_outputs(plan, chunks, args.fps, progress)
        _report(args, plan, W, H, t0, progress)
        return 0
    out = pipe(plan.image, controls=controls, num_frames=args.frames, height=H, width=W,
               generator=torch.Generator().manual_seed(args.seed), callback=progress,
               depth_model=args.depth_model, plane_distance=args.plane_distance, segment=args.segment, **render_kwargs)
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
        # clip length and render time side by side, so neither is mistaken for the other
        print(f"wrote {names} ({args.frames} frames {W}x{H} = {args.frames / args.fps:.1f} s of video at "
              f"{args.fps:g} fps; rendered in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
