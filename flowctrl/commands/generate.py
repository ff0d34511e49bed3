"""``flowctrl generate``: animate one image with motion controls and write a video.

Everything the user can get wrong is checked before any work starts; a bad input prints one line
and exits 2 without creating any output file. Outputs are written atomically (temp + rename), and if
a later output fails the earlier ones of the same run are removed again.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from flowctrl.errors import InputError, MissingWeightsError

EXAMPLE = """\
examples:
  # camera orbit + the example arrows, 49 frames at 8 fps (about a second on a laptop CPU)
  flowctrl generate --image examples/astronaut.png --camera configs/camera/orbit.json \\
      --arrows examples/a.json -o out.mp4
  # a camera preset with parameters, a side-by-side comparison video and a GIF next to it
  flowctrl generate --image photo.jpg --camera orbit:degrees=20 --side-by-side --gif -o orbit.mp4
  # only check how the controls land on the image (writes out.png, nothing else)
  flowctrl generate --image examples/astronaut.png --arrows examples/a.json --preview -o out.png

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
    c.add_argument("--depth-model", metavar="PATH|HUB_ID",
                   help="local Depth-Anything weights used when a camera control has no --depth")
    c.add_argument("--strength", type=float, metavar="S", help="target motion strength M_s in px/frame")
    o = p.add_argument_group("rendering")
    o.add_argument("--frames", type=int, default=49, help="number of frames T >= 2 (default 49)")
    o.add_argument("--fps", type=float, default=8.0, help="frames per second of the output (default 8)")
    o.add_argument("--size", metavar="WxH",
                   help="working size, e.g. 512x512 (default: the image's, long side <= 512, multiples of 8)")
    o.add_argument("--backend", default="warp", choices=["warp", "diffusion"],
                   help="warp: softmax splatting, no weights (default); diffusion: learned renderer (--model)")
    o.add_argument("--model", metavar="PATH|HUB_ID", help="weights of the diffusion backend (local folder)")
    o.add_argument("--flow-model", metavar="PATH|HUB_ID", help="learned stage-1 flow model weights (optional)")
    o.add_argument("--prompt", default=None, help="text prompt (diffusion backend only)")
    o.add_argument("--fill", default="push-pull", choices=["push-pull", "inpaint", "none"],
                   help="hole filling of the warp backend (default push-pull; none shows holes black)")
    o.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same video")
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
    w.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
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


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _check_output(path: Path, flag: str, inputs: Dict[str, Path], kinds: Tuple[str, ...]) -> None:
    from flowctrl.video_io import output_kind

    text = str(path)
    parent = Path(text.rstrip("/" + os.sep)).parent
    if not parent.is_dir():
        raise InputError.at(text, flag, f"folder '{parent}' does not exist", "create it first or choose another path")
    kind = output_kind(path) if "video" in kinds else kinds[0]
    if kind == "png_dir" and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InputError.at(text, flag, "already exists and is not an empty folder", "give a new folder")
    for name, src in inputs.items():
        if _same_file(Path(text.rstrip("/" + os.sep)), src):
            raise InputError.at(text, flag, f"is the same file as the input {name}",
                                "choose an output path that is not an input")


