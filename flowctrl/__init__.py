"""flowctrl: controllable image-to-video through one unified optical-flow field.

Heavy modules load lazily: ``import flowctrl`` is cheap and never downloads anything.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "FlowCtrlPipeline": "flowctrl.pipelines",
    "Controls": "flowctrl.controls",
    "FlowCtrlError": "flowctrl.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flowctrl' has no attribute {name!r}")
