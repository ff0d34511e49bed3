"""``FlowCtrlPipeline``: the one public entry point, image + controls -> video.

Stage 1 turns the controls into the unified flow (:func:`flowctrl.pipelines.stage1.compute_unified_flow`,
optionally refined by a learned flow model); stage 2 renders the video with a backend (``"warp"`` by
default: CPU, no weights; ``"diffusion"`` with weights).

Example::

    import torch
    from flowctrl import FlowCtrlPipeline
    from flowctrl.controls import Controls, Arrow

    pipe = FlowCtrlPipeline()                                  # warp backend
    controls = Controls(arrows=[Arrow(start=(200, 150), end=(260, 150))], image_size=(512, 512))
    out = pipe("examples/astronaut.png", controls=controls, num_frames=25,
               generator=torch.Generator().manual_seed(0))
    out.frames        # (25, H, W, 3) uint8
    out.flow          # (1, 25, 2, H, W) pixels
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from flowctrl.errors import FlowCtrlError, InputError
from flowctrl.pipelines.backends import RenderBackend, RenderResult, get_backend, resolve_backend_factory
from flowctrl.render.warp_renderer import MAX_SIDE, check_render_size

ProgressCallback = Callable[[str, int, int], None]
ImageInput = Union[str, "os.PathLike[str]", "PIL.Image.Image", np.ndarray, torch.Tensor]  # noqa: F821

DEFAULT_LONG_SIDE = 512
SIZE_MULTIPLE = 8


@dataclass
class FlowCtrlOutput:
    """What :class:`FlowCtrlPipeline` returns (indexable like diffusers' ``BaseOutput``: by name, or by
    position over the fields that are not None; ``to_tuple()``). diffusers itself is not imported:
    it pulls in ``torch._dynamo`` and would add seconds to every CLI start.

    frames: ``(T, H, W, 3)`` uint8 numpy array (indexable frame by frame).
    video: ``(1, T, 3, H, W)`` float32 in [0, 1].
    flow: ``(1, T, 2, H, W)`` the unified flow in pixels (None with ``return_flow=False``).
    depth: ``(1, 1, H, W)`` z-depth used by stage 1, or None.
    masks: ``{"local": (1,T,1,H,W), "valid": (1,T,1,H,W), "holes": (1,T,1,H,W) bool}`` (those known;
        the guided backend adds ``"motion"``, its Time-to-Move mask M).
    """

    frames: np.ndarray
    video: torch.Tensor
    flow: Optional[torch.Tensor] = None
    depth: Optional[torch.Tensor] = None
    masks: Optional[Dict[str, torch.Tensor]] = None

    def to_tuple(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None)

    def __getitem__(self, key: Union[str, int]) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def keys(self) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None)


def default_size(height: int, width: int, max_side: int = DEFAULT_LONG_SIDE,
                 multiple: int = SIZE_MULTIPLE) -> Tuple[int, int]:
    """Working size for an image of ``height x width`` when none is requested.

    Keeps the aspect ratio, scales down (never up) so the long side is at most ``max_side`` (512) and
    rounds both sides to the nearest multiple of ``multiple`` (8, what the diffusion backend's VAE
    needs), at least ``multiple``.
    """
    scale = min(1.0, max_side / max(height, width))
    return (max(multiple, int(round(height * scale / multiple)) * multiple),
            max(multiple, int(round(width * scale / multiple)) * multiple))


def resolve_size(image_hw: Tuple[int, int], height: Optional[int], width: Optional[int]) -> Tuple[int, int]:
    """Working ``(H, W)``: both given -> as given; one given -> the other from the aspect ratio
    (rounded to a multiple of 8); none -> :func:`default_size`."""
    h0, w0 = image_hw
    if height is None and width is None:
        return default_size(h0, w0)
    if height is None:
        height = max(SIZE_MULTIPLE, int(round(width * h0 / w0 / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    if width is None:
        width = max(SIZE_MULTIPLE, int(round(height * w0 / h0 / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    return int(height), int(width)


def load_image(image: ImageInput, source: Optional[str] = None) -> torch.Tensor:
    """Any supported image input as ``(1, 3, H, W)`` float32 in [0, 1].

    Accepts a file path, a PIL image (any mode; alpha is dropped), a numpy array ``(H,W)``,
    ``(H,W,3|4)`` uint8 or float in [0, 1], or a tensor ``(3,H,W)`` / ``(1,3,H,W)`` (float in [0,1] or
    uint8) or ``(H,W,3)`` uint8.
    """
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        from flowctrl.io_safety import open_image

        path = Path(image)
        # regular file, header size bounded, decoding errors (bombs too) as one InputError line
        with open_image(path, "input", InputError, missing="image file not found") as im:
            im.load()
            image = im.convert("RGB")
        source = str(path)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise InputError.at(source, "image", f"array has shape {arr.shape}", "give (H, W, 3) RGB")
        arr = np.array(arr[..., :3], copy=True)  # own, writable memory: the caller's array is never aliased
        t = torch.from_numpy(arr).permute(2, 0, 1)
        t = t.float() / 255.0 if arr.dtype == np.uint8 else t.float()
        image = t.unsqueeze(0)
    if not isinstance(image, torch.Tensor):
        raise InputError.at(source, "image", f"unsupported type {type(image).__name__}",
                            "give a path, PIL image, numpy array or tensor")
    t = image
    if t.ndim == 3 and t.shape[0] != 3 and t.shape[-1] == 3:
        t = t.permute(2, 0, 1)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[:2] != (1, 3):
        raise InputError.at(source, "image", f"tensor has shape {tuple(t.shape)}", "give (3, H, W) or (1, 3, H, W)")
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if not bool(torch.isfinite(t).all()):
        raise InputError.at(source, "image", "contains NaN or infinite values", "give finite values in [0, 1]")
    return t.clamp(0, 1)


def resize_image(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``(B, 3, h, w)`` in [0, 1] → ``(B, 3, H, W)`` for ``size = (H, W)`` (bilinear, antialiased; as is when equal)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def video_to_frames(video: torch.Tensor) -> np.ndarray:
    """``(1, T, 3, H, W)`` float in [0, 1] -> ``(T, H, W, 3)`` uint8 (rounded)."""
    from flowctrl.video_io import to_uint8_frames

    return to_uint8_frames(video[0])


class FlowCtrlPipeline:
    """Image + motion controls -> video, through one unified optical-flow field.

    Args:
        backend: ``"warp"`` (default; CPU, no weights), ``"diffusion"`` (learned renderer; see
            :meth:`from_pretrained`) or any object with a ``render`` method
            (:class:`~flowctrl.pipelines.backends.RenderBackend`).
        flow_model: optional learned stage-1 refiner applied after the analytic flow: a
            ``FlowGenerationPipeline`` (or anything with the same ``__call__``) or a local path / hub id
            it is loaded from.
        depth_model: default Depth-Anything folder / hub id for camera controls when no depth is given.
        **backend_kwargs: options of a named backend, e.g. ``fill="inpaint"`` for ``"warp"``.

    The pipeline keeps no state between calls: results depend only on the inputs and ``generator``.
    """

    def __init__(self, backend: Union[str, RenderBackend] = "warp", flow_model: Any = None,
                 depth_model: Optional[str] = None, **backend_kwargs: Any) -> None:
        self.backend = get_backend(backend, **backend_kwargs)
        self.flow_model = self._load_flow_model(flow_model)
        self.depth_model = depth_model
        self.device = torch.device("cpu")

    def __repr__(self) -> str:
        return f"FlowCtrlPipeline(backend={self.backend!r}, flow_model={type(self.flow_model).__name__ if self.flow_model else None})"

    @classmethod
    def from_pretrained(cls, path_or_hub_id: Union[str, "os.PathLike[str]"], flow_model: Any = None,
                        **kwargs: Any) -> "FlowCtrlPipeline":
        """Pipeline with the learned diffusion backend loaded from a local folder or hub id.

        Delegates to ``flowctrl.pipelines.diffusion.DiffusionBackend.from_pretrained``; missing
        weights raise :class:`~flowctrl.errors.MissingWeightsError` (nothing is downloaded here).
        """
        factory = resolve_backend_factory("diffusion")
        backend = factory.from_pretrained(path_or_hub_id, **kwargs)
        return cls(backend=backend, flow_model=flow_model)

    @staticmethod
    def _load_flow_model(flow_model: Any) -> Any:
        if flow_model is None or callable(flow_model):
            return flow_model
        if isinstance(flow_model, (str, os.PathLike)):
            try:
                from flowctrl.pipelines.flow_generation import FlowGenerationPipeline
            except ModuleNotFoundError:
                from flowctrl.errors import MissingWeightsError

                raise MissingWeightsError.at(str(flow_model), "flow_model", "the learned flow model is not part of this install",
                                             "omit --flow-model to use the analytic flow") from None
            return FlowGenerationPipeline.from_pretrained(flow_model)
        raise InputError.at(None, "flow_model", f"unsupported type {type(flow_model).__name__}",
                            "pass a FlowGenerationPipeline or a folder path")

    def to(self, device: Union[str, torch.device]) -> "FlowCtrlPipeline":
        """Run on ``device`` (inputs are moved there; backends with modules move themselves)."""
        self.device = torch.device(device)
        for part in (self.backend, self.flow_model):
            if part is not None and hasattr(part, "to"):
                part.to(self.device)
        return self

    # -- stage 1 ---------------------------------------------------------------------------

    def prepare(self, image: ImageInput, controls: Any = None, height: Optional[int] = None,
                width: Optional[int] = None, num_frames: int = 49) -> Tuple[torch.Tensor, Any]:
        """Load and resize the image, validate the size, and scale the controls to it.

        Returns ``(image (1,3,H,W) at the working size, controls resized to (H, W))``.
        """
        img = load_image(image)
        h0, w0 = img.shape[-2:]
        H, W = resolve_size((h0, w0), height, width)
        check_render_size(H, W, int(num_frames))
        img = resize_image(img, (H, W)).to(self.device)
        controls = _controls_for(controls, (h0, w0)).resized(H, W)
        ref = getattr(controls, "ref_video", None)
        if ref is not None and not isinstance(ref, torch.Tensor):
            from flowctrl.controls import load_reference_video

            controls = _replace(controls, ref_video=load_reference_video(ref, num_frames=int(num_frames), size=(H, W)))
        return img, controls

    def compute_flow(self, image: torch.Tensor, controls: Any, num_frames: int, *,
                     depth: Any = None, depth_model: Optional[str] = None, densify: str = "normalized",
                     generator: Optional[torch.Generator] = None, callback: Optional[ProgressCallback] = None,
                     flow_steps: int = 25, plane_distance: Optional[float] = None, segment: Any = "auto") -> Any:
        """Stage 1 on a prepared image: the analytic unified flow, then the flow model if any.

        Returns a ``UnifiedFlow`` (flow ``(1,T,2,H,W)`` px, depth, local_mask, valid, K, w2c, ...).
        """
        from flowctrl.pipelines.stage1 import compute_unified_flow

        unified = compute_unified_flow(
            image, controls, int(num_frames), depth=depth, depth_model=depth_model or self.depth_model,
            densify=densify, generator=generator, callback=callback, plane_distance=plane_distance,
            segment=segment,
        )
        if self.flow_model is not None:
            flow = self.flow_model(image, unified, num_inference_steps=flow_steps, generator=generator,
                                   callback=callback)
            flow = flow.to(unified.flow.dtype)
            if tuple(flow.shape) != tuple(unified.flow.shape):
                raise InputError.at(None, "flow_model", f"returned flow {tuple(flow.shape)}, expected "
                                    f"{tuple(unified.flow.shape)}", "check the flow model's configuration")
            flow[:, 0] = 0  # the reference frame never moves
            unified = _replace(unified, flow=flow)
        return unified

    # -- the whole thing -------------------------------------------------------------------

    def __call__(self, image: ImageInput, controls: Any = None, num_frames: int = 49,
                 height: Optional[int] = None, width: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, return_flow: bool = True,
                 callback: Optional[ProgressCallback] = None, *, depth: Any = None,
                 depth_model: Optional[str] = None, densify: str = "normalized", flow_steps: int = 25,
                 plane_distance: Optional[float] = None, segment: Any = "auto", **render_kwargs: Any) -> FlowCtrlOutput:
        """Animate ``image`` with ``controls``.

        Args:
            image: path, PIL image, numpy ``(H,W,3)`` (uint8 or float in [0,1]) or tensor ``(1|,3,H,W)``.
            controls: a :class:`flowctrl.controls.Controls` (coordinates in pixels of the original
                image), or None for a still video.
            num_frames: T >= 2 (default 49 = CogVideoX's 8N+1).
            height, width: working size; default keeps the aspect ratio with the long side <= 512,
                both multiples of 8 (:func:`default_size`).
            generator: seeds stage 1 (and the learned backends); the warp backend is deterministic.
            return_flow: include flow, depth and masks in the output.
            callback: ``callback(stage, done, total)`` progress per stage.
            depth: z-depth (path or ``(1|,1,H,W)`` tensor) overriding ``controls.depth``.
            depth_model: Depth-Anything folder / hub id for camera controls.
            densify: ``"normalized"`` | ``"gaussian"`` sparse-to-dense mode of stage 1.
            segment: where local motion spreads: ``"auto"`` | ``"sam"`` | ``"edges"`` | ``"none"`` | a SAM
                folder / hub id (:mod:`flowctrl.segment`).
            flow_steps: sampling steps of the learned flow model.
            plane_distance: distance of the flat depth plane used when no depth is known (camera
                units); default the trajectory's ``scene_depth`` (an orbit's look-at depth), else 1.
            **render_kwargs: backend options (e.g. ``fill`` for warp, ``prompt`` for diffusion).
        Returns:
            :class:`FlowCtrlOutput`.
        """
        T = int(num_frames)
        img, controls = self.prepare(image, controls, height, width, T)
        if depth is None:
            depth = getattr(controls, "depth", None)
        unified = self.compute_flow(img, controls, T, depth=depth, depth_model=depth_model, densify=densify,
                                    generator=generator, callback=callback, flow_steps=flow_steps,
                                    plane_distance=plane_distance, segment=segment)
        result = self.backend.render(img, unified, num_frames=T, generator=generator, callback=callback,
                                     **render_kwargs)
        if isinstance(result, torch.Tensor):  # a third-party backend written to the older tensor-only protocol
            result = RenderResult(result)
        video, masks = result.video, dict(result.masks)
        if tuple(video.shape) != (1, T, 3) + tuple(img.shape[-2:]):
            raise FlowCtrlError(f"backend {type(self.backend).__name__} returned a video of shape "
                                f"{tuple(video.shape)}, expected {(1, T, 3) + tuple(img.shape[-2:])}")
        video = video.float().clamp_(0, 1)  # in place: the warp renderer's float32 video is already in [0, 1]
        if not return_flow:
            return FlowCtrlOutput(frames=video_to_frames(video), video=video)
        for key, name in (("local", "local_mask"), ("valid", "valid")):
            value = getattr(unified, name, None)
            if value is not None:
                masks[key] = value
        return FlowCtrlOutput(frames=video_to_frames(video), video=video, flow=unified.flow,
                              depth=getattr(unified, "depth", None), masks=masks)


    def stream(self, image: ImageInput, controls: Any = None, num_frames: int = 49, height: Optional[int] = None,
               width: Optional[int] = None, callback: Optional[ProgressCallback] = None, *, depth: Any = None,
               depth_model: Optional[str] = None, densify: str = "normalized", plane_distance: Optional[float] = None,
               segment: Any = "auto", fill: Optional[str] = None, chunk_frames: Optional[int] = None,
               workers: Optional[int] = None) -> Iterator[np.ndarray]:
        """The warp backend's video as ``(n, H, W, 3)`` uint8 chunks in frame order (same frames as ``__call__``).

        Stage 1's all-frames part runs now (bad inputs raise here); the rest runs per chunk of
        ``chunk_frames`` frames in ``workers`` threads while the caller consumes the chunks (e.g.
        :class:`flowctrl.video_io.VideoWriter`), so the whole video is never held as float tensors.
        Arguments as :meth:`__call__`; only the warp backend without a flow model streams.
        """
        from flowctrl.pipelines.stage1 import plan_unified_flow
        from flowctrl.pipelines.streaming import DEFAULT_CHUNK_FRAMES, stream_warp_video

        if not getattr(self.backend, "streams", False) or self.flow_model is not None:
            raise InputError.at(None, "backend", "only the warp backend without a flow model renders as a stream",
                                "call the pipeline itself (pipe(...)) for other backends")
        if self.backend.crop_valid:  # the crop depends on every frame: render at once, hand out in chunks
            out = self(image, controls, num_frames, height, width, callback=callback, depth=depth,
                       depth_model=depth_model, densify=densify, plane_distance=plane_distance,
                       return_flow=False, **({} if fill is None else {"fill": fill}))
            step = chunk_frames or 4
            return iter([out.frames[i:i + step] for i in range(0, out.frames.shape[0], step)])
        T = int(num_frames)
        img, controls = self.prepare(image, controls, height, width, T)
        if depth is None:
            depth = getattr(controls, "depth", None)
        plan = plan_unified_flow(img, controls, T, depth=depth, depth_model=depth_model or self.depth_model,
                                 densify=densify, callback=callback, plane_distance=plane_distance, segment=segment)
        return stream_warp_video(img.cpu(), plan, fill=self.backend.fill if fill is None else fill,
                                 alpha=self.backend.alpha, chunk_frames=chunk_frames or DEFAULT_CHUNK_FRAMES,
                                 workers=workers, callback=callback, resample=self.backend.resample)



def _replace(obj: Any, **changes: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **changes)
    for key, value in changes.items():
        setattr(obj, key, value)
    return obj


def _controls_for(controls: Any, image_hw: Tuple[int, int]) -> Any:
    """``controls`` (or empty controls) with ``image_size`` set to the original image's size if unset."""
    from flowctrl.controls import Controls

    if controls is None:
        return Controls(image_size=tuple(image_hw))
    if getattr(controls, "image_size", None) is None:
        return _replace(controls, image_size=tuple(image_hw))
    return controls


__all__ = ["FlowCtrlPipeline", "FlowCtrlOutput", "load_image", "default_size", "resolve_size", "video_to_frames",
           "MAX_SIDE"]
