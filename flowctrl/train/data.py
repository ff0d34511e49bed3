"""Training data for the stage-1 models: sparse conditions sampled like user controls, synthetic and shard datasets.

Sparse conditions are drawn from the *true* flow the way a user's arrows/drags would be:

* ``random`` — a few points uniformly over the frame (drags),
* ``grid``   — points on a jittered regular grid (dense arrow fields),
* ``edge``   — points biased to image edges and motion boundaries (where people click),
* ``camera`` — no points at all; only the camera (Plücker rays → CRM) conditions the model,
* ``mixed``  — one of the above per sample (the default for training).

A point follows its true track (``flow[t](p)`` for every frame, dropped where the point is not visible),
scattered with B's :func:`flowctrl.flow.sparse.sparse_flow_from_tracks` (eq. 5).

Every item is a dict of tensors (shapes for one sample; the DataLoader adds ``B``)::

    image (3,H,W) [0,1]; flow (T,2,H,W) px; sparse (T,2,H,W) px; mask (T,1,H,W) {0,1};
    dense (T,2,H,W) px (Gaussian eq. 6–7 of sparse); plucker (T,6,H,W); strength () px/frame (eq. 8);
    layers (1,H,W) int64 surface of each reference pixel (synthetic only; T's optional auxiliary loss);
    K (3,3) px and w2c (T,4,4) the camera (a CRM's camera base, ``crm.camera_base_depth``)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

MODES = ("random", "grid", "edge", "camera")
_CLIP_CACHE: Dict[Tuple[int, int, int, int], Dict[str, torch.Tensor]] = {}  # shared by runs in one process
_CLIP_CACHE_MAX = 512


@dataclass
class ConditionConfig:
    """How sparse conditions are sampled. ``modes``/``weights``: the mix used by ``mode="mixed"``."""

    mode: str = "mixed"
    modes: Sequence[str] = MODES
    weights: Sequence[float] = (0.35, 0.2, 0.3, 0.15)
    min_points: int = 1
    max_points: int = 12
    grid_step: int = 16


def _edge_weights(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """(3,H,W), (T,2,H,W) → (H·W,) sampling weights: image gradient + flow gradient + a uniform floor."""
    gray = image.mean(0)
    gi = (gray[:, 1:] - gray[:, :-1]).abs()[:-1] + (gray[1:] - gray[:-1]).abs()[:, :-1]
    last = flow[-1]
    gf = (last[:, :, 1:] - last[:, :, :-1]).norm(dim=0)[:-1] + (last[:, 1:] - last[:, :-1]).norm(dim=0)[:, :-1]
    w = F.pad(gi / (gi.mean() + 1e-6) + gf / (gf.mean() + 1e-6), (0, 1, 0, 1))
    return (w + 0.1).flatten()


def sample_points(mode: str, image: torch.Tensor, flow: torch.Tensor, config: ConditionConfig,
                  generator: torch.Generator) -> torch.Tensor:
    """Reference-frame pixel positions (N, 2) (x, y) for one condition mode."""
    _, h, w = image.shape
    n = int(torch.randint(config.min_points, config.max_points + 1, (1,), generator=generator))
    if mode == "camera":
        return torch.zeros(0, 2)
    if mode == "random":
        idx = torch.randint(0, h * w, (n,), generator=generator)
    elif mode == "edge":
        idx = torch.multinomial(_edge_weights(image, flow), n, replacement=False, generator=generator)
    elif mode == "grid":
        step = config.grid_step
        off = torch.randint(0, step, (2,), generator=generator)
        ys, xs = torch.meshgrid(torch.arange(int(off[0]), h, step), torch.arange(int(off[1]), w, step), indexing="ij")
        return torch.stack([xs.flatten(), ys.flatten()], dim=1).float()
    else:
        raise ValueError(f"unknown condition mode {mode!r}; use one of {MODES + ('mixed',)}")
    return torch.stack([idx % w, idx // w], dim=1).float()


def sample_condition(image: torch.Tensor, flow: torch.Tensor, visibility: Optional[torch.Tensor],
                     config: ConditionConfig, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """Sparse condition from a true flow.

    Args:
        image: (3,H,W); flow: (T,2,H,W) px reference form; visibility: (T,1,H,W) or None.
    Returns:
        sparse (T,2,H,W) px, mask (T,1,H,W), the mode used.
    """
    from flowctrl.flow.sparse import sparse_flow_from_tracks

    t, _, h, w = flow.shape
    mode = config.mode
    if mode == "mixed":
        k = int(torch.multinomial(torch.tensor(list(config.weights), dtype=torch.float), 1, generator=generator))
        mode = config.modes[k]
    pts = sample_points(mode, image, flow, config, generator)
    xi, yi = pts[:, 0].long(), pts[:, 1].long()
    tracks = flow[:, :, yi, xi].permute(2, 0, 1)  # (N, T, 2)
    valid = None
    if visibility is not None:
        valid = visibility[:, 0, yi, xi].T > 0.5  # (N, T)
    sparse, mask = sparse_flow_from_tracks(tracks[None], pts[None], h, w, None if valid is None else valid[None])
    return sparse[0], mask[0], mode


def densify(sparse: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Gaussian interpolation baseline (eq. 6–7, B's implementation) of one (T,2,H,W) sparse flow."""
    from flowctrl.flow.densify import gaussian_densify

    if mask.sum() == 0:
        return torch.zeros_like(sparse)
    return gaussian_densify(sparse[None], mask[None])[0]


