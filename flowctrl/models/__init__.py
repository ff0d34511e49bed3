"""Learned parts (diffusers style: ModelMixin + ConfigMixin, safetensors weights). They never read files
themselves beyond ``from_pretrained``; importing a model module imports diffusers, so this package
loads its members lazily.

Stage 1: :class:`FlowCodec`, :class:`FlowGenerationModel` (FGM), :class:`CameraReferenceModel` (CRM),
:class:`ReferenceAttnProcessor`, :class:`RefinementNet` (T), :class:`ConditionEncoder`,
:class:`MotionStrengthEmbedding`. Stage 2: :class:`FlowCtrlTransformer`, :class:`FrequencyStabilizer`.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "FlowCodec": "flowctrl.models.flow_codec",
    "FlowGenerationModel": "flowctrl.models.fgm",
    "CameraReferenceModel": "flowctrl.models.crm",
    "ReferenceAttnProcessor": "flowctrl.models.reference_attention",
    "RefinementNet": "flowctrl.models.refiner",
    "ConditionEncoder": "flowctrl.models.guider",
    "MotionStrengthEmbedding": "flowctrl.models.embeddings",
    "FlowCtrlTransformer": "flowctrl.models.transformer",
    "FrequencyStabilizer": "flowctrl.models.frequency",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flowctrl.models' has no attribute {name!r}")
