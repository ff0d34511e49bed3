"""RealEstate10K with default settings: the scene size chosen from the camera file alone.

    python benchmarks/bench_camera_default.py --re10k ../shared/data/re10k [--camera --trials 1]

Table 1: per clip, the path length L and forward travel of the (arbitrary-unit) trajectory, the plane
distance fitted to the clip's measured flow (what ``flowctrl bench`` uses as its "fitted" row, which a
user does not have), and the distance :mod:`flowctrl.depth.scale` picks from the file alone
(``max(2 L, 1.5 forward)`` for the plane). Table 2: reconstruction PSNR/SSIM of the camera control,
fitted vs default (``flowctrl bench reconstruct``). With ``--camera``: registration failures and
RotErr/TransErr of oracle / fitted / default rows (``flowctrl bench camera --suite re10k``; needs pycolmap).
"""
import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

from flowctrl.depth.scale import PATH_RATIO, path_extent, plane_distance_for
from flowctrl.eval import bench


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--re10k", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "re10k"))
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--camera", action="store_true", help="also run the COLMAP camera benchmark (slow)")
    p.add_argument("--trials", type=int, default=1)
    p.add_argument("-o", "--output", default="outputs/bench/camera_default")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="no depth given")  # the plane fallback, once per render
    cases = bench.re10k_cases(args.re10k, args.frames, 256, 384)
    print("| clip | path L | forward | fitted plane | rule plane | fitted / L |")
    print("|---|---:|---:|---:|---:|---:|")
    ratios = []
    for case in cases:
        length, forward = path_extent(case.w2c)
        fitted = bench.fit_plane_distance(case.video, case.K, case.w2c)
        ratios.append(fitted / length)
        print(f"| {case.name} | {length:.3f} | {forward:.3f} | {fitted:.3f} | {plane_distance_for(case.w2c):.3f} | "
              f"{fitted / length:.2f} |")
    print(f"\nmedian fitted / L = {statistics.median(ratios):.2f} (rule: PATH_RATIO = {PATH_RATIO})\n")
    t0 = time.perf_counter()
    bench.run_reconstruct_bench(args.re10k, out_dir=Path(args.output) / "reconstruct", num_frames=args.frames)
    print(f"\nreconstruct: {time.perf_counter() - t0:.0f} s")
    if args.camera:
        bench.run_camera_bench(suites=("re10k",), backend="warp", trials=args.trials,
                               out_dir=Path(args.output) / "camera", re10k_dir=args.re10k, num_frames=args.frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
