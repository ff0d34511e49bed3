"""Small helpers shared by the command modules."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# What a library warning's advice is called on the command line: (warning class path, flags)
CLI_HINTS = (("flowctrl.depth.plane:FlatDepthWarning", "--depth FILE or --depth-model ID"),)


def cli_warning_text(message: Any, category: Any = None) -> str:
    """A library warning as one line for the command line: whitespace folded, and for warnings whose
    message speaks of inputs in general (the API has no flags), the flags that give them."""
    import importlib

    text = " ".join(str(message).split())
    for target, flags in CLI_HINTS:
        module, name = target.split(":")
        if category is not None and isinstance(category, type) and issubclass(
                category, getattr(importlib.import_module(module), name)):
            text += f"; on the command line: {flags}"
    return text


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (hard links and symlinks included; also for a path that
    does not exist yet, by its resolved name) — used so that an output never overwrites an input."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()
