"""Training shards from real videos (``flowctrl prepare-data``) and the dataset that reads them.

Layout of a shard folder::

    SHARDS/
      manifest.jsonl                 one JSON line per source video: {"video", "status": "ok"|"failed",
                                     "shards": [...], "error"?}; appended as videos finish (resume key)
      <stem>-<hash8>-c<k>.safetensors one clip each, written to a temp file and renamed (atomic)

Tensors in a clip file (``T`` frames at ``H×W``):

    frames      uint8   (T,3,H,W)  RGB
    flow        float32 (T,2,H,W)  reference-form flow in pixels (flow[0] == 0), DIS or RAFT
    K           float32 (3,3)      intrinsics in pixels of H×W (assumed fov when poses are off)
    w2c         float32 (T,4,4)    optional: camera poses relative to frame 0 (pycolmap), identity where
    registered  uint8   (T,)                 a frame did not register
Metadata (strings): source, caption, fps, flow_method, clip_start.

``ShardDataset(root)[i]`` returns ``{"video" (T,3,H,W) float [0,1], "flow", "K", "w2c"?, "registered"?,
"caption" str, "name" str}``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from flowctrl.errors import ConfigError, InputError, OutputError
from flowctrl.flow.camera import default_intrinsics

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif", ".m4v")


def read_video_frames(path: os.PathLike, max_frames: Optional[int] = None, stride: int = 1) -> Tuple[torch.Tensor, float]:
    """Decode a video with PyAV → (T,3,H,W) float [0,1] and its fps. Unreadable → :class:`InputError`."""
    import av

    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 8)
            for i, frame in enumerate(container.decode(stream)):
                if i % stride:
                    continue
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, IndexError, ValueError, OSError) as err:
        raise InputError.at(path, "video", f"cannot be decoded ({type(err).__name__}: {err})", "re-encode it or remove it") from None
    if len(frames) < 2:
        raise InputError.at(path, "video", f"has {len(frames)} decodable frame(s)", "give a video of at least 2 frames")
    return torch.stack(frames).permute(0, 3, 1, 2).float() / 255.0, fps


def resize_center_crop(video: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(T,3,H,W) → (T,3,h,w): scale so the frame covers ``size``, then crop the centre."""
    h, w = size
    H, W = video.shape[-2:]
    s = max(h / H, w / W)
    nh, nw = max(h, round(H * s)), max(w, round(W * s))
    out = F.interpolate(video, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - h) // 2, (nw - w) // 2
    return out[..., top:top + h, left:left + w].clamp(0, 1)


def write_shard(path: os.PathLike, video: torch.Tensor, flow: torch.Tensor, K: torch.Tensor,
                w2c: Optional[torch.Tensor] = None, registered: Optional[torch.Tensor] = None,
                metadata: Optional[Dict[str, str]] = None) -> None:
    """Write one clip atomically (temp file + rename). video (T,3,H,W) [0,1]; flow (T,2,H,W) px."""
    tensors = {
        "frames": (video.clamp(0, 1) * 255).round().to(torch.uint8).contiguous(),
        "flow": flow.float().contiguous(),
        "K": K.float().contiguous(),
    }
    if w2c is not None:
        tensors["w2c"] = w2c.float().contiguous()
        tensors["registered"] = (registered if registered is not None else torch.ones(len(w2c))).to(torch.uint8).contiguous()
    from flowctrl.io_safety import atomic_path

    with atomic_path(path, suffix=".tmp") as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


