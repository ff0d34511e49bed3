"""Writing rendered videos: mp4 (H.264 via PyAV), animated GIF, or a folder of PNG frames.

Every writer is atomic: frames go to a temporary file (or folder) beside the target, which is renamed
into place only once it is complete, so an interrupted or failed run never leaves a partial output.

The format follows the path::

    write_video("out.mp4", video)      # H.264, yuv420p, libx264 "ultrafast", crf 18, mbtree=0, 2 sliced threads
    write_video("out.gif", video)      # GIF with one palette for the clip (Pillow), frame duration 1000/fps ms
    write_video("frames/", video)      # frames/00000.png, frames/00001.png, ...  (a path without suffix too)
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from flowctrl.errors import InputError
from flowctrl.io_safety import current_umask
from flowctrl_cuda import to_uint8_hwc

PathLike = Union[str, "os.PathLike[str]"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
GIF_SUFFIXES = (".gif",)
PNG_SUFFIXES = (".png",)
# The accepted outputs in words, for error messages and --help alike (so they cannot disagree).
OUTPUT_TYPES_TEXT = f"{'/'.join(VIDEO_SUFFIXES)} (H.264), .gif, or a folder path (PNG frames)"

# H.264 settings: "veryfast" keeps encode well under the render time at 512x512 while staying far
# smaller than "ultrafast"; crf 18 is visually lossless for smooth warped content.
# "ultrafast": 49 frames at 512x512 encode in ~0.2 s of one core (veryfast ~0.6 s, superfast ~0.4 s)
# for files ~3x larger than veryfast (~1.4 MB for the bundled example); crf 18 keeps the quality.
H264_PRESET = "ultrafast"
# Frame rates a video may have: a GIF frame lasts at most 65535 centiseconds (fps >= 0.0016), and
# nothing plays faster than a few hundred frames per second.
FPS_RANGE = (0.01, 1000.0)
H264_CRF = 18
# Reproducible bitstreams: with macroblock-tree rate control on, libx264 produced one of two different
# streams for identical frames in separate processes (2 of 10 runs of `flowctrl generate`); with
# mbtree=0 and one thread, 12 of 12 runs were byte-identical. At 512x512 on 2 cores neither option
# costs measurable time; mbtree=0 makes files a few percent larger at the same crf.
# Sliced threads (each frame cut into a fixed 2 slices, one per thread, no frame-level lookahead
# threads) keep the output a function of the frames alone: 16 of 16 separate-process encodes
# byte-identical, ~10 % less wall time than one thread on 2 cores (docs/render.md, Speed).
H264_EXTRA_OPTIONS = {"threads": "2", "x264-params": "mbtree=0:sliced-threads=1"}


def output_kind(path: PathLike) -> str:
    """Which writer a path selects: ``"mp4"`` (any of .mp4/.mov/.mkv), ``"gif"`` or ``"png_dir"``.

    A path that ends with a separator, has no suffix, or is an existing folder is a PNG folder.
    Other suffixes raise :class:`InputError`.
    """
    text = os.fspath(path)
    p = Path(text)
    if text.endswith(("/", os.sep)) or p.is_dir() or p.suffix == "":
        return "png_dir"
    suffix = p.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "mp4"
    if suffix in GIF_SUFFIXES:
        return "gif"
    raise InputError.at(
        text, None, f"unsupported output type '{p.suffix}'",
        f"use {OUTPUT_TYPES_TEXT}",
    )


def to_uint8_frames(video: Union[torch.Tensor, np.ndarray, Sequence[np.ndarray]]) -> np.ndarray:
    """Convert a video to ``(T, H, W, 3)`` uint8.

    Accepts a float tensor/array ``(T,3,H,W)`` or ``(1,T,3,H,W)`` in [0, 1] (values are clamped), or
    uint8 frames ``(T,H,W,3)`` (array or list of arrays), returned as-is.
    """
    if isinstance(video, (list, tuple)):
        video = np.stack([np.asarray(f) for f in video])
    if isinstance(video, np.ndarray) and video.dtype == np.uint8:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise InputError.at(None, "video", f"uint8 frames have shape {video.shape}", "give (T, H, W, 3)")
        return np.ascontiguousarray(video)
    tensor = torch.as_tensor(video)
    if tensor.ndim == 5:
        if tensor.shape[0] != 1:
            raise InputError.at(None, "video", f"batch of {tensor.shape[0]} videos", "write one video at a time")
        tensor = tensor[0]
    if tensor.ndim != 4 or tensor.shape[1] != 3:
        raise InputError.at(None, "video", f"has shape {tuple(tensor.shape)}", "give (T, 3, H, W) floats in [0, 1]")
    # float32 CPU frames: the steps of flowctrl_cuda.reference.to_uint8_hwc fused into one C++ pass
    return to_uint8_hwc(tensor.detach()).cpu().numpy()


def write_video(path: PathLike, video: Union[torch.Tensor, np.ndarray], fps: float = 8,
                preset: Optional[str] = None, crf: Optional[int] = None) -> Path:
    """Write ``video`` to ``path`` atomically and return the final path.

    Args:
        path: target; its suffix picks the format (see :func:`output_kind`).
        video: ``(T,3,H,W)`` (or ``(1,T,3,H,W)``) float in [0, 1], or ``(T,H,W,3)`` uint8; T >= 1.
        fps: frames per second (mp4 time base, GIF frame duration). PNG folders ignore it.
        preset, crf: libx264 speed preset and constant rate factor for mp4 (default ``H264_PRESET``
            "ultrafast" and ``H264_CRF`` 18; e.g. ``preset="veryfast"`` for ~3x smaller files).

    H.264 with yuv420p needs even sizes: an odd height/width is padded by repeating the last
    row/column (the decoded video is then one pixel larger on that side).
    """
    frames = to_uint8_frames(video)
    with VideoWriter(path, fps=fps, preset=preset, crf=crf) as writer:
        writer.write(frames)
    return writer.path


class VideoWriter:
    """Write a video a few frames at a time, atomically: :func:`write_video` for frames that arrive in chunks.

    ::

        with VideoWriter("out.mp4", fps=8) as writer:
            for chunk in chunks:          # (n, H, W, 3) uint8, or (n, 3, H, W) float in [0, 1]
                writer.write(chunk)
        # out.mp4 exists only now; an exception inside the block leaves no file behind

    mp4 frames are encoded as they arrive (H.264 settings as :func:`write_video`, so the same frames
    give the same bytes however they are chunked); PNG frames are written as they arrive into a
    temporary folder; a GIF is assembled when the writer closes. The target is checked when the
    writer is created (unsupported suffix, missing folder: :class:`InputError`).
    """

    def __init__(self, path: PathLike, fps: float = 8, preset: Optional[str] = None, crf: Optional[int] = None) -> None:
        if not (isinstance(fps, (int, float)) and FPS_RANGE[0] <= fps <= FPS_RANGE[1]):
            raise InputError.at(None, "fps", f"is {fps}", f"give a frame rate in [{FPS_RANGE[0]:g}, {FPS_RANGE[1]:g}], e.g. 8")
        self.kind = output_kind(path)
        self.path = Path(os.fspath(path).rstrip("/" + os.sep) or os.fspath(path))
        self.fps = fps
        self.preset = preset or H264_PRESET
        self.crf = H264_CRF if crf is None else int(crf)
        self.parent = self.path.parent if str(self.path.parent) else Path(".")
        if not self.parent.is_dir():
            raise InputError.at(str(path), None, f"folder '{self.parent}' does not exist",
                                "create it or choose another output path")
        if self.kind == "png_dir" and self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise InputError.at(str(self.path), None, "already exists and is not an empty folder",
                                "choose a new folder for the PNG frames")
        self.count = 0
        self._tmp: Optional[Path] = None
        self._container = None
        self._stream = None
        self._gif_frames: list = []
        self._closed = False

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self, height: int, width: int) -> None:
        from flowctrl.io_safety import os_error, register_temp

        try:
            if self.kind == "png_dir":
                self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.parent))
            else:
                fd, tmp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=self.path.suffix, dir=self.parent)
                os.close(fd)
                self._tmp = Path(tmp_name)
        except OSError as error:
            raise os_error(error, self.path) from None
        register_temp(self._tmp)  # removed on SIGTERM / SIGHUP / exit if the writer never finishes
        if self.kind == "png_dir":
            return
        if self.kind == "mp4":
            import av
            from fractions import Fraction

            self._container = av.open(str(self._tmp), mode="w", format=_container_format(self._tmp))
            stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            # yuv420p needs even sizes: odd ones are padded (write pads each frame)
            stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
            stream.options = {"preset": self.preset, "crf": str(self.crf), **H264_EXTRA_OPTIONS}
            self._stream = stream

    def write(self, frames: Union[torch.Tensor, np.ndarray, Sequence[np.ndarray]]) -> None:
        """Append frames: ``(n, H, W, 3)`` uint8 or ``(n, 3, H, W)`` float in [0, 1] (:func:`to_uint8_frames`).

        An OS error (disk full, the folder gone) aborts the writer and becomes one InputError line."""
        try:
            self._write(frames)
        except OSError as error:
            from flowctrl.io_safety import os_error

            self.abort()
            raise os_error(error, self.path) from None

    def _write(self, frames: Union[torch.Tensor, np.ndarray, Sequence[np.ndarray]]) -> None:
        if self._closed:
            raise ValueError("VideoWriter is closed")
        frames = to_uint8_frames(frames)
        if frames.shape[0] == 0:
            return
        if self._tmp is None:
            self._open(frames.shape[1], frames.shape[2])
        if self.kind == "mp4":
            import av

            H, W = frames.shape[1:3]
            if H % 2 or W % 2:
                frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
            for frame in frames:
                for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    self._container.mux(packet)
        elif self.kind == "gif":
            self._gif_frames.extend(frames)
        else:
            from PIL import Image

            for i, frame in enumerate(frames, start=self.count):
                Image.fromarray(frame).save(self._tmp / f"{i:05d}.png", compress_level=1)
        self.count += frames.shape[0]

    def close(self) -> Path:
        """Finish the file and move it into place; returns the final path."""
        if self._closed:
            return self.path
        if self.count < 1:
            self.abort()
            raise InputError.at(None, "video", "has no frames", "render at least one frame")
        try:
            if self.kind == "mp4":
                for packet in self._stream.encode():
                    self._container.mux(packet)
                self._container.close()
                self._container = None
            elif self.kind == "gif":
                _write_gif(self._tmp, np.stack(self._gif_frames), self.fps)
            if self.kind == "png_dir":
                os.chmod(self._tmp, 0o777 & ~current_umask())
                if self.path.exists():
                    self.path.rmdir()
            else:
                os.chmod(self._tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual permissions
            os.replace(self._tmp, self.path)
            from flowctrl.io_safety import unregister_temp

            unregister_temp(self._tmp)
            self._tmp = None
        except OSError as error:
            from flowctrl.io_safety import os_error

            self.abort()
            raise os_error(error, self.path) from None
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Drop everything written so far (no file is left behind)."""
        self._closed = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the file is deleted anyway
                pass
            self._container = None
        if self._tmp is not None:
            from flowctrl.io_safety import unregister_temp

            if self._tmp.is_dir():
                shutil.rmtree(self._tmp, ignore_errors=True)
            elif self._tmp.exists():
                self._tmp.unlink()
            unregister_temp(self._tmp)
        self._tmp = None
        self._gif_frames = []


