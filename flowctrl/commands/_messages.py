"""How the command line words library warnings: the library names no CLI flag (the API and the app
have none), so the commands add the flags that act on a warning here."""
from __future__ import annotations

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
