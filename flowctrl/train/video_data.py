"""Stage-2 video training data: clips ``{"video" (T,3,H,W) [0,1], "flow" (T,2,H,W) px, "caption"}`` from
synthetic 3D scenes (:mod:`flowctrl.train.scenes`), textures moving along known flows, or the shards of
``flowctrl prepare-data`` (:class:`flowctrl.train.shards.ShardDataset`)."""
from __future__ import annotations

import math
from typing import Any, Dict

import torch
import torch.nn.functional as F

from flowctrl.errors import ConfigError
from flowctrl.flow.grid import pixel_grid


class SyntheticVideoDataset(torch.utils.data.Dataset):
    """``num_scenes`` clips of :func:`flowctrl.train.scenes.render_scene` (seeds ``seed .. seed+n-1``),
    rendered on first access and kept. Items: ``{"video" (T,3,H,W) [0,1], "flow" (T,2,H,W) px}``."""

    def __init__(self, num_scenes: int, seed: int, num_frames: int, height: int, width: int, camera: str = "random") -> None:
        from flowctrl.train.scenes import SceneConfig

        self.n, self.seed = int(num_scenes), int(seed)
        self.scene = SceneConfig(num_frames=num_frames, height=height, width=width, camera=camera)
        self.cache: Dict[int, Dict[str, Any]] = {}

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        """The engine calls this every epoch; these clips are the same in every epoch."""

    def __getitem__(self, i: int) -> Dict[str, Any]:
        if i not in self.cache:
            from flowctrl.train.scenes import render_scene

            clip = render_scene(self.seed + i, self.scene)
            self.cache[i] = {"video": clip.video.float(), "flow": clip.flow.float(), "caption": ""}
        return self.cache[i]


class TextureMotionDataset(torch.utils.data.Dataset):
    """Textures moving along known flows: a crop of a ``skimage.data`` texture (E's scene textures) under
    a random smooth similarity motion (translation, rotation, zoom, each with a constant rate).

    Clip ``i`` is a pure function of ``seed + i``. The motion of reference pixel ``q`` at frame ``t`` is
    ``T_t(q) = c + s_t·R(θ_t)·(q − c) + d_t`` about the crop centre ``c``, with ``d_t = t·v``,
    ``θ_t = t·ω``, ``s_t = (1 + z)^t``; frame ``t`` samples the texture at ``T_t⁻¹(p)`` (bilinear) and
    the reference-form flow is exactly ``T_t(q) − q``. Items: ``{"video" (T,3,H,W) [0,1], "flow"
    (T,2,H,W) px}``. Rates are per frame: ``|v| ≤ max_speed`` px, ``|ω| ≤ max_rotation_deg``,
    ``|z| ≤ max_zoom``.
    """

    def __init__(self, num_clips: int, seed: int, num_frames: int, height: int, width: int,
                 max_speed: float = 1.0, max_rotation_deg: float = 2.0, max_zoom: float = 0.02) -> None:
        self.n, self.seed, self.t, self.h, self.w = int(num_clips), int(seed), int(num_frames), int(height), int(width)
        self.max_speed, self.max_rot, self.max_zoom = float(max_speed), math.radians(max_rotation_deg), float(max_zoom)

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        """The engine calls this every epoch; these clips are the same in every epoch."""

    def __getitem__(self, i: int) -> Dict[str, Any]:
        from flowctrl.train.scenes import TEXTURES, _texture

        g = torch.Generator().manual_seed(self.seed + int(i))
        u = lambda: float(torch.rand((), generator=g)) * 2 - 1  # noqa: E731
        tex = _texture(TEXTURES[int(torch.randint(0, 8, (), generator=g))])          # (3, S, S)
        size = tex.shape[-1]
        # The crop covers (h, w) texture pixels scaled by `zoom0` around a random centre kept inside.
        zoom0 = 0.6 + 0.4 * float(torch.rand((), generator=g))   # ≤ 1 texel per pixel: no aliasing
        margin = 0.5 * max(self.h, self.w) * zoom0 * 1.6 + 2
        cx = margin + float(torch.rand((), generator=g)) * max(size - 2 * margin, 1)
        cy = margin + float(torch.rand((), generator=g)) * max(size - 2 * margin, 1)
        speed = self.max_speed * float(torch.rand((), generator=g)) ** 0.5
        angle = math.pi * u()
        v = torch.tensor([speed * math.cos(angle), speed * math.sin(angle)])
        omega, zrate = self.max_rot * u(), self.max_zoom * u()
        c = torch.tensor([(self.w - 1) / 2, (self.h - 1) / 2])
        q = pixel_grid(self.h, self.w) - c.view(2, 1, 1)                                    # (2, H, W) about the centre
        frames, flows = [], []
        for t in range(self.t):
            s_t, th = (1 + zrate) ** t, omega * t
            rot = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
            moved = s_t * torch.einsum("ij,jhw->ihw", rot, q) + (t * v).view(2, 1, 1)   # T_t(q) − c
            flows.append(moved - q)
            # inverse map of the output grid p: q = R⁻¹ (p − c − d_t) / s_t, then into texture pixels
            back = torch.einsum("ji,jhw->ihw", rot, q - (t * v).view(2, 1, 1)) / s_t
            tx = cx + zoom0 * back[0]
            ty = cy + zoom0 * back[1]
            grid = torch.stack([tx / (size - 1) * 2 - 1, ty / (size - 1) * 2 - 1], dim=-1)[None]
            frames.append(F.grid_sample(tex[None], grid, mode="bilinear", padding_mode="reflection",
                                        align_corners=True)[0])
        flow = torch.stack(flows)
        flow[0] = 0.0
        return {"video": torch.stack(frames).clamp(0, 1), "flow": flow, "caption": ""}


class ShardVideoDataset(torch.utils.data.Dataset):
    """F's shards (``flowctrl prepare-data``) cut/resampled to ``num_frames`` at ``height×width``."""

    def __init__(self, root: str, num_frames: int, height: int, width: int) -> None:
        from flowctrl.train.shards import ShardDataset

        self.base = ShardDataset(root)
        self.t, self.size = num_frames, (height, width)

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        """The engine calls this every epoch; these clips are the same in every epoch."""

    def __getitem__(self, i: int) -> Dict[str, Any]:
        item = self.base[i]
        video, flow = item["video"].float(), item["flow"].float()
        if video.shape[0] < self.t:
            raise ConfigError.at(item.get("name", i), "data.num_frames", f"the shard has {video.shape[0]} frames, fewer than {self.t}",
                                 "lower data.num_frames or prepare longer clips")
        video, flow = video[: self.t], flow[: self.t]
        h, w = video.shape[-2:]
        if (h, w) != self.size:
            video = F.interpolate(video, size=self.size, mode="bilinear", align_corners=False)
            scale = flow.new_tensor([self.size[1] / w, self.size[0] / h]).view(1, 2, 1, 1)
            flow = F.interpolate(flow, size=self.size, mode="bilinear", align_corners=False) * scale
        return {"video": video, "flow": flow, "caption": item.get("caption", "")}


def build_dataset(cfg: Any):
    """The dataset of a video run's ``data:`` section (``source``: textures | shards | synthetic)."""
    d = cfg.data
    if d.source == "textures":
        return TextureMotionDataset(d.num_scenes, d.seed, d.num_frames, d.height, d.width)
    if d.source == "shards":
        return ShardVideoDataset(d.shards, d.num_frames, d.height, d.width)
    return SyntheticVideoDataset(d.num_scenes, d.seed, d.num_frames, d.height, d.width, d.camera)
