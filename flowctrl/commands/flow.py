"""``flowctrl flow``: compute the unified flow of an image + controls and save it with a visualization.

    flowctrl flow --image examples/astronaut.png --arrows examples/a.json --camera orbit \\
        --frames 25 -o out/flow.safetensors
    # -> out/flow.safetensors (flow + masks + depth + camera), out/flow_flow.mp4 (color wheel),
    #    out/flow_controls.png (controls drawn over the image | last-frame flow)
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Dict

from flowctrl.commands._common import same_file
from flowctrl.commands._messages import cli_warning_text
from flowctrl.controls.registry import local_control_entries
from flowctrl.errors import InputError

FLOW_SUFFIXES = (".safetensors", ".npy", ".flo")
HELP = "compute the unified optical flow of an image and its controls (stage 1) and save it"
EPILOG = """\
outputs:
  -o flow.safetensors   flow (1,T,2,H,W) pixels + valid/local_mask (uint8), depth, K, K_frames, w2c
                        (--all-tensors adds sparse_flow/sparse_mask and the local/camera components)
  -o flow.npy | .flo    the flow alone (.flo: one Middlebury record per frame)
  --viz                 color-wheel video (default: <output stem>_flow.mp4; .gif or a folder also work)
  --overlay             PNG with the controls drawn over the image and the last frame's flow