def _validate(args: argparse.Namespace) -> Dict[str, Any]:
    """All checks that need no rendering; returns the resolved plan."""
    from flowctrl.render.warp_renderer import MAX_FRAMES, check_render_size
    from flowctrl.video_io import output_kind

    if args.frames < 2:
        raise InputError.at("--frames", None, f"is {args.frames}", "give at least 2 frames (default 49)")
    if args.frames > MAX_FRAMES:
        raise InputError.at("--frames", None, f"is {args.frames}, above the limit of {MAX_FRAMES}",
                            f"give at most {MAX_FRAMES}")
    if not args.fps > 0:
        raise InputError.at("--fps", None, f"is {args.fps}", "give a positive frame rate, e.g. 8")
    size = parse_size(args.size)
    if size is not None:
        check_render_size(size[0], size[1], args.frames, source="--size", field=None)
    if args.model and args.backend != "diffusion":
        raise InputError.at("--model", None, "is only used by the diffusion backend", "add --backend diffusion")
    if args.backend == "diffusion" and not args.model:
        raise MissingWeightsError.at("--backend diffusion", "--model", "no weights given",
                                     "pass --model PATH (a local folder) or use --backend warp")

    image_path = Path(args.image)
    from flowctrl.pipelines.flowctrl_pipeline import load_image

    image = load_image(image_path)  # missing / corrupt -> InputError naming the file
    h0, w0 = image.shape[-2:]
    from flowctrl.pipelines.flowctrl_pipeline import resolve_size

    H, W = resolve_size((h0, w0), *(size if size is not None else (None, None)))
    check_render_size(H, W, args.frames, source="--size" if size is not None else str(image_path),
                      field=None if size is not None else "size")

    inputs = {"--image": image_path}
    for flag in ("controls", "camera", "arrows", "drags", "ref_video", "pose", "mask", "static_mask", "depth",
                 "model", "flow_model", "depth_model"):
        value = getattr(args, flag)
        if value and Path(value).exists():
            inputs["--" + flag.replace("_", "-")] = Path(value)

    output = Path(args.output)
    plan: Dict[str, Any] = {"image": image, "image_path": image_path, "size": (H, W), "outputs": []}
    if args.preview:
        preview = output if output.suffix.lower() == ".png" else output.with_suffix(".png")
        _check_output(preview, "-o", inputs, ("png",))
        plan["preview"] = preview
    else:
        output_kind(args.output)  # unsupported suffix -> InputError
        _check_output(Path(args.output), "-o", inputs, ("video",))
        plan["outputs"].append(("-o", Path(args.output)))
        if args.gif is not None:
            gif = Path(args.gif) if args.gif else output.with_suffix(".gif")
            if gif.suffix.lower() != ".gif":
                raise InputError.at(str(gif), "--gif", "does not end with .gif", "give a .gif path")
            _check_output(gif, "--gif", inputs, ("video",))
            plan["outputs"].append(("--gif", gif))
        if args.png_dir:
            _check_output(Path(args.png_dir), "--png-dir", inputs, ("png_dir",))
            plan["outputs"].append(("--png-dir", Path(args.png_dir)))
        if args.save_flow:
            flow_path = Path(args.save_flow)
            if flow_path.suffix.lower() not in (".safetensors", ".npy", ".flo"):
                raise InputError.at(str(flow_path), "--save-flow", f"unsupported suffix '{flow_path.suffix}'",
                                    "use .safetensors, .npy or .flo")
            _check_output(flow_path, "--save-flow", inputs, ("file",))
            plan["outputs"].append(("--save-flow", flow_path))
        targets = [str(p.resolve()) for _, p in plan["outputs"]]
        if len(set(targets)) != len(targets):
            raise InputError.at(args.output, None, "two outputs share one path", "give each output its own path")

    from flowctrl.controls import Controls

    explicit = dict(arrows=args.arrows, drags=args.drags, camera=args.camera, ref_video=args.ref_video,
                    pose=args.pose, mask=args.mask, static_mask=args.static_mask, depth=args.depth,
                    strength=args.strength)
    controls = Controls.from_files(image_size=(h0, w0), **explicit)  # bad files -> ControlFileError
    if args.controls:
        bundle = Controls.from_bundle(args.controls, image_size=(h0, w0))
        overrides = {field: getattr(controls, field) for field in (
            "arrows", "drags", "camera", "ref_video", "pose", "motion_mask", "static_mask", "depth", "strength")
            if getattr(controls, field) not in (None, [])}
        import dataclasses

        controls = dataclasses.replace(bundle, **overrides)
    plan["controls"] = controls
    return plan


# --------------------------------------------------------------------------- progress


