"""Benchmark: GIF encoding of the quick start's side-by-side video, old vs new, on this machine's CPU.

Goal (issue 20): ``flowctrl generate --image examples/astronaut.png --camera configs/camera/orbit.json
--arrows examples/a.json --side-by-side --gif -o out.mp4`` wrote its GIF (49 frames of 1536x512) in
19.6-27.8 s and 15.9 MB; the goal is <= 3 s and about half the size.

    python benchmarks/bench_gif.py                  # best of 2 runs per encoder
    python benchmarks/bench_gif.py --repeats 3 --json out.json

Renders the side-by-side frames once (as ``flowctrl generate --side-by-side`` does), then encodes them
with three GIF writers and prints seconds, MB and PSNR against the frames:

- ``old``: Pillow with a palette per frame (median cut on every frame, Pillow's default dithering);
  the writer of ``flowctrl.video_io`` before issue 20, copied here as the baseline.
- ``ffmpeg``: FFmpeg's palettegen (stats_mode=diff) + paletteuse (bayer dither, diff_mode=rectangle)
  through PyAV's filter graph, the classic high-quality GIF recipe.
- ``new``: ``flowctrl.video_io.write_video`` today: one median-cut palette for the clip (8 frames at
  half resolution), no dithering; Pillow stores only the changed rectangle of each frame.

Nothing here is asserted; tests never time anything.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def quickstart_side_by_side(frames: int = 49) -> np.ndarray:
    """``(T, 512, 1536, 3)`` uint8: the quick start's input+controls | flow colours | result."""
    import torch

    from flowctrl import FlowCtrlPipeline
    from flowctrl.commands.generate import side_by_side
    from flowctrl.controls import Controls
    from flowctrl.pipelines.flowctrl_pipeline import resize_image, load_image, resolve_size
    from flowctrl.video_io import to_uint8_frames

    image = load_image(REPO / "examples/astronaut.png")
    H, W = resolve_size(tuple(image.shape[-2:]), None, None)
    controls = Controls.from_files(image_size=tuple(image.shape[-2:]), camera=str(REPO / "configs/camera/orbit.json"),
                                   arrows=str(REPO / "examples/a.json"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the flat-depth note
        out = FlowCtrlPipeline()(image, controls=controls, num_frames=frames, height=H, width=W,
                                 generator=torch.Generator().manual_seed(0))
    video = side_by_side(resize_image(image, (H, W)), controls.resized(H, W), out.flow, out.video[0])
    return to_uint8_frames(video)


def old_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    """The writer before issue 20: Pillow quantizes every frame to its own palette."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    duration = max(int(round(1000.0 / fps)), 10)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0,
                   optimize=False)


def ffmpeg_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    """FFmpeg palettegen + paletteuse through a PyAV filter graph, encoded by FFmpeg's gif encoder."""
    import av

    T, H, W, _ = frames.shape
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format="gif") as out:
        stream = out.add_stream("gif", rate=rate)
        stream.width, stream.height, stream.pix_fmt = W, H, "pal8"
        graph = av.filter.Graph()
        src = graph.add_buffer(width=W, height=H, format="rgb24", time_base=1 / rate)
        split, sink = graph.add("split"), graph.add("buffersink")
        gen = graph.add("palettegen", "stats_mode=diff")
        use = graph.add("paletteuse", "dither=bayer:bayer_scale=5:diff_mode=rectangle")
        src.link_to(split)
        split.link_to(gen, 0, 0)
        split.link_to(use, 1, 0)
        gen.link_to(use, 0, 1)
        use.link_to(sink)
        graph.configure()
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            graph.vpush(frame)
        graph.vpush(None)
        n = 0
        while True:
            try:
                frame = graph.vpull()
            except (av.error.BlockingIOError, av.error.EOFError, EOFError):
                break
            frame.pts, frame.time_base = n, 1 / rate
            n += 1
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def new_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    from flowctrl.video_io import write_video

    write_video(path, frames, fps=fps)


def psnr(path: Path, frames: np.ndarray) -> float:
    from flowctrl.video_io import read_video

    decoded = read_video(path).astype(np.float64)
    mse = float(((decoded - frames.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=2, help="runs per encoder; the best is shown")
    parser.add_argument("--skip-old", action="store_true", help="skip the slow baseline")
    parser.add_argument("--json", help="also write the table as JSON")
    args = parser.parse_args()

    t0 = time.perf_counter()
    frames = quickstart_side_by_side(args.frames)
    print(f"rendered {frames.shape[0]} side-by-side frames {frames.shape[2]}x{frames.shape[1]} "
          f"in {time.perf_counter() - t0:.1f} s; torch threads {__import__('torch').get_num_threads()}, "
          f"{os.cpu_count()} CPUs")
    writers: Dict[str, Callable[[Path, np.ndarray, float], None]] = {"old": old_gif, "ffmpeg": ffmpeg_gif,
                                                                     "new": new_gif}
    if args.skip_old:
        writers.pop("old")
    rows: List[Dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, write in writers.items():
            path = Path(tmp) / f"{name}.gif"
            times = []
            for _ in range(args.repeats):
                if path.exists():
                    path.unlink()
                start = time.perf_counter()
                write(path, frames, args.fps)
                times.append(time.perf_counter() - start)
            rows.append({"encoder": name, "seconds": min(times), "MB": path.stat().st_size / 1e6,
                         "psnr_db": psnr(path, frames)})
    print("\n| encoder | seconds | MB | PSNR dB |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['encoder']} | {r['seconds']:.2f} | {r['MB']:.2f} | {r['psnr_db']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
