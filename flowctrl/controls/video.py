"""Reading reference videos (any file PyAV/FFmpeg decodes) as float tensors."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from flowctrl.controls._common import PathLike, Size, err

__all__ = ["load_reference_video", "resize_video", "resample_frames"]


MAX_VIDEO_BYTES = 4 * 2**30  # decoded RGB frames of a reference video (the frames are resampled afterwards)


def resample_frames(num_source: int, num_frames: int) -> np.ndarray:
    """Indices of ``num_frames`` source frames evenly spread over ``num_source`` (first and last kept)."""
    return np.rint(np.linspace(0, num_source - 1, num_frames)).astype(np.int64)


def resize_video(video: torch.Tensor, size: Size) -> torch.Tensor:
    """Resize ``(T, 3, H, W)`` frames to ``size`` (H, W): antialiased bilinear, clamped to [0, 1]."""
    if tuple(video.shape[-2:]) == tuple(size):
        return video
    return F.interpolate(video, size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=True).clamp_(0.0, 1.0)


def load_reference_video(path: PathLike, num_frames: Optional[int] = None, size: Optional[Size] = None) -> torch.Tensor:
    """Decode a video with PyAV into ``(T, 3, H, W)`` float32 in [0, 1].

    num_frames: resample to this many frames evenly spread over the clip (first and last frame
        kept; frames are repeated when the clip is shorter), or None = every frame.
    size: ``(H, W)`` working size, or None = the video's size.
    Unreadable or empty files raise :class:`~flowctrl.errors.ControlFileError`.
    """
    import av

    from flowctrl.errors import ControlFileError
    from flowctrl.io_safety import MAX_IMAGE_PIXELS, check_regular

    path = check_regular(path, "reference video", ControlFileError, missing="reference video does not exist")
    if num_frames is not None and num_frames < 1:
        raise err(path, "num_frames", f"is {num_frames}", "give at least 1 frame")
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise err(path, None, "has no video stream", "give a video file (mp4, webm, gif, ...)")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            decoded = 0
            for frame in container.decode(stream):
                if frame.width * frame.height > MAX_IMAGE_PIXELS:
                    raise err(path, None, f"reference video frames are {frame.width}x{frame.height}, above the limit "
                              f"of {MAX_IMAGE_PIXELS} pixels", "give a smaller video")
                decoded += frame.width * frame.height * 3
                if decoded > MAX_VIDEO_BYTES:
                    raise err(path, None, f"reference video holds more than {MAX_VIDEO_BYTES // 2**30} GB of frames "
                              f"({len(frames)} read)", "cut it to the part whose motion you want")
                frames.append(frame.to_ndarray(format="rgb24"))
    except av.error.FFmpegError as error:
        if not frames:
            raise err(path, None, f"cannot decode reference video ({type(error).__name__})",
                      "give a video file PyAV/FFmpeg reads (mp4, webm, gif, ...)") from None
        # a truncated tail: keep the frames that decoded
    if not frames:
        raise err(path, None, "reference video has no frames", "give a non-empty video")
    if num_frames is not None:
        frames = [frames[i] for i in resample_frames(len(frames), num_frames)]
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    if size is not None:
        video = resize_video(video, size)
    return video.contiguous()
