"""``flowctrl app``: a local web UI (gradio) over the warp pipeline; logic in :mod:`.session`, layout in :mod:`.ui`."""
from flowctrl.app.session import ArrowSketch, brush_mask, build_controls, camera_spec, generate, preview, prune_outputs

__all__ = ["ArrowSketch", "brush_mask", "build_controls", "camera_spec", "generate", "preview", "prune_outputs"]
