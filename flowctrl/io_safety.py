"""The file-system promises in one place: bounded readers, one output-safety rule, one atomic writer.

* **Readers** (:func:`check_regular`, :func:`read_bounded_text`, :func:`open_image`) refuse anything
  that is not a regular file (a FIFO would block forever, ``/dev/zero`` would be read until memory
  runs out), cap control files at :data:`MAX_CONTROL_BYTES`, and read an image's size from its header
  before decoding it (at most :data:`MAX_IMAGE_PIXELS`). Every file they accept is noted in the
  active :class:`InputLog`, so a command knows every file the run reads, including the ones named
  inside bundles and control files.
* **The output rule** (:func:`check_outputs`): an output may not resolve (``realpath``, or the same
  inode through a hard link) to any input the run reads. Commands check it before any work.
* **The atomic writer** (:func:`atomic_path`): a temporary name beside the target, renamed over it
  only when complete; removed on any error and on SIGINT / SIGTERM / SIGHUP (:func:`install_signal_handlers`
  turns the latter two into :class:`Terminated`, so every ``finally`` / ``except BaseException``
  cleanup runs). OS errors (read-only folder, disk full) become one :class:`~flowctrl.errors.InputError` line.

This module is the bottom layer: it imports only :mod:`flowctrl.errors` (and PIL lazily).
"""
from __future__ import annotations

import atexit
import contextlib
import contextvars
import errno
import os
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Set, Tuple, Type, Union

from flowctrl.errors import FlowCtrlError, InputError, OutputError

PathLike = Union[str, "os.PathLike[str]"]

MAX_CONTROL_BYTES = 16 * 1024 * 1024  # control files (JSON / txt / YAML): the largest real ones are ~1 MB
MAX_IMAGE_PIXELS = 8192 * 8192        # images and masks: 268 MB as float32 RGB, far above any working size

__all__ = [
    "current_umask",
    "MAX_CONTROL_BYTES", "MAX_IMAGE_PIXELS", "InputLog", "Terminated", "atomic_path", "check_outputs",
    "check_safetensors_folder",
    "check_regular", "cleanup_pending", "install_signal_handlers", "note_input", "open_image",
    "os_error", "read_bounded_bytes", "read_bounded_text", "recording_inputs", "same_file",
]


# --------------------------------------------------------------------------- inputs of the run


class InputLog:
    """Every file a run has read: paths as given, their real paths and ``(device, inode)`` keys."""

    def __init__(self) -> None:
        self.paths: List[Path] = []
        self._keys: Set[Tuple[int, int]] = set()
        self._real: Set[str] = set()

    def add(self, path: PathLike) -> None:
        path = Path(path)
        real = os.path.realpath(path)
        if real in self._real:
            return
        self._real.add(real)
        self.paths.append(path)
        with contextlib.suppress(OSError):
            st = os.stat(path)
            self._keys.add((st.st_dev, st.st_ino))

    def holds(self, path: PathLike) -> bool:
        """Whether ``path`` (which may not exist yet) is one of the recorded inputs."""
        if os.path.realpath(path) in self._real:
            return True
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in self._keys

    def __iter__(self) -> Iterator[Path]:
        return iter(list(self.paths))


_LOG: contextvars.ContextVar[Optional[InputLog]] = contextvars.ContextVar("flowctrl_input_log", default=None)


@contextlib.contextmanager
def recording_inputs(log: Optional[InputLog] = None) -> Iterator[InputLog]:
    """Record every file the readers accept while the block runs (nested blocks share one log)."""
    outer = _LOG.get()
    log = log if log is not None else (outer if outer is not None else InputLog())
    token = _LOG.set(log)
    try:
        yield log
    finally:
        _LOG.reset(token)


def note_input(path: PathLike) -> None:
    """Add ``path`` to the active :class:`InputLog` (no-op outside :func:`recording_inputs`)."""
    log = _LOG.get()
    if log is not None:
        log.add(path)


_CONFINED: contextvars.ContextVar[bool] = contextvars.ContextVar("flowctrl_confined_references", default=False)