example:
  flowctrl flow --image examples/astronaut.png --arrows examples/a.json --camera orbit:degrees=20 \\
      --frames 25 -o flow.safetensors
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("flow", help=HELP, description=HELP, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True, help="input image (PNG/JPEG)")
    p.add_argument("--controls", "--bundle", dest="bundle", metavar="FILE",
                   help="control bundle JSON (individual flags below override its entries); "
                        "--bundle is an alias")
    for kind in local_control_entries():  # --arrows, --drags, --pose and every registered local control
        p.add_argument(kind.flag, help=kind.flow_help or kind.help)
    p.add_argument("--camera", help="camera file (flowctrl JSON, RealEstate10K .txt, MotionCtrl JSON) or preset, e.g. orbit")
    p.add_argument("--ref-video", help="reference video whose motion is transferred")
    p.add_argument("--mask", help="motion-brush PNG: local motion only inside it")
    p.add_argument("--static-mask", help="PNG of regions that stay still (they follow only the camera)")
    p.add_argument("--depth", help="depth file: 16-bit PNG, .npy, or a disparity map (see --depth-kind)")
    p.add_argument("--depth-kind", choices=("depth", "disparity"), default="depth",
                   help="depth = value * scale; disparity: depth = scale / value (scale = focal px * baseline)")
    p.add_argument("--depth-scale", type=float, default=None,
                   help="depth file scale (default: 1/1000 for 16-bit PNG depth, else 1)")
    p.add_argument("--depth-model", default="auto",
                   help="auto (default: Depth Anything V2 Small, cached or downloaded on first use, else a plane), "
                        "none (a plane), or a Depth-Anything hub id / folder")
    p.add_argument("--plane-distance", type=float, default=None,
                   help="distance of the fallback depth plane when no depth is given, in camera-translation units "
                        "(RealEstate10K poses have an arbitrary scale; default: the trajectory's scene depth, "
                        "e.g. an orbit's look-at distance, else 1)")
    p.add_argument("--strength", type=float, help="target motion strength M_s (px/frame at the image size) of the local motion")
    p.add_argument("--frames", type=int, default=49, help="number of frames T (default 49)")
    p.add_argument("--size", help="working size WIDTHxHEIGHT (default: image scaled to a long side <= 512, multiple of 8)")
    p.add_argument("--densify", choices=("normalized", "gaussian"), default="normalized",
                   help="normalized Nadaraya-Watson (default) or eq. 6-7 as written")
    p.add_argument("--segment", default="auto", metavar="auto|sam|edges|none|PATH|HUB_ID",
                   help="where an arrow/drag/pose moves: the object under its start point (sam: Segment Anything, "
                        "downloaded on request, or a SAM folder / hub id; edges: no weights); auto = SAM when cached, "
                        "else edges (default); none = spread by distance only")
    p.add_argument("--flow-method", choices=("dis", "raft"), default="dis", help="reference-video flow estimator")
    p.add_argument("-o", "--output", required=True, help="flow file: .safetensors, .npy or .flo")
    p.add_argument("--viz", help="color-wheel video path (.mp4/.gif/folder); default <output stem>_flow.mp4")
    p.add_argument("--no-viz", action="store_true", help="do not write the visualization video")
    p.add_argument("--overlay", help="PNG of the controls drawn over the image (default <output stem>_controls.png)")
    p.add_argument("--fps", type=float, default=8.0, help="visualization frame rate (default 8)")
    p.add_argument("--all-tensors", action="store_true",
                   help="also save sparse_flow/sparse_mask (the FGM condition) and the local/camera components (.safetensors)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def _check_outputs(outputs: Dict[str, Path], inputs: Dict[str, Path]) -> None:
    seen: Dict[Path, str] = {}
    for flag, path in outputs.items():
        parent = path.parent
        if not parent.is_dir():
            raise InputError.at(path, flag, f"folder '{parent}' does not exist", "create it first or choose another path")
        for name, src in inputs.items():
            if same_file(path, src):
                raise InputError.at(path, flag, f"is the same file as the input {name}", "choose an output path that is not an input")
        key = path.resolve()
        if key in seen:
            raise InputError.at(path, flag, f"is also the {seen[key]} output", "give different paths")
        seen[key] = flag


def _controls(args: argparse.Namespace, image_size) -> Any:
    from flowctrl.controls import Controls

    given = {k: getattr(args, k, None) for k in (*(kind.field for kind in local_control_entries()), "camera",
                                                 "ref_video", "mask", "static_mask", "depth")}
    flags = Controls.from_files(**{k: v for k, v in given.items()}, strength=args.strength, image_size=image_size)
    if not args.bundle:
        return flags
    bundle = Controls.from_bundle(args.bundle, image_size=image_size)
    override = {}
    names = {"mask": "motion_mask"}
    for key, value in given.items():
        if value is not None:
            field = names.get(key, key)
            override[field] = getattr(flags, field)
    if args.strength is not None:
        override["strength"] = flags.strength
    return bundle.updated(**override)


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.enabled and done >= total:
            print(f"flowctrl flow: {stage} done", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from flowctrl.depth.plane import FlatDepthWarning
    from flowctrl.flow.io import save_flow
    from flowctrl.flow.viz import draw_controls, flow_video
    from flowctrl.pipelines.flowctrl_pipeline import resize_image, load_image, resolve_size
    from flowctrl.pipelines.stage1 import compute_unified_flow

    from flowctrl.io_safety import check_outputs, recording_inputs
    from flowctrl.render.warp_renderer import MAX_FRAMES, check_render_size

    if not args.output.strip():
        raise InputError.at("-o", None, "is an empty path", "give a flow file name, e.g. -o flow.safetensors")
    out = Path(args.output)
    if out.suffix.lower() not in FLOW_SUFFIXES:
        raise InputError.at(out, "--output", f"suffix '{out.suffix}' is not a flow format", "use .safetensors, .npy or .flo")
    if args.frames < 2:
        raise InputError.at(None, "--frames", f"is {args.frames}", "give at least 2 frames")
    if args.frames > MAX_FRAMES:
        raise InputError.at("--frames", None, f"is {args.frames}, above the limit of {MAX_FRAMES}",
                            f"give at most {MAX_FRAMES}")
    from flowctrl.video_io import FPS_RANGE

    if not FPS_RANGE[0] <= args.fps <= FPS_RANGE[1]:
        raise InputError.at(None, "--fps", f"is {args.fps}", f"give a frame rate in [{FPS_RANGE[0]:g}, {FPS_RANGE[1]:g}], e.g. 8")
    for flag, value in (("--plane-distance", args.plane_distance), ("--depth-scale", args.depth_scale)):
        if value is not None and not (math.isfinite(value) and 0 < value <= 1e6):
            raise InputError.at(flag, None, f"is {value}", "give a positive finite number (at most 1e6)")
    size = None
    if args.size:
        from flowctrl.commands.generate import parse_size

        size = parse_size(args.size)
        check_render_size(size[0], size[1], args.frames, source="--size", field=None)
    outputs = {"--output": out}
    if not args.no_viz:
        outputs["--viz"] = Path(args.viz) if args.viz else out.with_name(out.stem + "_flow.mp4")
        outputs["--overlay"] = Path(args.overlay) if args.overlay else out.with_name(out.stem + "_controls.png")
    inputs = {name: Path(v) for name, v in (("--image", args.image), ("--controls", args.bundle),
                                            *((kind.flag, getattr(args, kind.field, None)) for kind in local_control_entries()),
                                            ("--camera", args.camera), ("--ref-video", args.ref_video),
                                            ("--mask", args.mask), ("--static-mask", args.static_mask),
                                            ("--depth", args.depth)) if v}
    _check_outputs(outputs, inputs)
    if args.depth_model:
        from flowctrl.io_safety import check_safetensors_folder

        check_safetensors_folder(args.depth_model, "--depth-model")
    if "--overlay" in outputs and outputs["--overlay"].suffix.lower() != ".png":
        raise InputError.at(outputs["--overlay"], "--overlay", "is not a .png path", "give a .png file")

    with recording_inputs() as log:  # every file read, the ones named inside control files too
        image = load_image(args.image)
        image_size = tuple(image.shape[-2:])
        H, W = resolve_size(image_size, *(size if size else (None, None)))
        check_render_size(H, W, args.frames, source="--size" if size else str(args.image), field=None)
        controls = _controls(args, image_size)
        check_outputs(list(outputs.items()), inputs.values(), log=log)
    work = resize_image(image, (H, W))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FlatDepthWarning)
        uf = compute_unified_flow(work, controls, args.frames, depth_model=args.depth_model, densify=args.densify,
                                  segment=args.segment,
                                  callback=_Progress(not args.quiet), flow_method=args.flow_method,
                                  depth_kind=args.depth_kind, depth_scale=args.depth_scale,
                                  plane_distance=args.plane_distance)
    from flowctrl.pipelines.stage1 import ControlWarning
    from flowctrl.segment import SegmentFallbackWarning

    for w in caught:
        if issubclass(w.category, (FlatDepthWarning, ControlWarning, SegmentFallbackWarning)):
            print(f"flowctrl flow: warning: {cli_warning_text(w.message, w.category)}", file=sys.stderr)

    written = []
    try:
        if not args.no_viz:
            from flowctrl.video_io import write_video

            write_video(outputs["--viz"], flow_video(uf.flow), fps=args.fps)
            written.append(outputs["--viz"])
            from flowctrl.flow.viz import moving_region

            overlay = draw_controls(work[0], controls.resized(H, W) if controls.image_size else controls, flow=uf.flow,
                                    num_frames=args.frames, moving=moving_region(uf.local_flow[0]))
            _write_png(outputs["--overlay"], overlay)
            written.append(outputs["--overlay"])
        extras = _extras(uf, args.all_tensors)
        meta = {"frames": str(args.frames), "height": str(H), "width": str(W), "image": str(args.image),
                "motion_strength": f"{uf.motion_strength():.6g}", "strength_scale": f"{uf.strength_scale:.6g}"}
        save_flow(out, uf.flow, extras=extras if out.suffix.lower() == ".safetensors" else None, metadata=meta)
    except BaseException:
        for path in written:  # no partial result set
            path.unlink(missing_ok=True)
        raise
    if not args.quiet:
        ms = uf.motion_strength()
        print(f"flowctrl flow: wrote {out} ({args.frames}x{H}x{W}, M_s {ms:.3g} px/frame)"
              + (f", {outputs['--viz']}, {outputs['--overlay']}" if not args.no_viz else ""), file=sys.stderr)
    return 0


BASIC_EXTRAS = ("valid", "local_mask", "depth", "K", "K_frames", "w2c")
MASKS = ("valid", "local_mask", "sparse_mask")


def _extras(uf: Any, everything: bool) -> Dict[str, Any]:
    """Tensors saved beside the flow; masks as uint8 (the full set is ~4x the flow's size)."""
    import torch

    out = {}
    for name, value in uf.tensors().items():
        if name == "flow" or (not everything and name not in BASIC_EXTRAS):
            continue
        out[name] = (value > 0.5).to(torch.uint8) if name in MASKS else value
    return out


def _write_png(path: Path, image_chw: Any) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from flowctrl.io_safety import atomic_path

    arr = (image_chw.detach().clamp(0, 1) * 255 + 0.5).to(dtype=torch.uint8).permute(1, 2, 0).cpu().numpy()
    with atomic_path(path, flag="--overlay", suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
