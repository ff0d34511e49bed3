"""``flowctrl bench camera|reconstruct``: the camera-accuracy and reconstruction benchmarks.

    flowctrl bench camera --suite basic difficult re10k --re10k ../shared/data/re10k --trials 3
    # -> outputs/bench/camera/{results.json,results.md,paths.png}
    flowctrl bench reconstruct --re10k ../shared/data/re10k
    # -> outputs/bench/reconstruct/{results.json,results.md}
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, List, Optional

from flowctrl.errors import InputError

HELP = "run a benchmark (camera accuracy with pycolmap, reconstruction of real clips) and write tables"


def _default_re10k() -> Optional[str]:
    for candidate in (Path("../shared/data/re10k"), Path(__file__).resolve().parents[3] / "shared/data/re10k"):
        if candidate.is_dir():
            return str(candidate)
    return None


def register(subparsers: Any) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "bench", help=HELP, description=HELP, formatter_class=raw,
        epilog="examples:\n"
               "  flowctrl bench camera --suite re10k --re10k ../shared/data/re10k --trials 3\n"
               "  flowctrl bench camera --suite basic difficult --size 192\n"
               "  flowctrl bench reconstruct --re10k ../shared/data/re10k")
    sub = p.add_subparsers(dest="bench", required=True, metavar="{camera,reconstruct}")
    cam = sub.add_parser("camera", help="oracle vs generated RotErr/TransErr/CamMC + failure rate",
                         description="For each trajectory of the suites, render with a backend, estimate poses "
                                     "with COLMAP (intrinsics fixed) and compare with the requested path; the oracle "
                                     "row runs the same estimator on the ground-truth video.",
                         formatter_class=raw,
                         epilog="example:\n  flowctrl bench camera --suite re10k --re10k ../shared/data/re10k --trials 3 "
                                "-o outputs/bench/camera_re10k")
    cam.add_argument("--suite", nargs="+", default=["basic", "difficult", "re10k"],
                     choices=["basic", "difficult", "re10k"], help="trajectory suites (default: all)")
    cam.add_argument("--backend", default="warp", help="stage-2 backend for the generated row: warp | diffusion | none")
    cam.add_argument("--re10k", default=None, help="folder of RealEstate10K <id>.mp4 + <id>.txt (default ../shared/data/re10k)")
    cam.add_argument("--trials", type=int, default=3, help="COLMAP runs per video (default 3)")
    cam.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    cam.add_argument("--size", type=int, default=256, help="frame height; synthetic scenes are square (default 256)")
    cam.add_argument("--matcher", default="sequential", choices=["sequential", "exhaustive"])
    cam.add_argument("--plane-distance", type=float, default=None,
                     help="depth of the plane used for real clips (their SfM scale is arbitrary); "
                          "default: fitted per clip to the clip's measured flow")
    cam.add_argument("--seed", type=int, default=0)
    cam.add_argument("-o", "--output", default="outputs/bench/camera", help="output folder")
    cam.set_defaults(func=run)
    rec = sub.add_parser("reconstruct", help="Table 2 protocol: PSNR/SSIM(/LPIPS) of animated real clips",
                         description="Animate frame 0 of each real clip with the flow estimated from the clip and "
                                     "with its camera trajectory; compare every frame with the real one.",
                         formatter_class=raw,
                         epilog="example:\n  flowctrl bench reconstruct --re10k ../shared/data/re10k -o outputs/bench/reconstruct")
    rec.add_argument("--re10k", default=None, help="folder of RealEstate10K <id>.mp4 + <id>.txt (default ../shared/data/re10k)")
    rec.add_argument("--frames", type=int, default=16)
    rec.add_argument("--size", type=int, nargs=2, default=[256, 384], metavar=("H", "W"))
    rec.add_argument("--plane-distance", type=float, default=None,
                     help="plane depth for the camera control (default: fitted per clip to its flow)")
    rec.add_argument("--lpips", default=None, help="TorchScript LPIPS model (optional)")
    rec.add_argument("-o", "--output", default="outputs/bench/reconstruct", help="output folder")
    rec.set_defaults(func=run)


def _re10k(args: argparse.Namespace, needed: bool) -> Optional[str]:
    folder = args.re10k or _default_re10k()
    if needed and (folder is None or not Path(folder).is_dir()):
        raise InputError.at(args.re10k, "--re10k", "RealEstate10K folder not found",
                            "pass --re10k DIR holding <id>.mp4 + <id>.txt")
    return folder


def _check_output(args: argparse.Namespace, inputs: List[Optional[str]]) -> None:
    out = Path(args.output).resolve()
    if not args.output.strip():
        raise InputError.at("--output", None, "is an empty path", "give an output folder")
    if out.exists() and not out.is_dir():
        raise InputError.at(args.output, "--output", "exists and is not a folder", "give a folder for the result tables")
    for folder in inputs:
        if folder is not None and out == Path(folder).resolve():
            raise InputError.at(args.output, "--output", "is an input folder", "choose another output folder")
    lpips = getattr(args, "lpips", None)  # a model file: the result tables may not land on it
    if lpips and Path(lpips).resolve() in (out / "results.json", out / "results.md", out / "paths.png"):
        raise InputError.at(args.output, "--output", f"would overwrite the input {lpips}", "choose another output folder")


def _check_numbers(args: argparse.Namespace) -> None:
    """Frames, sizes, trials and the plane distance in finite, sane ranges (one line each)."""
    import math

    sizes = args.size if isinstance(args.size, list) else [args.size]
    checks = [("--frames", args.frames, 3, 1024), ("--trials", getattr(args, "trials", 1), 1, 100)]
    checks += [("--size", s, 16, 2048) for s in sizes]
    for flag, value, low, high in checks:
        if not low <= value <= high:
            raise InputError.at(flag, None, f"is {value}", f"give {low} to {high}")
    if args.plane_distance is not None and not (math.isfinite(args.plane_distance) and 0 < args.plane_distance <= 1e6):
        raise InputError.at("--plane-distance", None, f"is {args.plane_distance}", "give a positive distance (at most 1e6)")


def run(args: argparse.Namespace) -> int:
    from flowctrl.eval import bench

    _check_numbers(args)
    if args.bench == "camera":
        if args.trials < 1 or args.frames < 3:
            raise InputError.at(None, "--trials/--frames", f"are {args.trials}/{args.frames}",
                                "give at least 1 trial and 3 frames")
        folder = _re10k(args, "re10k" in args.suite)
        _check_output(args, [folder])
        backend = None if args.backend.lower() == "none" else args.backend
        bench.run_camera_bench(suites=tuple(args.suite), backend=backend, trials=args.trials, out_dir=args.output,
                               re10k_dir=folder, num_frames=args.frames, size=args.size, matcher=args.matcher,
                               seed=args.seed, plane_distance=args.plane_distance)
    else:
        folder = _re10k(args, True)
        _check_output(args, [folder])
        bench.run_reconstruct_bench(folder, out_dir=args.output, num_frames=args.frames, height=args.size[0],
                                    width=args.size[1], plane_distance=args.plane_distance, lpips_path=args.lpips)
    return 0
