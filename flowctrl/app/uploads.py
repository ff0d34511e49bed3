"""Uploads in the web app: what an uploaded file may name, and how errors name the files.

An uploaded control file may name other files (an arrow's ``mask``, a bundle's entries). On a server
that would let a visitor make it read any path (``/etc/...``) and learn from the error text whether
a file exists. :func:`guard_uploads` runs a loader with :func:`flowctrl.io_safety.confined_references`
(relative names inside the upload's own folder only), and rewrites error messages so they show the
user's file names, never the server's temporary paths.
"""
from __future__ import annotations

import functools
import os
import re
import tempfile
from typing import Any, Callable, Iterable, TypeVar

from flowctrl.errors import FlowCtrlError
from flowctrl.io_safety import confined_references

F = TypeVar("F", bound=Callable[..., Any])

# keyword arguments of the app's loaders that hold uploaded file paths
UPLOAD_KEYWORDS = ("ref_video",)


def user_facing(message: str, uploads: Iterable[Any] = ()) -> str:
    """``message`` with every uploaded file's server path replaced by its file name, and any other
    path under the temporary folder (gradio's upload cache) by its last component."""
    for upload in uploads:
        path = os.fspath(upload)
        folder = os.path.dirname(path)
        message = message.replace(path, os.path.basename(path))
        if folder:
            message = message.replace(folder + os.sep, "")
    for root in {tempfile.gettempdir(), os.path.realpath(tempfile.gettempdir())}:
        message = re.sub(re.escape(root.rstrip(os.sep)) + r"[/\\][^\s:;,'\"()]*",
                         lambda m: os.path.basename(m.group(0)) or "file", message)
    return message


def guard_uploads(func: F) -> F:
    """Decorate an app loader (e.g. ``build_controls``): file paths inside uploads stay inside their
    folder, and a :class:`FlowCtrlError` is re-raised (same class) with :func:`user_facing` text.
    Upload paths are the keyword arguments ending in ``_file``, the values of dicts ending in ``_files``
    and those in :data:`UPLOAD_KEYWORDS`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        uploads = [v for k, v in kwargs.items() if isinstance(v, (str, os.PathLike))
                   and (k.endswith("_file") or k in UPLOAD_KEYWORDS)]
        uploads += [v for k, d in kwargs.items() if k.endswith("_files") and isinstance(d, dict)  # control_files
                    for v in d.values() if isinstance(v, (str, os.PathLike))]
        try:
            with confined_references():
                return func(*args, **kwargs)
        except FlowCtrlError as error:
            raise type(error)(user_facing(str(error), uploads)) from None

    return wrapper  # type: ignore[return-value]