@dataclass
class SyntheticConfig:
    """Synthetic-scene data: ``num_scenes`` clips rendered from seeds ``seed … seed+num_scenes-1``."""

    num_scenes: int = 64
    seed: int = 0
    num_frames: int = 16
    height: int = 64
    width: int = 64
    condition: ConditionConfig = field(default_factory=ConditionConfig)
    with_dense: bool = True
    cache_dir: Optional[str] = None   # rendered scenes kept on disk (safetensors, one file per seed and size)
    condition_variants: Optional[int] = None  # conditions cycle through this many draws per scene (None: new each epoch)


_CACHED_KEYS = ("image", "flow", "visibility", "strength", "K", "w2c", "layers")


def scene_cache_file(cache_dir: str, seed: int, num_frames: int, height: int, width: int) -> str:
    """Path of one rendered scene in a scene cache (see :func:`render_clip`)."""
    import os

    return os.path.join(cache_dir, f"scene_{seed}_{num_frames}x{height}x{width}.safetensors")


def render_clip(seed: int, num_frames: int, height: int, width: int, cache_dir: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The training tensors of synthetic scene ``seed`` (E's engine), read from / written to ``cache_dir``
    when given (written atomically, so several processes may fill one cache). Plücker rays are computed on load."""
    import os

    from flowctrl.flow.camera import plucker_rays

    path = scene_cache_file(cache_dir, seed, num_frames, height, width) if cache_dir else None
    out = None
    if path is not None and os.path.isfile(path):
        from safetensors.torch import load_file

        try:
            out = load_file(path)
        except Exception:  # a corrupt cache entry is re-rendered
            out = None
    if out is None:
        from flowctrl.flow.strength import motion_strength
        from flowctrl.train.scenes import SceneConfig, render_scene

        clip = render_scene(seed, SceneConfig(num_frames=num_frames, height=height, width=width))
        out = {"image": clip.video[0].float(), "flow": clip.flow.float(), "visibility": clip.visibility.float(),
               "strength": motion_strength(clip.flow[None].float())[0], "K": clip.K.float(), "w2c": clip.w2c.float(),
               "layers": clip.layer_ids.long()}
        if path is not None:
            from safetensors.torch import save_file

            from flowctrl.io_safety import atomic_path

            os.makedirs(cache_dir, exist_ok=True)
            with atomic_path(path, suffix=".tmp") as tmp:
                save_file({k: out[k].contiguous() for k in _CACHED_KEYS}, str(tmp))
    out = dict(out)
    out["plucker"] = plucker_rays(out["K"][None], out["w2c"][None], height, width)[0]
    return out


class SyntheticFlowDataset(Dataset):
    """Items from E's synthetic scene engine, with conditions resampled every epoch (``set_epoch``).

    Clips are rendered on first use and kept in memory. Item ``i`` at epoch ``e`` is a pure function
    of (config, i, e), which is what makes ``--resume`` bit-exact.
    """

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self.epoch = 0
        self._clips: Dict[int, Dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.config.num_scenes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def clip(self, index: int) -> Dict[str, torch.Tensor]:
        c = self.config
        key = (c.seed + index, c.num_frames, c.height, c.width)
        if index not in self._clips and key in _CLIP_CACHE:
            self._clips[index] = _CLIP_CACHE[key]
        if index not in self._clips:
            self._clips[index] = render_clip(c.seed + index, c.num_frames, c.height, c.width, c.cache_dir)
            if len(_CLIP_CACHE) < _CLIP_CACHE_MAX:
                _CLIP_CACHE[key] = self._clips[index]
        return self._clips[index]

    def condition_key(self, index: int) -> Tuple[int, int]:
        """(index, condition draw) of item ``index`` at the current epoch: items with the same key are identical."""
        v = self.config.condition_variants
        return index, (self.epoch % v if v else self.epoch)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        clip = self.clip(index)
        g = torch.Generator().manual_seed((self.config.seed + index) * 1_000_003 + self.condition_key(index)[1])
        sparse, mask, mode = sample_condition(clip["image"], clip["flow"], clip["visibility"], self.config.condition, g)
        item = {
            "image": clip["image"],
            "flow": clip["flow"],
            "sparse": sparse,
            "mask": mask,
            "plucker": clip["plucker"],
            "strength": clip["strength"],
            "camera_only": torch.tensor(mode == "camera"),
            "layers": clip["layers"],
            "K": clip["K"],
            "w2c": clip["w2c"],
        }
        if self.config.with_dense:
            item["dense"] = densify(sparse, mask)
        return item


class ShardConditionDataset(Dataset):
    """Stage-1 items from ``prepare-data`` shards (flow estimated from real videos), same dict as above.

    Plücker rays come from the shard's camera poses when present (frames not registered → identity),
    else the camera is static (zeros rays of an identity trajectory).
    """

    def __init__(self, root: str, condition: Optional[ConditionConfig] = None, seed: int = 0, with_dense: bool = True) -> None:
        from flowctrl.train.shards import ShardDataset

        self.shards = ShardDataset(root)
        self.condition = condition or ConditionConfig()
        self.seed = seed
        self.epoch = 0
        self.with_dense = with_dense

    def __len__(self) -> int:
        return len(self.shards)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        from flowctrl.flow.camera import plucker_rays
        from flowctrl.flow.strength import motion_strength

        s = self.shards[index]
        video, flow = s["video"], s["flow"]
        t, _, h, w = video.shape
        w2c = s.get("w2c")
        if w2c is None:
            w2c = torch.eye(4).expand(t, 4, 4).clone()
        K = s["K"]
        g = torch.Generator().manual_seed((self.seed + index) * 1_000_003 + self.epoch)
        sparse, mask, mode = sample_condition(video[0], flow, None, self.condition, g)
        item = {
            "image": video[0],
            "flow": flow,
            "sparse": sparse,
            "mask": mask,
            "plucker": plucker_rays(K[None].float(), w2c[None].float(), h, w)[0],
            "strength": motion_strength(flow[None])[0],
            "camera_only": torch.tensor(mode == "camera"),
            "K": K.float(),
            "w2c": w2c.float(),
        }
        if self.with_dense:
            item["dense"] = densify(sparse, mask)
        return item


def collate(items: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Stack a list of item dicts (same keys) into a batch dict."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def seeded_order(n: int, epoch: int, seed: int, shuffle: bool = True) -> List[int]:
    """The sample order of one epoch (a pure function of its arguments, for bit-exact resume)."""
    if not shuffle:
        return list(range(n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()


def num_batches(n: int, batch_size: int, world: int = 1) -> int:
    """Batches per epoch per process with the last partial batch dropped."""
    return max(1, math.floor(n / (batch_size * world)))
