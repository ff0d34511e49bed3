"""Object regions for local controls: the object under each control's start point.

``resolve_segmenter(segment)`` → a segmenter ``(image (1, 3, H, W), groups) -> (G, H, W)`` regions in
[0, 1], or None for ``"none"`` (today's unrestricted Gaussian spread):

* ``"edges"`` — :class:`EdgeSegmenter`, geodesic distance on image gradients (no weights);
* ``"sam"`` — Segment Anything (:data:`DEFAULT_SAM`, downloaded on request), or a folder / hub id of
  a SAM or SAM 2 checkpoint given instead of the word;
* ``"auto"`` — SAM when its weights are on disk (a cached hub id), else edges with one warning line;
* a callable ``(image, groups) -> (G, H, W)`` is used as is (tests, the benchmark's layer oracle).

:func:`object_regions` caches regions per image and seed group, so repeated calls (the app, previews,
streaming) segment each image once.
"""
from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from typing import Callable, List, Optional, Sequence, Union

import torch

from flowctrl.errors import InputError
from flowctrl.segment.edges import EdgeSegmenter
from flowctrl.segment.sam import DEFAULT_SAM, SamSegmenter, is_local_folder, sam_available

__all__ = ["SEGMENT_MODES", "DEFAULT_SEGMENT", "EdgeSegmenter", "SamSegmenter", "DEFAULT_SAM", "SegmentFallbackWarning",
           "resolve_segmenter", "object_regions", "sam_available", "same_objects"]

SEGMENT_MODES = ("auto", "sam", "edges", "none")
DEFAULT_SEGMENT = "auto"
Segmenter = Callable[[torch.Tensor, Sequence[torch.Tensor]], torch.Tensor]
SegmentSpec = Union[None, str, Segmenter]

_SEGMENTERS: dict = {}
_REGIONS: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_CACHE_SIZE = 64


class SegmentFallbackWarning(UserWarning):
    """``segment="auto"`` found no SAM weights on disk and uses the edge-aware fallback."""


def resolve_segmenter(segment: SegmentSpec = DEFAULT_SEGMENT) -> Optional[Segmenter]:
    """The segmenter named by ``segment`` (module docstring), loaded once per process; None for ``"none"``."""
    if segment is None or segment == "none":
        return None
    if callable(segment):
        return segment
    if not isinstance(segment, str) or not segment:
        raise InputError.at(None, "segment", f"{segment!r} is not a segmenter", f"use one of {SEGMENT_MODES} or a SAM folder / hub id")
    if segment == "edges":
        key = "edges"
    elif segment == "auto":
        if not sam_available(DEFAULT_SAM):
            warnings.warn(f"no Segment Anything weights cached ({DEFAULT_SAM}): spreading motion over edge-aware "
                          "regions instead (--segment sam downloads SAM; --segment none spreads as before)",
                          SegmentFallbackWarning, stacklevel=2)
            key = "edges"
        else:
            key = DEFAULT_SAM
            if key not in _SEGMENTERS:  # cached: load it without asking the hub for updates
                _SEGMENTERS[key] = SamSegmenter.from_pretrained(key, local_files_only=True)
    elif segment == "sam":
        key = DEFAULT_SAM
    elif "/" in segment or is_local_folder(segment) and segment not in SEGMENT_MODES:
        key = segment
    else:
        raise InputError.at(None, "segment", f"unknown mode {segment!r}", f"use one of {SEGMENT_MODES} or a SAM folder / hub id")
    if key not in _SEGMENTERS:
        _SEGMENTERS[key] = EdgeSegmenter() if key == "edges" else SamSegmenter.from_pretrained(key)
    return _SEGMENTERS[key]


def _digest(image: torch.Tensor) -> str:
    data = image.detach().to(torch.float32).cpu().contiguous().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest() + str(tuple(image.shape))


def object_regions(image: torch.Tensor, groups: Sequence[torch.Tensor], segmenter: Segmenter) -> torch.Tensor:
    """Regions ``(G, H, W)`` float in [0, 1] of the seed ``groups`` (each ``(N_i, 2)`` pixels ``(x, y)``) on ``image (1, 3, H, W)``.

    Results are cached per (segmenter, image content, seed group), so a second call on the same
    image and controls segments nothing.
    """
    H, W = image.shape[-2:]
    if len(groups) == 0:
        return torch.zeros(0, H, W)
    if not any(segmenter is s for s in _SEGMENTERS.values()):
        # a caller's own callable may close over anything: never served from the cache
        return segmenter(image, list(groups)).to(torch.float32).clamp(0, 1).reshape(len(groups), H, W)
    digest = _digest(image)
    keys = [(id(segmenter), digest, tuple(round(v, 2) for v in torch.as_tensor(g, dtype=torch.float32).flatten().tolist()))
            for g in groups]
    todo = [i for i, k in enumerate(keys) if k not in _REGIONS]
    if todo:
        fresh = segmenter(image, [groups[i] for i in todo])
        for i, region in zip(todo, fresh):
            _REGIONS[keys[i]] = region.to(torch.float32).clamp(0, 1).reshape(H, W)
    out: List[torch.Tensor] = []
    for k in keys:
        _REGIONS.move_to_end(k)
        out.append(_REGIONS[k])
    while len(_REGIONS) > _CACHE_SIZE:
        _REGIONS.popitem(last=False)
    return torch.stack(out)


def same_objects(regions: torch.Tensor, overlap: float = 0.5) -> List[List[int]]:
    """Indices of ``regions (G, H, W)`` grouped into objects: two regions are one object when their
    overlap ``Σ min(r_i, r_j) / min(Σ r_i, Σ r_j)`` exceeds ``overlap`` (transitively).

    Controls on one object are then spread together (their motions interpolate across it, as two
    arrows pulling one object apart should) instead of each moving the whole object.
    """
    g = int(regions.shape[0])
    parent = list(range(g))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    flat = regions.reshape(g, -1).to(torch.float32)
    mass = flat.sum(dim=1)
    for i in range(g):
        for j in range(i + 1, g):
            shared = float(torch.minimum(flat[i], flat[j]).sum())
            if shared > overlap * float(torch.minimum(mass[i], mass[j]).clamp_min(1e-6)):
                parent[root(j)] = root(i)
    groups: dict = {}
    for i in range(g):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())