class ShardDataset(Dataset):
    """Reads every ``*.safetensors`` clip under ``root`` (sorted by name). Items: see module docstring."""

    def __init__(self, root: os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError.at(root, "data.shards", "is not a folder", "run `flowctrl prepare-data VIDEO_DIR -o SHARDS` first")
        self.files = sorted(p for p in self.root.glob("*.safetensors"))
        if not self.files:
            raise ConfigError.at(root, "data.shards", "holds no .safetensors shards", "run `flowctrl prepare-data VIDEO_DIR -o SHARDS` first")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Dict[str, object]:
        path = self.files[index]
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            meta = f.metadata() or {}
            item: Dict[str, object] = {
                "video": f.get_tensor("frames").float() / 255.0,
                "flow": f.get_tensor("flow").float(),
                "K": f.get_tensor("K").float(),
            }
            if "w2c" in keys:
                item["w2c"] = f.get_tensor("w2c").float()
                item["registered"] = f.get_tensor("registered").bool()
        item["caption"] = meta.get("caption", "")
        item["name"] = path.stem
        return item


def _captions(video_dir: Path, captions: Optional[os.PathLike]) -> Dict[str, str]:
    if captions is None:
        return {}
    from flowctrl.io_safety import read_bounded_text

    try:
        data = json.loads(read_bounded_text(captions, "captions", InputError, field="--captions"))
    except RecursionError:
        raise InputError.at(captions, "captions", "JSON nesting is too deep", 'give {"video.mp4": "caption", ...}') from None
    except json.JSONDecodeError as err:
        raise InputError.at(captions, "captions", f"cannot be read as JSON ({err})", 'give {"video.mp4": "caption", ...}') from None
    if not isinstance(data, dict):
        raise InputError.at(captions, "captions", "is not a JSON object", 'give {"video.mp4": "caption", ...}')
    return {str(k): str(v) for k, v in data.items()}


def _side_caption(video: Path) -> str:
    """The caption in ``video.txt`` beside a video ("" when there is none); bounded, regular files only."""
    from flowctrl.io_safety import read_bounded_text

    side = video.with_suffix(".txt")
    if not side.exists():
        return ""
    return read_bounded_text(side, "caption", InputError, max_bytes=1 << 20).strip()


def _done(manifest: Path) -> Dict[str, dict]:
    done = {}
    if manifest.exists():
        for line in manifest.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill; the video is redone
            done[rec["video"]] = rec
    return done


def prepare_shards(
    video_dir: os.PathLike,
    out_dir: os.PathLike,
    num_frames: int = 16,
    size: Tuple[int, int] = (64, 64),
    stride: int = 1,
    clips_per_video: int = 1,
    flow_method: str = "dis",
    pose_estimator: Optional[Callable[[torch.Tensor, torch.Tensor], Any]] = None,
    fov_deg: float = 60.0,
    captions: Optional[os.PathLike] = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> Dict[str, int]:
    """Turn a folder of videos into shards (streaming: one video in memory at a time; resumable).

    Videos already listed in ``manifest.jsonl`` are skipped, so a killed run continues where it stopped.
    A video that cannot be decoded is reported through ``log`` and in the manifest, then skipped.
    ``pose_estimator(clip (T,3,H,W), K (3,3))`` → an object with ``w2c`` (T,4,4) | None and ``registered`` (T,)
    (e.g. :func:`flowctrl.eval.camera.estimate_poses`); None = no camera poses in the shards.
    Returns counts ``{"videos", "ok", "failed", "skipped", "clips"}``.
    """
    from tqdm import tqdm

    from flowctrl.flow.estimate import estimate_flow

    video_dir, out_dir = Path(video_dir), Path(out_dir)
    if not video_dir.is_dir():
        raise InputError.at(video_dir, "VIDEO_DIR", "is not a folder", "give a folder of videos")
    if out_dir.resolve() == video_dir.resolve():
        raise InputError.at(out_dir, "-o", "is the input folder", "write shards to a separate folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError.at(out_dir, "-o", "exists and is not a folder", "give a new folder (or the folder of an earlier run)")
    if captions is not None and os.path.realpath(captions).startswith(os.path.realpath(out_dir) + os.sep):
        raise InputError.at(captions, "--captions", f"lies inside the output folder {out_dir}",
                            "keep the captions file outside the shard folder")
    caps = _captions(video_dir, captions)  # read before anything is created
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        from flowctrl.io_safety import os_error

        raise os_error(error, out_dir, "-o", action="create the folder") from None
    videos = sorted(p for p in video_dir.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    manifest = out_dir / "manifest.jsonl"
    done = _done(manifest)
    counts = {"videos": len(videos), "ok": 0, "failed": 0, "skipped": 0, "clips": 0}
    h, w = size
    K = default_intrinsics(h, w, fov_deg)
    for path in tqdm(videos, desc="prepare-data", unit="video", disable=not progress, file=sys.stderr):
        rel = path.name
        if rel in done:
            counts["skipped"] += 1
            continue
        rec: Dict[str, object] = {"video": rel}
        try:
            video, fps = read_video_frames(path, max_frames=num_frames * clips_per_video, stride=stride)
            if len(video) < num_frames:
                raise InputError.at(path, "video", f"has {len(video)} frames after stride {stride}", f"needs {num_frames}")
            video = resize_center_crop(video, size)
            names = []
            for k in range(min(clips_per_video, len(video) // num_frames)):
                clip = video[k * num_frames:(k + 1) * num_frames]
                flow = estimate_flow(clip, method=flow_method)[0]
                w2c = registered = None
                if pose_estimator is not None:
                    est = pose_estimator(clip, K)
                    if est.w2c is not None:
                        w2c, registered = est.w2c.float(), est.registered
                        w2c = torch.where(registered.view(-1, 1, 1), w2c, torch.eye(4).expand_as(w2c))
                digest = hashlib.sha1(rel.encode()).hexdigest()[:8]
                name = f"{path.stem}-{digest}-c{k}.safetensors"
                caption = caps.get(rel) or _side_caption(path)
                write_shard(out_dir / name, clip, flow, K, w2c, registered,
                            {"source": rel, "caption": caption, "fps": f"{fps:.3f}", "flow_method": flow_method,
                             "clip_start": str(k * num_frames * stride)})
                names.append(name)
            rec.update(status="ok", shards=names)
            counts["ok"] += 1
            counts["clips"] += len(names)
        except OutputError:
            raise  # the shard folder cannot take more (disk full, read-only): stop, do not skip every video
        except InputError as err:
            rec.update(status="failed", error=str(err))
            counts["failed"] += 1
            log(f"prepare-data: skipped {err}")
        with open(manifest, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return counts
