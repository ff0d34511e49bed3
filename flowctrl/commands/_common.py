"""Small helpers shared by the command modules."""
from __future__ import annotations

import os
from pathlib import Path


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (hard links and symlinks included; also for a path that
    does not exist yet, by its resolved name) — used so that an output never overwrites an input."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()
