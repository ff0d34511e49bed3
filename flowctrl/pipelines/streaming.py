"""Streaming warp rendering: stage 1 and the warp renderer a few frames at a time, on all cores.

:func:`compute_unified_flow` + :func:`render_warp` materialize every frame of every intermediate
(flow, visibility, camera flow, importance, float video: ~1 GB at 49×512²) and parallelize inside
each op. Here the all-frames part of stage 1 runs once (:func:`plan_unified_flow`: local flow, depth,
camera, strength) and the rest runs per chunk of frames, end to end, in a pool of Python threads
(the compiled ops and torch release the GIL)::

    chunk [a, b):  camera flow + composition  →  importance + softmax splat  →  hole fill  →  uint8

Each frame's result depends only on its own flow and camera (the ops are per frame by contract:
:class:`~flowctrl.pipelines.stage1.Stage1Plan`, :func:`~flowctrl.render.render_warp_frames`), so
the frames are identical to the whole-video path, while every chunk's data stays in cache and the
consumer (the H.264 encoder) works on finished chunks while the next ones render.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Deque, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from flowctrl.pipelines.stage1 import Stage1Plan
from flowctrl.render.fill import normalize_fill_mode
from flowctrl.render.warp_renderer import DEFAULT_ALPHA, depth_points, render_warp_frames
from flowctrl.video_io import to_uint8_frames

ProgressCallback = Callable[[str, int, int], None]

# Frames per chunk: small enough that a chunk's intermediates (~40 bytes per pixel-frame) stay in
# cache at 512², large enough to amortize the per-call overhead of ~20 small ops.
DEFAULT_CHUNK_FRAMES = 4


def chunk_bounds(num_frames: int, chunk_frames: int) -> List[Tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``0..num_frames-1`` in runs of ``chunk_frames``."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    return [(a, min(num_frames, a + chunk_frames)) for a in range(0, num_frames, chunk_frames)]


def default_workers() -> int:
    """One render thread per core torch may use (``torch.get_num_threads()``), at most the CPU count."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def render_chunk(image: torch.Tensor, plan: Stage1Plan, start: int, stop: int, fill: str = "push-pull",
                 alpha: float = DEFAULT_ALPHA, points: Optional[torch.Tensor] = None,
                 cpu_seconds: Optional[Dict[str, float]] = None, resample: str = "bicubic") -> np.ndarray:
    """Frames ``start..stop-1`` of the warp-rendered video as ``(n, H, W, 3)`` uint8.

    Args:
        image: ``(1, 3, H, W)`` float in [0, 1] at the plan's size.
        plan: :func:`~flowctrl.pipelines.stage1.plan_unified_flow` of that image.
        points: optional :func:`~flowctrl.render.warp_renderer.depth_points` of the plan's depth and K.
        cpu_seconds: optional dict; the calling thread's CPU seconds are added under ``"flow"``
            (camera flow + composition), ``"splat"`` (importance + splat), ``"fill"`` and ``"uint8"``.
    """
    t0 = time.thread_time()
    flow, valid, _ = plan.frames(start, stop)
    t1 = time.thread_time()
    depth = plan.depth
    result = render_warp_frames(image, flow, depth=depth, valid=valid, K=plan.K,
                                w2c=plan.w2c[:, start:stop] if depth is not None and plan.w2c is not None else None,
                                fill=fill, alpha=alpha, points=points, resample=resample)
    t2 = time.thread_time()
    frames = to_uint8_frames(result.video[0])
    if cpu_seconds is not None:
        # render_warp_frames times splat and fill in wall seconds: split its CPU time in that ratio
        walls = result.timings["splat"] + result.timings["fill"]
        share = result.timings["splat"] / walls if walls > 0 else 1.0
        for key, value in (("flow", t1 - t0), ("splat", (t2 - t1) * share), ("fill", (t2 - t1) * (1 - share)),
                           ("uint8", time.thread_time() - t2)):
            cpu_seconds[key] = cpu_seconds.get(key, 0.0) + value
    return frames