class StageProgress:
    """``callback(stage, done, total)`` that shows one tqdm bar per stage on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: Dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            import shutil

            width = min(100, shutil.get_terminal_size((80, 24)).columns or 80)
            bar = self.bars[stage] = tqdm(total=total, desc=f"{stage:>10}", unit="frame" if total > 1 else "step",
                                          file=sys.stderr, leave=True, ncols=width)
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


# --------------------------------------------------------------------------- run


def side_by_side(image: Any, controls: Any, flow: Any, video: Any) -> Any:
    """``(T, 3, H, 3W)``: input with the controls drawn | flow colours (one scale) | result."""
    import torch

    from flowctrl.flow.viz import draw_controls, flow_video

    T, _, H, W = video.shape
    overlay = draw_controls(image[0], controls, num_frames=T)[:, :H, :W]
    colors = flow_video(flow)  # (T,3,H,W)
    return torch.cat([overlay[None].expand(T, -1, -1, -1), colors.to(video.dtype), video], dim=3)


def _write_png(path: Path, image_chw: Any) -> None:
    import tempfile

    from PIL import Image

    from flowctrl.video_io import to_uint8_frames

    frame = to_uint8_frames(image_chw[None])[0]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(frame).save(tmp, format="PNG")
        from flowctrl.video_io import _umask

        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def run(args: argparse.Namespace) -> int:
    import warnings

    with warnings.catch_warnings():
        # Library warnings (e.g. "no depth given: using a plane") as one plain line each.
        def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            print(f"flowctrl generate: warning: {' '.join(str(message).split())}", file=sys.stderr)

        warnings.showwarning = show
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    plan = _validate(args)
    import torch

    from flowctrl.pipelines.flowctrl_pipeline import FlowCtrlPipeline

    H, W = plan["size"]
    controls = plan["controls"]
    if args.preview:
        from flowctrl.flow.viz import draw_controls
        from flowctrl.pipelines.flowctrl_pipeline import _resize_image

        image = _resize_image(plan["image"], (H, W))
        _write_png(plan["preview"], draw_controls(image[0], controls.resized(H, W), num_frames=args.frames))
        if not args.quiet:
            print(f"wrote {plan['preview']}", file=sys.stderr)
        return 0

    if args.backend == "diffusion":
        pipe = FlowCtrlPipeline.from_pretrained(args.model, flow_model=args.flow_model)
    else:
        pipe = FlowCtrlPipeline(backend="warp", flow_model=args.flow_model, fill=args.fill)
    progress = StageProgress(enabled=not args.quiet and sys.stderr.isatty())
    generator = torch.Generator().manual_seed(args.seed)
    render_kwargs: Dict[str, Any] = {}
    if args.prompt is not None:
        render_kwargs["prompt"] = args.prompt
    t0 = time.perf_counter()
    try:
        out = pipe(plan["image"], controls=controls, num_frames=args.frames, height=H, width=W,
                   generator=generator, callback=progress, depth_model=args.depth_model, **render_kwargs)
        video = out.frames  # (T,H,W,3) uint8, converted once
        if args.side_by_side:
            from flowctrl.pipelines.flowctrl_pipeline import _resize_image

            image = _resize_image(plan["image"], (H, W))
            video = side_by_side(image, controls.resized(H, W), out.flow, out.video[0])
        written: List[Path] = []
        try:
            for flag, path in plan["outputs"]:
                if flag == "--save-flow":
                    from flowctrl.flow.io import save_flow

                    save_flow(path, out.flow)
                elif flag == "--png-dir":
                    from flowctrl.video_io import write_video

                    write_video(str(path).rstrip("/" + os.sep) + os.sep, video, fps=args.fps)
                else:
                    from flowctrl.video_io import write_video

                    write_video(path, video, fps=args.fps)
                written.append(path)
                progress("encode", len(written), len(plan["outputs"]))
        except BaseException:
            for path in written:  # no partial set of outputs
                if path.is_dir():
                    import shutil

                    shutil.rmtree(path, ignore_errors=True)
                elif path.exists():
                    path.unlink()
            raise
    finally:
        progress.close()
    if not args.quiet:
        names = ", ".join(str(p) for _, p in plan["outputs"])
        print(f"wrote {names} ({args.frames} frames {W}x{H}, {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0