@contextlib.contextmanager
def confined_references() -> Iterator[None]:
    """While active, a path named *inside* a file (an arrow's ``mask``, a bundle's entries) must be a
    relative name inside the folder of the file that names it: absolute paths, ``~`` and ``..`` are
    refused, and so is a symlink that leads out of that folder. The web app reads uploads this way, so
    an uploaded file cannot make the server read (or reveal the existence of) any other file."""
    token = _CONFINED.set(True)
    try:
        yield
    finally:
        _CONFINED.reset(token)


def references_confined() -> bool:
    """Whether :func:`confined_references` is active."""
    return _CONFINED.get()


def confined_path(value: str, base: Optional[Path]) -> Optional[str]:
    """Why ``value`` (a path named inside a file in ``base``) is refused under
    :func:`confined_references`, or None when it stays inside ``base``. Decided without looking at
    whether the target exists."""
    if value.startswith("~") or os.path.isabs(value) or (os.sep != "/" and value.startswith("/")):
        return "is an absolute path"
    if ".." in Path(value).parts or ".." in value.replace("\\", "/").split("/"):
        return "leaves its folder (..)"
    if base is None:
        return "has no folder to resolve in"
    root = os.path.realpath(base)
    if not _inside(os.path.realpath(os.path.join(root, value)), root):
        return "leads out of its folder"
    return None


# --------------------------------------------------------------------------- bounded readers


def check_regular(path: PathLike, what: str, error: Type[FlowCtrlError] = InputError, *,
                  source: Any = None, field: Optional[str] = None, max_bytes: Optional[int] = None,
                  fix: str = "check the path", missing: Optional[str] = None) -> Path:
    """Refuse a missing path, a folder, or anything but a regular file (FIFO, device, socket), and
    files above ``max_bytes``; note the file as an input of the run. ``stat`` never blocks on a FIFO."""
    path = Path(path)
    where = source if source is not None else path
    detail = "" if source is None else f" ({path})"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error.at(where, field, (missing or f"{what} file does not exist") + detail, fix) from None
    except OSError as exc:
        raise error.at(where, field, f"cannot read {what} file{detail} ({exc.strerror or exc})", fix) from None
    if stat.S_ISDIR(st.st_mode):
        raise error.at(where, field, f"{what} path is a folder, not a file{detail}", "give the file inside it")
    if not stat.S_ISREG(st.st_mode):
        raise error.at(where, field, f"{what} path is not a regular file (a pipe, device or socket){detail}",
                       "give a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error.at(where, field, f"{what} file is {st.st_size} bytes, above the limit of {max_bytes}",
                       f"give a {what} file under {max_bytes // (1024 * 1024)} MB")
    note_input(path)
    return path


