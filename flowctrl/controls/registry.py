"""The registry of local control kinds, keyed by bundle field (``arrows``, ``drags``, ``pose``, ...).

Stage 1, the preview, bundles (:meth:`Controls.from_bundle` / ``from_files``), the CLI flags of
``generate`` and ``flow``, and the app iterate this registry instead of naming each kind. An entry
holds only names and help text, so building the CLI does not import torch; the kind's behaviour
(``CONTROL``, a :class:`flowctrl.controls.local.LocalControl`) is imported on first use.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Dict, List, Optional

__all__ = ["LocalControlEntry", "get_control", "local_control_entries", "register", "unregister"]


@dataclass(frozen=True)
class LocalControlEntry:
    """field: bundle key = ``Controls`` attribute = ``from_files`` keyword = CLI flag ``--field``.
    module: the module defining ``CONTROL``. help / flow_help: the ``generate`` / ``flow`` flag help."""

    field: str
    module: str
    help: str
    flow_help: Optional[str] = None

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def control(self):  # -> LocalControl
        return importlib.import_module(self.module).CONTROL


_ENTRIES: Dict[str, LocalControlEntry] = {}


def register(field: str, module: str, *, help: str, flow_help: Optional[str] = None) -> LocalControlEntry:
    """Add a local control kind (kinds are applied, drawn and listed in registration order)."""
    if not field.isidentifier() or field in _ENTRIES:
        raise ValueError(f"local control field {field!r} is not a new identifier")
    entry = LocalControlEntry(field, module, help, flow_help)
    _ENTRIES[field] = entry
    return entry


def unregister(field: str) -> None:
    """Remove a kind (tests that register their own)."""
    _ENTRIES.pop(field, None)


def local_control_entries() -> List[LocalControlEntry]:
    """Every registered kind, in registration order."""
    return list(_ENTRIES.values())


def get_control(field: str):  # -> LocalControl
    """The :class:`~flowctrl.controls.local.LocalControl` of the kind stored under ``field``."""
    return _ENTRIES[field].control


# the built-in kinds; a new kind adds one line here (docs/CONTRACTS.md, "How to add a control")
register("arrows", "flowctrl.controls.arrows", help="arrows JSON (e.g. examples/a.json)", flow_help="arrows JSON")
register("drags", "flowctrl.controls.drags", help="drag trajectories JSON or txt",
         flow_help="drags JSON or a Tora/MotionCtrl .txt trajectory")
register("pose", "flowctrl.controls.pose", help="pose keypoint sequence JSON",
         flow_help="pose keypoints JSON (COCO-17 / OpenPose-18)")
