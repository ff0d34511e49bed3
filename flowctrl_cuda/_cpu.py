"""The compiled CPU path: ``csrc/cpu_ops.cpp`` built with the system C++ compiler, loaded by ctypes.

Built on first use into ``$FLOWCTRL_CACHE_DIR`` (default ``~/.cache/flowctrl/kernels``) under a
name keyed by the hash of the source, the flags and the compiler, so an edited source rebuilds and
a cached build is reused across processes. A file lock keeps parallel test workers from racing.
No torch headers are involved, so the build takes a few seconds (about 4 s on 2 busy cores). If no compiler is found or the
build fails, :func:`available` is False and the dispatchers fall back to the reference after one
warning.

Only float32 tensors in inference (no autograd) take this path; it calls into C with raw data
pointers of contiguous tensors and releases the GIL while the kernel runs.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import torch

logger = logging.getLogger("flowctrl")

SOURCE = Path(__file__).resolve().parent / "csrc" / "cpu_ops.cpp"
# -ffp-contract=off keeps a*b+c as two roundings like PyTorch's elementwise ops, so the results
# track the reference bit for bit in most pixels.
FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-pthread", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
_MODES = {"sum": 0, "avg": 1, "softmax": 2}

_lib: Optional[ctypes.CDLL] = None
_failed: Optional[str] = None


def cache_dir() -> Path:
    """Folder of the compiled libraries: ``$FLOWCTRL_CACHE_DIR/kernels`` or ``~/.cache/flowctrl/kernels``."""
    root = os.environ.get("FLOWCTRL_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flowctrl" / "kernels"


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compiler_id(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return cxx


def build(force: bool = False) -> Path:
    """Compile ``cpu_ops.cpp`` into the cache (if not cached) and return the shared library path.

    Raises:
        RuntimeError: no C++ compiler, or the compiler failed (its stderr is in the message).
    """
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (tried $CXX, g++, c++, clang++)")
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join(FLAGS).encode() + _compiler_id(cxx).encode()).hexdigest()[:16]
    out_dir = cache_dir()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(out_dir, os.W_OK):
            raise PermissionError(str(out_dir))
    except OSError:  # read-only home (some CI sandboxes): a per-user temp folder instead
        out_dir = Path(tempfile.gettempdir()) / f"flowctrl-kernels-{os.getuid()}"
        out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"flowctrl_cpu_ops_{key}.so"
    if target.exists() and not force:
        return target
    import fcntl

    with open(out_dir / f"flowctrl_cpu_ops_{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if target.exists() and not force:  # another process built it while we waited
                return target
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
            os.close(fd)
            try:
                proc = subprocess.run(
                    [cxx, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"{Path(cxx).name} failed on {SOURCE.name}: {proc.stderr.strip()[-2000:]}")
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def _load() -> Optional[ctypes.CDLL]:
    global _lib, _failed
    if _lib is not None or _failed is not None:
        return _lib
    try:
        lib = ctypes.CDLL(str(build()))
        i64, f32p, i32 = ctypes.c_int64, ctypes.POINTER(ctypes.c_float), ctypes.c_int
        lib.fc_splat_f32.argtypes = [f32p, f32p, f32p, f32p, f32p, i64, i64, i64, i64, i32, i32]
        lib.fc_splat_f32.restype = i32
        lib.fc_splat_strided_f32.argtypes = [f32p, i64, f32p, f32p, f32p, f32p, i64, i64, i64, i64, i32, i32]
        lib.fc_splat_strided_f32.restype = i32
        u8p, f32 = ctypes.POINTER(ctypes.c_uint8), ctypes.c_float
        lib.fc_camera_flow_f32.argtypes = [f32p, f32p, f32p, f32p, u8p, i64, i64, i64, f32, f32, i32, i32]
        lib.fc_camera_flow_f32.restype = i32
        lib.fc_compose_f32.argtypes = [f32p, f32p, u8p, f32p, u8p, i64, i64, i64, i32]
        lib.fc_compose_f32.restype = i32
        lib.fc_backward_warp_f32.argtypes = [f32p, f32p, f32p, i64, i64, i64, i64, i32, i32]
        lib.fc_backward_warp_f32.restype = i32
        lib.fc_push_pull_f32.argtypes = [f32p, u8p, i64, i64, i64, i64, f32, i32]
        lib.fc_push_pull_f32.restype = i32
        lib.fc_to_uint8_hwc_f32.argtypes = [f32p, u8p, i64, i64, i64, i64, i32]
        lib.fc_to_uint8_hwc_f32.restype = i32
        lib.fc_cpu_abi_version.restype = i32
        if lib.fc_cpu_abi_version() != 8:
            raise RuntimeError("cached library has an unexpected ABI version")
        _lib = lib
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _failed = str(error)
        warnings.warn(
            f"flowctrl_cuda: the compiled CPU path is unavailable ({_failed.splitlines()[0][:300]}); "
            "using the PyTorch reference (slower). Install g++ to enable it.",
            RuntimeWarning,
            stacklevel=3,
        )
    return _lib


def available() -> bool:
    """True when the compiled CPU library is built (building it on the first call)."""
    return _load() is not None


def supports(op: str, *tensors: Optional[torch.Tensor]) -> bool:
    """Whether the compiled path handles these inputs (float32 CPU tensors of the ops it has)."""
    if op == "push_pull_holes":
        video, holes = tensors
        return (video.device.type == "cpu" and video.dtype == torch.float32 and holes.device.type == "cpu"
                and holes.dtype == torch.bool and tuple(holes.shape) == (video.shape[0], 1, *video.shape[2:]))
    if op not in ("splat", "backward_warp", "camera_reprojection", "compose_visibility", "to_uint8_hwc"):
        return False
    return all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors)


def _ptr(t: Optional[torch.Tensor]):
    if t is None:
        return None
    return ctypes.cast(t.data_ptr(), ctypes.POINTER(ctypes.c_float))


_local = threading.local()


def _threads() -> int:
    return max(1, getattr(_local, "threads", None) or torch.get_num_threads())


@contextlib.contextmanager
def thread_limit(threads: int) -> Iterator[None]:
    """Run the compiled ops called from *this* Python thread on ``threads`` threads (default: torch's count).

    For callers that parallelize over frames themselves (one Python thread per chunk of frames).
    """
    previous = getattr(_local, "threads", None)
    _local.threads = max(1, int(threads))
    try:
        yield
    finally:
        _local.threads = previous


def _writable(t: Optional[torch.Tensor], shape: Tuple[int, ...]) -> bool:
    return (t is not None and t.shape == shape and t.dtype == torch.float32 and t.device.type == "cpu"
            and t.is_contiguous())


def splat(
    x: torch.Tensor,
    flow: torch.Tensor,
    weight: Optional[torch.Tensor],
    mode: str,
    return_norm: bool,
    out: Optional[torch.Tensor] = None,
    norm_out: Optional[torch.Tensor] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Compiled splat; same contract as :func:`flowctrl_cuda.reference.splat` (float32 CPU, no grad).

    ``x`` may be one image broadcast over the batch (``image.expand(N, ...)``, batch stride 0): it is
    read in place, not copied. ``out`` / ``norm_out``: optional contiguous float32 ``(N, C, H, W)`` /
    ``(N, 1, H, W)`` tensors written in place (and returned); others are ignored (new tensors).
    """
    lib = _load()
    assert lib is not None, "call available() first"
    n, c, h, w = x.shape
    x = x.detach()
    if n > 1 and x.stride(0) == 0 and x[0].is_contiguous():
        x_stride = 0  # the same image for every item: no (N, C, H, W) copy
    else:
        x = x.contiguous()
        x_stride = c * h * w
    flow = flow.detach().contiguous()
    weight = weight.detach().contiguous() if weight is not None else None
    if not _writable(out, (n, c, h, w)):
        out = torch.empty(n, c, h, w, dtype=torch.float32)  # the kernel writes every element
    norm = None
    if return_norm:
        norm = norm_out if _writable(norm_out, (n, 1, h, w)) else torch.empty(n, 1, h, w, dtype=torch.float32)
    rc = lib.fc_splat_strided_f32(_ptr(x), x_stride, _ptr(flow), _ptr(weight), _ptr(out), _ptr(norm), n, c, h, w,
                                  _MODES[mode], _threads())
    if rc != 0:
        raise RuntimeError(f"fc_splat_strided_f32 returned {rc}")
    return (out, norm) if return_norm else out


def backward_warp(x: torch.Tensor, flow: torch.Tensor, padding: str) -> torch.Tensor:
    """Compiled bilinear backward warp (float32 CPU, no grad)."""
    lib = _load()
    assert lib is not None, "call available() first"
    n, c, h, w = x.shape
    x = x.detach().contiguous()
    flow = flow.detach().contiguous()
    out = torch.empty(n, c, h, w, dtype=torch.float32)
    rc = lib.fc_backward_warp_f32(_ptr(x), _ptr(flow), _ptr(out), n, c, h, w, int(padding == "border"), _threads())
    if rc != 0:
        raise RuntimeError(f"fc_backward_warp_f32 returned {rc}")
    return out


def camera_flow(z0: torch.Tensor, E: torch.Tensor, q: torch.Tensor, height: int, width: int, min_depth: float,
                tolerance: float, occlusion: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Compiled per-pixel part of :func:`flowctrl.flow.camera.camera_flow` for one batch item (float32, no grad).

    Args:
        z0: ``(H*W,)`` reference z-depth; E: ``(T, 3, 3)`` ``K_t R_t K_0⁻¹ − I``; q: ``(T, 3)`` ``K_t t_t``.
        min_depth: points with ``z <= min_depth`` are behind the camera; tolerance: z-buffer margin.
    Returns:
        ``flow (T, 2, H, W)`` float32 pixels and ``valid (T, 1, H, W)`` bool.
    """
    lib = _load()
    assert lib is not None, "call available() first"
    t = E.shape[0]
    z0 = z0.detach().to(torch.float32).contiguous()
    E = E.detach().to(torch.float32).contiguous()
    q = q.detach().to(torch.float32).contiguous()
    flow = torch.empty(t, 2, height, width, dtype=torch.float32)
    valid = torch.empty(t, 1, height, width, dtype=torch.uint8)
    tol = float(torch.tensor(1.0 + tolerance, dtype=torch.float32))
    rc = lib.fc_camera_flow_f32(_ptr(z0), _ptr(E), _ptr(q), _ptr(flow),
                                ctypes.cast(valid.data_ptr(), ctypes.POINTER(ctypes.c_uint8)), t, height, width,
                                float(min_depth), tol, int(bool(occlusion)), _threads())
    if rc != 0:
        raise RuntimeError(f"fc_camera_flow_f32 returned {rc}")
    return flow, valid.view(torch.bool)


def compose(local: torch.Tensor, camera: Optional[torch.Tensor], cam_valid: Optional[torch.Tensor]
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Compiled :func:`flowctrl.flow.compose.compose_with_visibility` body (float32 CPU, no grad).

    Args:
        local, camera: ``(N, 2, H, W)`` pixels (camera may be None); cam_valid: ``(N, 1, H, W)`` bool or None.
    Returns:
        ``flow (N, 2, H, W)`` float32 and ``valid (N, 1, H, W)`` bool.
    """
    lib = _load()
    assert lib is not None, "call available() first"
    n, _, h, w = local.shape
    local = local.detach().contiguous()
    camera = camera.detach().contiguous() if camera is not None else None
    cv = cam_valid.detach().contiguous().view(torch.uint8) if cam_valid is not None else None
    flow = torch.empty(n, 2, h, w, dtype=torch.float32)
    valid = torch.empty(n, 1, h, w, dtype=torch.uint8)
    u8 = ctypes.POINTER(ctypes.c_uint8)
    rc = lib.fc_compose_f32(_ptr(local), _ptr(camera), None if cv is None else ctypes.cast(cv.data_ptr(), u8),
                            _ptr(flow), ctypes.cast(valid.data_ptr(), u8), n, h, w, _threads())
    if rc != 0:
        raise RuntimeError(f"fc_compose_f32 returned {rc}")
    return flow, valid.view(torch.bool)


def push_pull_holes(video: torch.Tensor, holes: torch.Tensor, eps: float) -> None:
    """Compiled :func:`flowctrl.render.fill.push_pull_fill_holes`, in place (float32 CPU, no grad).

    Args:
        video: contiguous ``(N, C, H, W)`` float32, overwritten: known pixels unchanged, holes filled.
        holes: ``(N, 1, H, W)`` bool, True where a pixel is missing.
        eps: weight floor of the normalisations (the tensor code's ``eps``).
    """
    lib = _load()
    assert lib is not None, "call available() first"
    assert video.is_contiguous() and video.dtype == torch.float32
    n, c, h, w = video.shape
    mask = holes.detach().reshape(n, h, w).contiguous().view(torch.uint8)
    eps32 = float(torch.tensor(eps, dtype=torch.float32))
    rc = lib.fc_push_pull_f32(_ptr(video), ctypes.cast(mask.data_ptr(), ctypes.POINTER(ctypes.c_uint8)), n, c, h, w,
                              eps32, _threads())
    if rc != 0:
        raise RuntimeError(f"fc_push_pull_f32 returned {rc}")


def to_uint8_hwc(video: torch.Tensor) -> torch.Tensor:
    """Compiled ``(x * 255 + 0.5).clamp(0, 255).to(uint8).permute(0, 2, 3, 1)`` in one pass.

    Args:
        video: ``(N, C, H, W)`` float32 CPU frames in [0, 1].
    Returns:
        ``(N, H, W, C)`` contiguous uint8.
    """
    lib = _load()
    assert lib is not None, "call available() first"
    n, c, h, w = video.shape
    x = video.detach().contiguous()
    out = torch.empty(n, h, w, c, dtype=torch.uint8)
    rc = lib.fc_to_uint8_hwc_f32(_ptr(x), ctypes.cast(out.data_ptr(), ctypes.POINTER(ctypes.c_uint8)), n, c, h, w,
                                 _threads())
    if rc != 0:
        raise RuntimeError(f"fc_to_uint8_hwc_f32 returned {rc}")
    return out