def read_bounded_bytes(path: PathLike, what: str, error: Type[FlowCtrlError] = InputError, *,
                       max_bytes: int = MAX_CONTROL_BYTES, source: Any = None, field: Optional[str] = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (also if it grows while being read)."""
    path = check_regular(path, what, error, source=source, field=field, max_bytes=max_bytes)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise error.at(source or path, field, f"cannot read {what} file ({exc.strerror or exc})",
                       "check its permissions") from None
    if len(data) > max_bytes:
        raise error.at(source or path, field, f"{what} file is larger than the limit of {max_bytes} bytes",
                       f"give a {what} file under {max_bytes // (1024 * 1024)} MB")
    return data


def read_bounded_text(path: PathLike, what: str, error: Type[FlowCtrlError] = InputError, *,
                      max_bytes: int = MAX_CONTROL_BYTES, source: Any = None, field: Optional[str] = None) -> str:
    """A UTF-8 text file read through :func:`read_bounded_bytes`; bad UTF-8 is one error line."""
    data = read_bounded_bytes(path, what, error, max_bytes=max_bytes, source=source, field=field)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error.at(source or path, field, f"{what} file is not UTF-8 text", f"give a UTF-8 text {what} file") from None


@contextlib.contextmanager
def open_image(path: PathLike, what: str, error: Type[FlowCtrlError] = InputError, *,
               max_pixels: int = MAX_IMAGE_PIXELS, source: Any = None, field: Optional[str] = None,
               missing: Optional[str] = None) -> Iterator[Any]:
    """Open an image with Pillow after checking it is a regular file and its header's size is at
    most ``max_pixels``; yields the (lazy) ``PIL.Image``. Decoding errors inside the block, Pillow's
    ``DecompressionBombError`` included, become one ``error`` line."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    path = check_regular(path, what, error, source=source, field=field, missing=missing)
    where = source or path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise error.at(where, field, f"{what} image is {width}x{height}, above the limit of "
                                   f"{max_pixels} pixels", "give a smaller image (e.g. at most 8192x8192)")
                yield image
    except FlowCtrlError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise error.at(where, field, f"{what} image is too large to decode safely (decompression bomb)",
                       "give a smaller image") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise error.at(where, field, f"{what} image cannot be read ({type(exc).__name__})",
                       "give a valid PNG or JPEG file") from None


# --------------------------------------------------------------------------- the output rule


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file: the same real path (symlinks resolved, also for a path that
    does not exist yet) or the same ``(device, inode)`` (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(child: str, folder: str) -> bool:
    return child != folder and child.startswith(folder.rstrip(os.sep) + os.sep)


def check_outputs(outputs: Iterable[Tuple[str, PathLike]], inputs: Iterable[PathLike] = (), *,
                  log: Optional[InputLog] = None) -> None:
    """The one output rule: every output (``(flag, path)``) is a non-empty path whose folder exists
    and that resolves to none of ``inputs`` nor any file in ``log`` (the active log by default);
    an output folder (PNG frames) may not contain an input either; no two outputs share one path."""
    log = log if log is not None else _LOG.get()
    named = [Path(p) for p in inputs]
    recorded = list(log) if log is not None else []
    seen = {}
    for flag, raw in outputs:
        text = os.fspath(raw)
        if not text.strip():
            raise InputError.at(flag, None, "is an empty path", "give an output file name")
        path = Path(text.rstrip("/" + os.sep) or text)
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise InputError.at(text, flag, f"folder '{parent}' does not exist", "create it first or choose another path")
        _probe_writable(parent, text, flag)
        real = os.path.realpath(path)
        for src in named + recorded:
            if same_file(path, src):
                raise InputError.at(text, flag, f"is the same file as the input {src}",
                                    "choose an output path that is not an input")
            if path.is_dir() and _inside(os.path.realpath(src), real):
                raise InputError.at(text, flag, f"is a folder holding the input {src}", "choose a new folder")
        if real in seen:
            raise InputError.at(text, flag, f"is the same path as {seen[real]}", "give each output its own path")
        seen[real] = flag


def _probe_writable(folder: Path, text: str, flag: str) -> None:
    """Create and remove a temporary file in ``folder``, so a read-only folder is refused before work."""
    try:
        fd, name = tempfile.mkstemp(prefix=".flowctrl-probe.", dir=folder)
    except OSError as error:
        raise os_error(error, text, flag) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.remove(name)


# --------------------------------------------------------------------------- the atomic writer

_PENDING: Set[str] = set()  # temporary files / folders not yet renamed into place
_PENDING_LOCK = threading.Lock()


def register_temp(path: PathLike) -> None:
    """Remember a temporary output so :func:`cleanup_pending` removes it if the process is stopped."""
    with _PENDING_LOCK:
        _PENDING.add(os.fspath(path))


def unregister_temp(path: PathLike) -> None:
    with _PENDING_LOCK:
        _PENDING.discard(os.fspath(path))


def cleanup_pending() -> None:
    """Remove every temporary output still pending (signal / exit paths)."""
    with _PENDING_LOCK:
        pending = list(_PENDING)
        _PENDING.clear()
    for tmp in pending:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(tmp)


atexit.register(cleanup_pending)


def current_umask() -> int:
    """The process's file-creation mask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def os_error(error: OSError, path: PathLike, flag: Optional[str] = None, action: str = "write") -> OutputError:
    """One :class:`~flowctrl.errors.OutputError` line for an OS error while writing ``path``."""
    reason = error.strerror or str(error) or type(error).__name__
    fix = {errno.ENOSPC: "free some disk space or choose another folder",
           errno.EROFS: "choose a writable folder", errno.EACCES: "choose a folder you may write to",
           errno.EPERM: "choose a folder you may write to", errno.EDQUOT: "free some space or choose another folder",
           }.get(error.errno or 0, "choose another output path")
    return OutputError.at(os.fspath(path), flag, f"cannot {action} ({reason})", fix)  # type: ignore[return-value]


@contextlib.contextmanager
def atomic_path(path: PathLike, *, flag: Optional[str] = None, folder: bool = False, replace: bool = False,
                suffix: Optional[str] = None, mode: Optional[int] = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it is renamed over
    ``path`` (``os.replace``), otherwise removed. ``folder=True`` yields a new temporary folder: an
    existing empty target folder is replaced, and with ``replace=True`` a non-empty one too (a saved
    model folder written again; the old one is moved aside first and deleted only after the rename).
    The temporary keeps ``suffix`` (default: the target's) so writers that pick a format from the
    name still work. OS errors become one line."""
    path = Path(os.fspath(path).rstrip("/" + os.sep) or os.fspath(path))
    parent = path.parent if str(path.parent) else Path(".")
    prefix = f".{path.name}."
    try:
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix if suffix is not None else (path.suffix or ".tmp"),
                                        dir=parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as error:
        raise os_error(error, path, flag) from None
    register_temp(tmp)
    try:
        yield tmp
        old = None
        if folder:
            os.chmod(tmp, (0o777 if mode is None else mode) & ~current_umask())
            if path.is_dir() and not path.is_symlink():
                if replace and any(path.iterdir()):
                    old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=parent))
                    register_temp(old)
                    os.replace(path, old)  # an empty folder is replaced by a rename
                else:
                    path.rmdir()  # only an empty folder: check_outputs refused a non-empty one
        else:
            os.chmod(tmp, (0o666 if mode is None else mode) & ~current_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            unregister_temp(old)
    except OSError as error:
        _remove(tmp)
        raise os_error(error, path, flag) from None
    except BaseException:
        _remove(tmp)
        raise
    finally:
        unregister_temp(tmp)


def _remove(tmp: Path) -> None:
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_bytes_atomic(path: PathLike, data: bytes, *, flag: Optional[str] = None) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path, flag=flag) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: PathLike, text: str, *, flag: Optional[str] = None) -> Path:
    """Write UTF-8 ``text`` to ``path`` through :func:`atomic_path`."""
    return write_bytes_atomic(path, text.encode("utf-8"), flag=flag)


