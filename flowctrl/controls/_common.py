"""Shared helpers of the control-file parsers: reading JSON, checking fields, coordinate units.

Pixel convention (everywhere in flowctrl.controls): a coordinate ``(x, y)`` is in pixels of the
image with pixel ``(i, j)`` centred at ``x = j, y = i`` (OpenCV / array-index convention), so the
image spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. Normalized coordinates ``u, v`` in ``[0, 1]``
span the whole image: ``x = u * W - 0.5``, ``y = v * H - 0.5``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from flowctrl.errors import ControlFileError

PathLike = Union[str, Path]
Size = Tuple[int, int]  # (H, W)

UNITS = ("px", "normalized")
# Every number in a control file is finite and at most this large unless its field names its own
# range: 1e308 passes float() but overflows the flow math (and 1e6 px is far beyond any image).
MAX_MAGNITUDE = 1e6


def err(source: Any, field: Optional[str], problem: str, fix: str = "") -> ControlFileError:
    """A :class:`ControlFileError` with the uniform one-line wording."""
    return ControlFileError.at(source, field, problem, fix)  # type: ignore[return-value]


def read_text(path: PathLike, what: str) -> str:
    """Read a UTF-8 text file of at most :data:`~flowctrl.io_safety.MAX_CONTROL_BYTES`; a missing
    path, a folder, a FIFO or device, a too large file and every OS / decoding failure become a
    ControlFileError (never a hang or an unbounded read)."""
    from flowctrl.io_safety import MAX_CONTROL_BYTES, read_bounded_text

    return read_bounded_text(path, what, ControlFileError, max_bytes=MAX_CONTROL_BYTES)


def read_json(path: PathLike, what: str) -> Any:
    """Parse a JSON file; syntax errors name the line and column."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise err(path, f"line {error.lineno} column {error.colno}", f"invalid JSON ({error.msg})",
                  "fix the JSON syntax") from None
    except RecursionError:
        raise err(path, None, "JSON nesting is too deep", "flatten the file") from None


