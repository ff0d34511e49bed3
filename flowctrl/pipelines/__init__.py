"""Pipelines: :class:`FlowCtrlPipeline` (the public entry), stage-1 flow and stage-2 render backends.

Submodules load lazily, so ``import flowctrl.pipelines`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "FlowCtrlPipeline": "flowctrl.pipelines.flowctrl_pipeline",
    "FlowCtrlOutput": "flowctrl.pipelines.flowctrl_pipeline",
    "RenderBackend": "flowctrl.pipelines.backends",
    "WarpBackend": "flowctrl.pipelines.backends",
    "register_backend": "flowctrl.pipelines.backends",
    "get_backend": "flowctrl.pipelines.backends",
    "available_backends": "flowctrl.pipelines.backends",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flowctrl.pipelines' has no attribute {name!r}")
