"""Classifier-free guidance on text and on flow for the trained flow-conditioned video model.

Its own module so that the single-window pipeline (:mod:`flowctrl.pipelines.diffusion`) and the
long-video scheduler (:mod:`flowctrl.pipelines.long_video`) share it without importing each other.
"""
from __future__ import annotations

from typing import List, Tuple

import torch

__all__ = ["GuidanceConfig"]


class GuidanceConfig:
    """Classifier-free guidance on text and on flow.

    With ``ε(text, flow)`` the model output (``∅`` = negative prompt / flow dropped)::

        flow_scale == 0:              the flow is dropped (ε(·,∅) only, the unconditional model)
        text only (flow_scale == 1):  ε = ε(∅,f) + g_t·(ε(c,f) − ε(∅,f))
        flow only (text_scale <= 1):  ε = ε(c,∅) + g_f·(ε(c,f) − ε(c,∅))
        both:                         ε = ε(∅,∅) + g_f·(ε(∅,f) − ε(∅,∅)) + g_t·(ε(c,f) − ε(∅,f))

    All branches run as one batched transformer call per step.
    """

    def __init__(self, text_scale: float = 6.0, flow_scale: float = 1.0) -> None:
        self.text_scale = float(text_scale)
        self.flow_scale = float(flow_scale)

    @property
    def use_text(self) -> bool:
        return self.text_scale > 1.0

    @property
    def use_flow(self) -> bool:
        return self.flow_scale != 1.0

    @property
    def flow_off(self) -> bool:
        """``flow_scale == 0``: the flow is dropped entirely (the unconditional model)."""
        return self.flow_scale == 0.0

    def rows(self) -> List[Tuple[bool, float]]:
        """(use positive text, flow multiplier) per batched branch, in the order :meth:`combine` expects."""
        if self.flow_off:
            return [(False, 0.0), (True, 0.0)] if self.use_text else [(True, 0.0)]
        if self.use_text and self.use_flow:
            return [(False, 0.0), (False, 1.0), (True, 1.0)]
        if self.use_text:
            return [(False, 1.0), (True, 1.0)]
        if self.use_flow:
            return [(True, 0.0), (True, 1.0)]
        return [(True, 1.0)]

    def combine(self, out: torch.Tensor) -> torch.Tensor:
        """``out (R·B, ...)`` branch outputs stacked as :meth:`rows` → guided ``(B, ...)``."""
        parts = out.chunk(len(self.rows()))
        if self.use_text and self.use_flow and not self.flow_off:
            uu, uf, cf = parts
            return uu + self.flow_scale * (uf - uu) + self.text_scale * (cf - uf)
        if self.use_text:
            uf, cf = parts
            return uf + self.text_scale * (cf - uf)
        if self.use_flow and not self.flow_off:
            cu, cf = parts
            return cu + self.flow_scale * (cf - cu)
        return parts[0]
