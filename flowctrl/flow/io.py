"""Flow files: Middlebury ``.flo``, NumPy ``.npy`` and ``.safetensors``.

* ``.safetensors``: tensor ``"flow"`` ``(B, T, 2, H, W)`` float32 plus optional extras (``valid``,
  ``local_mask``, ``depth``, ``K``, ``w2c``, ...) and metadata ``{"format": "flowctrl-flow", ...}``.
* ``.npy``: the flow array alone, ``(B, T, 2, H, W)`` float32.
* ``.flo``: the Middlebury format (``PIEH`` tag = 202021.25, int32 width, int32 height, then
  ``H × W × (dx, dy)`` float32). A one-field flow is a standard file; a multi-frame flow is stored
  as consecutive Middlebury records (frame 0 first), which standard readers see as its frame 0.

Writes are atomic (temporary file + rename) and refuse to replace an input.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch

from flowctrl.errors import InputError

FLO_TAG = 202021.25
SUFFIXES = (".flo", ".npy", ".safetensors")
PathLike = Union[str, "os.PathLike[str]"]


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError.at(path, "suffix", f"flow format {suffix or '(none)'} is not supported", "use .safetensors, .npy or .flo")
    return suffix


def _atomic_write(path: Path, write) -> None:
    from flowctrl.io_safety import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".tmp") as tmp:
        write(str(tmp))


def save_flow(path: PathLike, flow: torch.Tensor, extras: Optional[Dict[str, torch.Tensor]] = None,
              metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write ``flow (..., 2, H, W)`` pixels to ``path`` (format from the suffix); returns the path.

    ``extras`` (tensors) and ``metadata`` (strings) are kept only by ``.safetensors``.
    """
    path = Path(path)
    suffix = _suffix(path)
    flow = torch.as_tensor(flow).detach().to(torch.float32).cpu()
    if flow.dim() < 3 or flow.shape[-3] != 2:
        raise ValueError(f"flow must be (..., 2, H, W), got {tuple(flow.shape)}")
    if suffix == ".npy":
        def write_npy(tmp: str) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a name
                np.save(fh, flow.numpy())

        _atomic_write(path, write_npy)
    elif suffix == ".flo":
        h, w = flow.shape[-2:]
        fields = flow.reshape(-1, 2, h, w).permute(0, 2, 3, 1).contiguous().numpy()

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                for field in fields:
                    np.array([FLO_TAG], np.float32).tofile(fh)
                    np.array([w, h], np.int32).tofile(fh)
                    field.astype(np.float32).tofile(fh)

        _atomic_write(path, write)
    else:
        from safetensors.torch import save_file

        tensors = {"flow": flow.contiguous()}
        for key, value in (extras or {}).items():
            if value is not None:
                value = torch.as_tensor(value).detach().cpu()
                tensors[key] = (value.to(torch.uint8) if value.dtype == torch.bool else value).contiguous().clone()
        meta = {"format": "flowctrl-flow", "layout": "B,T,2,H,W", "units": "pixels",
                "channels": "dx right, dy down", "form": "reference (F[:,t] maps frame-0 pixels to frame t)"}
        meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
        _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def load_flow_file(path: PathLike) -> Dict[str, torch.Tensor]:
    """Every tensor of a flow file: ``{"flow": ..., **extras}`` (extras only from ``.safetensors``)."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise InputError.at(path, None, "flow file not found", "check the path")
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            out = {"flow": torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))}
        elif suffix == ".flo":
            out = {"flow": _read_flo(path)}
        else:
            from safetensors.torch import load_file

            out = load_file(str(path))
    except InputError:
        raise
    except Exception as exc:  # any parser failure is a bad file
        raise InputError.at(path, None, f"not a readable {suffix} flow file ({type(exc).__name__})", "re-export it") from exc
    if "flow" not in out:
        raise InputError.at(path, "flow", "no tensor named 'flow'", "save it with flowctrl.flow.io.save_flow")
    flow = out["flow"]
    if flow.dim() < 3 or flow.shape[-3] != 2:
        raise InputError.at(path, "flow", f"has shape {tuple(flow.shape)}", "expected (..., 2, H, W)")
    if not torch.isfinite(flow).all():
        raise InputError.at(path, "flow", "contains NaN or infinite values", "re-export a finite flow")
    return out


def load_flow(path: PathLike) -> torch.Tensor:
    """Read a flow written by :func:`save_flow` (or any ``.flo``); ``.flo`` gives ``(1, T, 2, H, W)``."""
    return load_flow_file(path)["flow"]


def _read_flo(path: Path) -> torch.Tensor:
    data = path.read_bytes()
    fields = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 12:
            raise InputError.at(path, "header", "truncated Middlebury header", "re-export the file")
        tag = np.frombuffer(data, np.float32, 1, offset)[0]
        if tag != np.float32(FLO_TAG):
            raise InputError.at(path, "tag", f"is {tag!r}, not the Middlebury PIEH tag", "give a .flo file")
        w, h = (int(v) for v in np.frombuffer(data, np.int32, 2, offset + 4))
        n = w * h * 2
        if w <= 0 or h <= 0 or len(data) - offset - 12 < 4 * n:
            raise InputError.at(path, "size", f"header says {w}x{h} but the data is shorter", "re-export the file")
        field = np.frombuffer(data, np.float32, n, offset + 12).reshape(h, w, 2)
        fields.append(torch.from_numpy(field.copy()).permute(2, 0, 1))
        offset += 12 + 4 * n
    if not fields:
        raise InputError.at(path, None, "empty .flo file", "re-export the file")
    return torch.stack(fields)[None]
