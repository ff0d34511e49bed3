"""Errors a user can cause. The CLI prints ``str(error)`` on one line and exits 2.

Every message names the file (when there is one), the field, what is wrong and how to fix it.
Build them with :func:`FlowCtrlError.at` so the wording stays uniform::

    raise ControlFileError.at("a.json", "arrows[2].start", "has 3 numbers", "give [x, y]")
    # -> a.json: arrows[2].start: has 3 numbers; give [x, y]
"""
from __future__ import annotations

from typing import Optional


class FlowCtrlError(Exception):
    """Base class of every error caused by user input (files, values, missing weights)."""

    @classmethod
    def at(cls, source: Optional[object], field: Optional[str], problem: str, fix: str = "") -> "FlowCtrlError":
        parts = [str(p) for p in (source, field) if p not in (None, "")]
        message = ": ".join(parts + [problem]) if parts else problem
        if fix:
            message += f"; {fix}"
        return cls(message)

    def __str__(self) -> str:  # one line, always
        return " ".join(super().__str__().split())


class ControlFileError(FlowCtrlError):
    """A control file (arrows, drags, camera, pose, mask, bundle, video) is missing or malformed."""


class InputError(FlowCtrlError):
    """An input image, size, frame count or option value is unusable."""


class OutputError(InputError):
    """An output cannot be written: its folder is read-only or missing, the disk is full, ..."""


class MissingWeightsError(FlowCtrlError):
    """A learned component was asked for but its weights are not available locally."""


class ConfigError(FlowCtrlError):
    """A training / benchmark configuration file is malformed."""