def _container_format(path: Path) -> str:
    # The temp file keeps the target's suffix, but name the muxer explicitly anyway.
    return {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}.get(path.suffix.lower(), "mp4")


# GIF palette: one 256-colour palette for the whole clip, from a few frames spread over it (at half
# resolution), and no dithering. Per-frame palettes made Pillow run median cut on every frame (the
# quick start's side-by-side GIF: 19.6 s) and, like dithering, change static pixels between frames, so
# Pillow's frame differencing (only the changed rectangle is stored) found nothing to skip (15.9 MB).
# One palette, no dither: 0.7 s and 8.3 MB, PSNR 30.6 dB vs 31.4 dB (benchmarks/bench_gif.py).
GIF_PALETTE_FRAMES = 8


def gif_palette(frames: np.ndarray, sample_frames: int = GIF_PALETTE_FRAMES) -> Any:
    """One palette (a ``"P"`` image) for a whole clip ``frames (T, H, W, 3)`` uint8: median cut over
    ``sample_frames`` frames spread evenly over the clip, each at half resolution."""
    from PIL import Image

    T = frames.shape[0]
    picks = np.unique(np.linspace(0, T - 1, min(T, sample_frames)).round().astype(int))
    sample = np.concatenate([frames[i, ::2, ::2] if min(frames.shape[1:3]) >= 32 else frames[i] for i in picks])
    return Image.fromarray(np.ascontiguousarray(sample)).quantize(colors=256, method=Image.Quantize.MEDIANCUT)


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    palette = gif_palette(frames)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    duration = max(int(round(1000.0 / fps)), 10)  # GIF delays are centiseconds; browsers clamp < 20 ms
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0,
                   optimize=False)


def read_video(path: PathLike) -> np.ndarray:
    """Decode a video written by :func:`write_video` (mp4, gif or PNG folder) to ``(T,H,W,3)`` uint8."""
    p = Path(path)
    if p.is_dir():
        from PIL import Image

        files = sorted(p.glob("*.png"))
        return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    import av

    with av.open(str(p)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
