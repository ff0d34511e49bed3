"""Small helpers shared by the command modules."""
from __future__ import annotations

from pathlib import Path


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (hard links and symlinks included; also for a path that
    does not exist yet, by its resolved name) — used so that an output never overwrites an input."""
    from flowctrl.io_safety import same_file as _same_file  # the one output rule's definition

    return _same_file(a, b)
