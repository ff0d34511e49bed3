"""Stage-2 render backends: the protocol, a name registry, and the default warp backend.

A backend turns the reference image and the unified flow into a video::

    class MyBackend:
        def render(self, image, unified, *, num_frames, generator=None, callback=None, **kw):
            ...  # -> RenderResult(video (1, T, 3, H, W) float in [0, 1], masks {name: (1, T, 1, H, W) bool})

    register_backend("mine", MyBackend)
    FlowCtrlPipeline(backend="mine")          # or FlowCtrlPipeline(backend=MyBackend())

``"warp"`` (this module) needs no weights. ``"guided"`` and ``"diffusion"`` are resolved lazily so that
importing flowctrl never loads diffusers. Which options each backend takes is declared once, in
:mod:`flowctrl.pipelines.backend_options`.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, Union, runtime_checkable

import torch

from flowctrl.errors import InputError, MissingWeightsError
from flowctrl.pipelines.backend_options import check_render_options
from flowctrl.render.fill import normalize_fill_mode
from flowctrl.render.warp_renderer import DEFAULT_ALPHA, WarpRender, render_warp

logger = logging.getLogger("flowctrl")

ProgressCallback = Callable[[str, int, int], None]


@dataclass
class RenderResult:
    """What a backend's ``render`` returns.

    video: ``(1, T, 3, H, W)`` float in [0, 1]. masks: per-pixel masks of the render, each
    ``(1, T, 1, H, W)`` bool — ``"holes"`` (nothing landed there; filled), and with the guided backend
    ``"motion"`` (where the warp was imposed on the model).
    """

    video: torch.Tensor
    masks: Dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class RenderBackend(Protocol):
    """What :class:`~flowctrl.pipelines.FlowCtrlPipeline` needs from a stage-2 renderer."""

    def render(self, image: torch.Tensor, unified: Any, *, num_frames: int,
               generator: Optional[torch.Generator] = None, callback: Optional[ProgressCallback] = None,
               **kw: Any) -> RenderResult:
        """Render the video (and its masks) from ``image`` ``(1,3,H,W)`` and a ``UnifiedFlow``."""
        ...


# name -> factory (a callable returning a backend) or "module:attribute" resolved on first use
_REGISTRY: Dict[str, Union[Callable[..., RenderBackend], str]] = {
    "diffusion": "flowctrl.pipelines.diffusion:DiffusionBackend",
    "guided": "flowctrl.pipelines.guided:GuidedBackend",
}


def register_backend(name: str, factory: Union[Callable[..., RenderBackend], str]) -> None:
    """Register a backend factory (class or callable, or a lazy ``"module:attr"`` string) under ``name``."""
    _REGISTRY[name] = factory


def available_backends() -> List[str]:
    """Registered backend names (resolvable or not)."""
    return sorted(_REGISTRY)


def resolve_backend_factory(name: str) -> Callable[..., RenderBackend]:
    """The factory registered under ``name``, importing lazy entries.

    Raises:
        InputError: unknown name.
        MissingWeightsError: the module implementing the backend is not part of this install.
    """
    if name not in _REGISTRY:
        raise InputError.at(None, "backend", f"unknown backend '{name}'",
                            f"use one of {', '.join(available_backends())} or pass a RenderBackend object")
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        module_name, attr = factory.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                raise MissingWeightsError.at(
                    None, "backend", f"the '{name}' backend is not available in this install ({module_name} is missing)",
                    "use --backend warp (no weights needed) or install a flowctrl build with the diffusion backend",
                ) from None
            raise
        factory = getattr(module, attr)
    return factory


def get_backend(backend: Union[str, RenderBackend], **kwargs: Any) -> RenderBackend:
    """An instantiated backend: pass-through for objects, registry lookup + construction for names."""
    if not isinstance(backend, str):
        if not callable(getattr(backend, "render", None)):
            raise InputError.at(None, "backend", f"{type(backend).__name__} has no render() method",
                                "pass 'warp', 'diffusion' or an object implementing RenderBackend.render")
        if kwargs:
            raise InputError.at(None, "backend", "options were given with a backend object",
                                "configure the backend object itself")
        return backend
    return resolve_backend_factory(backend)(**kwargs)


class WarpBackend:
    """Default stage-2 backend: softmax splatting along the unified flow + hole filling (no weights).

    It can also render a few frames at a time straight into the video encoder (:attr:`streams`,
    :meth:`FlowCtrlPipeline.stream`).

    Args:
        fill: ``"push-pull"`` (default) | ``"inpaint"`` | ``"none"``.
        alpha: importance range of the softmax weights (larger = harder z-test).
        crop_valid: crop and zoom every frame to the area all frames cover (camera moves that uncover
            content), up to 2.5x (:mod:`flowctrl.render.crop`).
        sharp: re-sample every single-surface pixel once from the image (bicubic) instead of keeping the
            bilinear splat's blend: sharper frames (pan-left: Laplacian variance 0.67 of frame 0's in the
            middle of the clip instead of 0.42), about 1.6x the quick start's time
            (``benchmarks/bench_fill.py``).
    """

    streams = True  # FlowCtrlPipeline.stream can render it chunk by chunk

    def __init__(self, fill: str = "push-pull", alpha: float = DEFAULT_ALPHA, crop_valid: bool = False,
                 sharp: bool = False) -> None:
        self.fill = normalize_fill_mode(fill)
        self.alpha = float(alpha)
        self.crop_valid = bool(crop_valid)
        self.sharp = bool(sharp)

    @property
    def resample(self) -> str:
        """The renderer's ``resample`` mode: ``"bicubic"`` when sharp, else ``"splat"``."""
        return "bicubic" if self.sharp else "splat"

    def __repr__(self) -> str:
        return f"WarpBackend(fill={self.fill!r}, alpha={self.alpha}, crop_valid={self.crop_valid}, sharp={self.sharp})"

    def render_full(self, image: torch.Tensor, unified: Any, *, num_frames: Optional[int] = None,
                    callback: Optional[ProgressCallback] = None, fill: Optional[str] = None) -> WarpRender:
        """Render and also return the hole masks and stage timings (:class:`WarpRender`)."""
        flow = unified.flow
        if num_frames is not None and flow.shape[1] != num_frames:
            raise InputError.at(None, "num_frames", f"is {num_frames} but the flow has {flow.shape[1]} frames",
                                "compute the flow for the same number of frames")
        depth = getattr(unified, "depth", None)
        valid = getattr(unified, "valid", None)
        if self.crop_valid:
            from flowctrl.render.crop import crop_to_valid

            flow, _ = crop_to_valid(flow, valid)
        return render_warp(
            image, flow, depth=depth, valid=valid, K=getattr(unified, "K", None),
            w2c=getattr(unified, "w2c", None) if depth is not None else None,
            fill=self.fill if fill is None else fill, alpha=self.alpha, callback=callback, resample=self.resample,
        )

    def render(self, image: torch.Tensor, unified: Any, *, num_frames: int,
               generator: Optional[torch.Generator] = None, callback: Optional[ProgressCallback] = None,
               **kw: Any) -> torch.Tensor:
        """The video and its ``"holes"`` mask; deterministic (``generator`` is unused)."""
        ignored = check_render_options("warp", kw)
        if ignored:
            logger.info("warp backend ignores %s (used by the learned backends only)", ", ".join(ignored))
        result = self.render_full(image, unified, num_frames=num_frames, callback=callback, fill=kw.get("fill"))
        return RenderResult(result.video, {"holes": result.holes})


register_backend("warp", WarpBackend)