# --------------------------------------------------------------------------- weights

PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_safetensors_folder(path: PathLike, flag: str) -> None:
    """Refuse a local weights folder (or file) that holds pickle weights (``.bin``, ``.pt``, ...) where
    no ``.safetensors`` file sits beside them: flowctrl loads safetensors only. A hub id (no such
    local path) is left to the loaders, which pass ``use_safetensors=True``."""
    from flowctrl.errors import MissingWeightsError

    root = Path(path)
    if root.is_file():
        if root.suffix.lower() != ".safetensors":
            raise MissingWeightsError.at(root, flag, f"is a {root.suffix or 'non-safetensors'} file",
                                         "give weights saved as .safetensors (flowctrl loads safetensors only)")
        return
    if root.exists() and not root.is_dir():
        raise MissingWeightsError.at(root, flag, "is not a regular file or folder (a pipe, device or socket)",
                                     "give a weights folder")
    if not root.is_dir():
        return
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if Path(folder).relative_to(root).parts.__len__() > 3:
            dirs[:] = []
            continue
        pickles = [f for f in files if f.lower().endswith(PICKLE_WEIGHT_SUFFIXES) and not f.startswith("random_states")]
        if pickles and not any(f.endswith(".safetensors") for f in files):
            raise MissingWeightsError.at(folder, flag, f"holds only pickle weights ({pickles[0]}), no .safetensors",
                                         "convert them to .safetensors (save_pretrained(..., safe_serialization=True)); "
                                         "flowctrl loads safetensors only")


# --------------------------------------------------------------------------- signals


class Terminated(KeyboardInterrupt):
    """SIGTERM / SIGHUP delivered as an exception, so the cleanup of an interrupted run (SIGINT's
    ``KeyboardInterrupt`` path) also runs for them. ``signum`` is the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: Any) -> None:
    # ignore a second signal while the first one's cleanup runs
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


def install_signal_handlers() -> dict:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` in the main thread (the CLI calls this while a
    command runs). Returns the previous handlers for :func:`restore_signal_handlers` (empty where
    nothing was installed: not the main thread, or a handler someone else set)."""
    previous: dict = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            previous[sig] = signal.signal(sig, _raise_terminated)
    return previous


def restore_signal_handlers(previous: dict) -> None:
    """Put back the handlers :func:`install_signal_handlers` replaced."""
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
