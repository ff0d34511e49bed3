"""``flowctrl prepare-data VIDEO_DIR -o SHARDS``: real videos → training shards (frames, reference-form
flow, optional camera poses and captions). Streaming (one video in memory), resumable (videos listed in
SHARDS/manifest.jsonl are skipped), a progress bar; undecodable videos are reported and skipped.

examples:
  flowctrl prepare-data videos/ -o shards/ --num-frames 16 --size 64x64
  flowctrl prepare-data videos/ -o shards/ --clips-per-video 4 --stride 2 --poses --captions captions.json
"""
from __future__ import annotations

import argparse


def _size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW (e.g. 64x64)") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"{text!r} is smaller than 16x16")
    if h > 4096 or w > 4096:
        raise argparse.ArgumentTypeError(f"{text!r} is larger than 4096x4096")
    return h, w


def register(subparsers) -> None:
    p = subparsers.add_parser("prepare-data", help="turn a folder of videos into training shards",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video_dir", metavar="VIDEO_DIR", help="folder of videos (.mp4 .mov .avi .mkv .webm .gif)")
    p.add_argument("-o", "--output", required=True, metavar="SHARDS", help="output folder (created; resumable)")
    p.add_argument("--num-frames", type=int, default=16, help="frames per clip (default 16)")
    p.add_argument("--size", type=_size, default=(64, 64), metavar="HxW", help="clip size, centre-cropped (default 64x64)")
    p.add_argument("--stride", type=int, default=1, help="keep every n-th frame (default 1)")
    p.add_argument("--clips-per-video", type=int, default=1, help="consecutive clips cut from each video (default 1)")
    p.add_argument("--flow", choices=("dis", "raft"), default="dis", help="flow estimator (default dis)")
    p.add_argument("--poses", action="store_true", help="estimate camera poses with pycolmap (slow)")
    p.add_argument("--fov", type=float, default=60.0, help="horizontal field of view for K, degrees (default 60)")
    p.add_argument("--captions", default=None, help='JSON {"video.mp4": "caption"}; also read: video.txt beside a video')
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowctrl.errors import InputError
    from flowctrl.train.shards import prepare_shards

    if not 2 <= args.num_frames <= 1024:
        raise InputError.at(None, "--num-frames", f"is {args.num_frames}", "give 2 to 1024")
    for flag, value in (("--stride", args.stride), ("--clips-per-video", args.clips_per_video)):
        if not 1 <= value <= 1000:
            raise InputError.at(None, flag, f"is {value}", "give 1 to 1000")
    if not 1.0 <= args.fov <= 179.0:
        raise InputError.at(None, "--fov", f"is {args.fov}", "give a horizontal field of view in [1, 179] degrees")
    pose_estimator = None
    if args.poses:
        try:
            from flowctrl.eval.camera import estimate_poses as pose_estimator
        except ImportError as err:
            raise InputError.at(None, "--poses", f"camera-pose estimation is unavailable ({err})",
                                "install pycolmap and the eval extras, or drop --poses") from None
    counts = prepare_shards(args.video_dir, args.output, num_frames=args.num_frames, size=args.size,
                            stride=args.stride, clips_per_video=args.clips_per_video, flow_method=args.flow,
                            pose_estimator=pose_estimator, fov_deg=args.fov, captions=args.captions,
                            progress=not args.no_progress)
    print(f"prepare-data: {counts['ok']} video(s) → {counts['clips']} clip(s) in {args.output}; "
          f"{counts['failed']} failed, {counts['skipped']} already done")
    return 0