def stream_warp_video(image: torch.Tensor, plan: Stage1Plan, *, fill: str = "push-pull", alpha: float = DEFAULT_ALPHA,
                      chunk_frames: int = DEFAULT_CHUNK_FRAMES, workers: Optional[int] = None,
                      callback: Optional[ProgressCallback] = None,
                      cpu_seconds: Optional[Dict[str, float]] = None, resample: str = "bicubic"
                      ) -> Iterator[np.ndarray]:
    """Render the warp video chunk by chunk; yields ``(n, H, W, 3)`` uint8 chunks in frame order.

    Args:
        image: ``(1, 3, H, W)`` float in [0, 1] (the working size of ``plan``).
        plan: the all-frames part of stage 1 (:func:`~flowctrl.pipelines.stage1.plan_unified_flow`).
        fill: ``"push-pull"`` | ``"inpaint"`` | ``"none"``; alpha: softmax importance range.
        chunk_frames: frames per chunk; workers: render threads (default :func:`default_workers`),
            each running the compiled ops single-threaded, while the caller consumes finished chunks.
            At most ``2 * workers`` chunks are in flight, so memory stays bounded by a few chunks
            however long the video is.
        callback: ``callback("render", frames_done, T)`` as chunks complete, in order.
        cpu_seconds: optional dict collecting the workers' CPU seconds per stage (:func:`render_chunk`).
        resample: as :func:`~flowctrl.render.render_warp_frames` (``"splat"``: keep the splat's blend).

    The frames equal :class:`~flowctrl.pipelines.FlowCtrlPipeline`'s warp output (to_uint8 of
    :func:`~flowctrl.render.render_warp` on :func:`~flowctrl.pipelines.stage1.compute_unified_flow`)
    whenever that path splats at least as many moving frames as it has threads (any ``T > threads``;
    with fewer, its compiled splat splits rows between threads and rounds differently).
    """
    fill = normalize_fill_mode(fill)
    if image.ndim != 4 or image.shape[:2] != (1, 3) or tuple(image.shape[-2:]) != (plan.height, plan.width):
        raise ValueError(f"image {tuple(image.shape)} does not match the plan's size {(plan.height, plan.width)}")
    image = image.detach().float().contiguous()
    bounds = chunk_bounds(plan.num_frames, chunk_frames)
    workers = default_workers() if workers is None else max(1, int(workers))
    # the back-projected reference pixels are the same for every chunk
    points = depth_points(plan.depth, plan.K) if plan.depth is not None and plan.K is not None else None
    from flowctrl_cuda import thread_limit

    lock = threading.Lock()

    def job(start: int, stop: int) -> np.ndarray:
        mine: Optional[Dict[str, float]] = {} if cpu_seconds is not None else None
        # parallel over chunks, not inside each op: one thread per compiled call also keeps every frame
        # on the splat's one-image-per-thread path, whose sums do not depend on the thread count
        with thread_limit(1):
            frames = render_chunk(image, plan, start, stop, fill, alpha, points, mine, resample=resample)
        if mine:
            with lock:
                for key, value in mine.items():
                    cpu_seconds[key] = cpu_seconds.get(key, 0.0) + value
        return frames

    queue = iter(bounds)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flowctrl-render") as pool:
        pending: Deque[Tuple[int, Future]] = deque(
            (stop, pool.submit(job, start, stop)) for start, stop in itertools.islice(queue, 2 * workers))
        try:
            while pending:
                stop, future = pending.popleft()
                frames = future.result()
                for start_next, stop_next in itertools.islice(queue, 1):  # keep 2 * workers in flight
                    pending.append((stop_next, pool.submit(job, start_next, stop_next)))
                yield frames
                if callback is not None:
                    callback("render", stop, plan.num_frames)
        finally:
            for _, future in pending:  # the consumer stopped early (error, interrupt): drop the rest
                future.cancel()


__all__ = ["DEFAULT_CHUNK_FRAMES", "chunk_bounds", "default_workers", "render_chunk", "stream_warp_video"]
