"""The warp renderer (stage 2's default backend): softmax splatting along the unified flow + hole filling."""
from flowctrl.render.fill import FILL_MODES, fill_holes, inpaint_fill, normalize_fill_mode, push_pull_fill
from flowctrl.render.warp_renderer import (
    DEFAULT_ALPHA,
    MAX_FRAMES,
    MAX_SIDE,
    MAX_VOXELS,
    MIN_SIDE,
    WarpRender,
    check_render_size,
    importance_from_depth,
    importance_from_flow,
    render_warp,
    render_warp_frames,
)

__all__ = [
    "FILL_MODES", "fill_holes", "inpaint_fill", "normalize_fill_mode", "push_pull_fill", "DEFAULT_ALPHA",
    "MAX_FRAMES", "MAX_SIDE", "MAX_VOXELS", "MIN_SIDE", "WarpRender", "check_render_size",
    "importance_from_depth", "importance_from_flow", "render_warp", "render_warp_frames",
]
