"""Small helpers shared by the command modules."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO, Tuple


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (hard links and symlinks included; also for a path that
    does not exist yet, by its resolved name) — used so that an output never overwrites an input."""
    from flowctrl.io_safety import same_file as _same_file  # the one output rule's definition

    return _same_file(a, b)


def terminal_size(file: TextIO) -> Tuple[int, int]:
    """``(columns, lines)`` of the terminal behind ``file``; 80x24 where it reports none."""
    try:
        size = os.get_terminal_size(file.fileno())
        cols, rows = size.columns, size.lines
    except (AttributeError, OSError, ValueError):
        cols = rows = 0
    return cols if cols > 0 else 80, rows if rows > 0 else 24