def type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def expect_object(value: Any, source: Any, field: str, example: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise err(source, field, f"is {type_name(value)}, expected an object", f"write it like {example}")
    return value


def expect_list(value: Any, source: Any, field: str, example: str, min_len: int = 0) -> List[Any]:
    if not isinstance(value, list):
        raise err(source, field, f"is {type_name(value)}, expected a list", f"write it like {example}")
    if len(value) < min_len:
        raise err(source, field, f"has {len(value)} entries, needs at least {min_len}", f"write it like {example}")
    return value


def require(obj: Mapping[str, Any], key: str, source: Any, field: str, example: str) -> Any:
    if key not in obj:
        raise err(source, f"{field}.{key}" if field else key, "missing required field", f"add it, e.g. {example}")
    return obj[key]


def reject_unknown(obj: Mapping[str, Any], known: Iterable[str], source: Any, field: str) -> None:
    """Unknown keys are almost always typos (``strenght``); name them instead of ignoring them."""
    known = list(known)
    for key in obj:
        if key not in known:
            where = f"{field}.{key}" if field else str(key)
            raise err(source, where, "unknown field", f"known fields are {', '.join(known)}")


def number(value: Any, source: Any, field: str, *, low: Optional[float] = None, high: Optional[float] = None,
           low_open: bool = False, integer: bool = False) -> float:
    """A finite JSON number (not a boolean) inside optional bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise err(source, field, f"is {type_name(value)}, expected a number", "give a number")
    try:
        value = float(value)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise err(source, field, f"is {value}, not a finite number", "give a finite number")
    if low is None and high is None and abs(value) > MAX_MAGNITUDE:
        raise err(source, field, f"is {value:g}, outside [-{MAX_MAGNITUDE:g}, {MAX_MAGNITUDE:g}]",
                  f"give a value of at most {MAX_MAGNITUDE:g} in magnitude")
    if low is not None and high is None and value > MAX_MAGNITUDE:
        high = MAX_MAGNITUDE
    if integer and value != int(value):
        raise err(source, field, f"is {value}, expected a whole number", "give an integer")
    if low is not None and (value < low or (low_open and value == low)):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise err(source, field, f"is {value:g}, must be {bound}", f"give a value {bound}")
    if high is not None and value > high:
        raise err(source, field, f"is {value:g}, must be <= {high:g}", f"give a value <= {high:g}")
    return value


def number_list(value: Any, source: Any, field: str, length: Optional[int] = None, example: str = "[x, y]",
                **bounds: Any) -> List[float]:
    """A list of :func:`number` s (``bounds``: its ``low`` / ``high`` / ``low_open`` keywords)."""
    items = expect_list(value, source, field, example)
    if length is not None and len(items) != length:
        raise err(source, field, f"has {len(items)} numbers, expected {length}", f"give {example}")
    return [number(v, source, f"{field}[{i}]", **bounds) for i, v in enumerate(items)]


def parse_units(obj: Mapping[str, Any], source: Any, default: str = "px") -> str:
    units = obj.get("units", default)
    if units not in UNITS:
        raise err(source, "units", f"is {units!r}", 'use "px" or "normalized"')
    return units


def to_pixels(xy: Sequence[float], units: str, image_size: Optional[Size], source: Any, field: str,
              check_range: bool = True) -> Tuple[float, float]:
    """Convert one ``[x, y]`` in ``units`` to pixels of ``image_size`` and check it lies on the image."""
    x, y = float(xy[0]), float(xy[1])
    if units == "normalized":
        if check_range and not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise err(source, field, f"[{x:g}, {y:g}] is outside [0, 1] (units normalized)",
                      "normalized coordinates must lie in [0, 1]")
        if image_size is None:
            raise err(source, "units", "normalized coordinates need the image size",
                      "pass image_size=(H, W) (the CLI does this from --image) or use pixel units")
        height, width = image_size
        return x * width - 0.5, y * height - 0.5
    if check_range:
        if image_size is None:
            if x < -0.5 or y < -0.5:
                raise err(source, field, f"[{x:g}, {y:g}] is negative", "pixel coordinates must lie on the image")
        else:
            height, width = image_size
            if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
                raise err(source, field, f"[{x:g}, {y:g}] is outside the {width}x{height} image",
                          f"pixel coordinates must lie in [0, {width - 1}] x [0, {height - 1}] (or use units normalized)")
    return x, y


def rescale_points(points: np.ndarray, old_size: Size, new_size: Size) -> np.ndarray:
    """Map pixel coordinates ``(..., 2)`` of an ``old_size`` image onto a ``new_size`` image."""
    sy = new_size[0] / old_size[0]
    sx = new_size[1] / old_size[1]
    out = np.array(points, dtype=np.float64, copy=True)
    out[..., 0] = (out[..., 0] + 0.5) * sx - 0.5
    out[..., 1] = (out[..., 1] + 0.5) * sy - 0.5
    return out


def resolve_path(value: Any, base: Optional[Path], source: Any, field: str) -> Path:
    """A path string from a file, relative to ``base`` (the folder of the file that names it)."""
    if not isinstance(value, str) or not value:
        raise err(source, field, f"is {type_name(value)}, expected a file path string", 'give a path like "mask.png"')
    from flowctrl.io_safety import confined_path, references_confined

    if references_confined():  # the web app: uploads may only name files beside themselves
        problem = confined_path(value, base)
        if problem is not None:
            raise err(source, field, f"{problem}; only file names inside the uploaded file's folder are allowed",
                      'give a plain file name like "mask.png"')
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def check_image_size(image_size: Any, source: Any = None, field: str = "image_size") -> Optional[Size]:
    if image_size is None:
        return None
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in image_size)):
        raise err(source, field, f"is {image_size!r}", "give (H, W) as two positive integers")
    return int(image_size[0]), int(image_size[1])
