"""``flowctrl app``: a local web UI (gradio) over the warp pipeline; logic in :mod:`.session`, layout in :mod:`.ui`."""
from flowctrl.app.session import ArrowSketch, build_controls, camera_spec, generate, preview

__all__ = ["ArrowSketch", "build_controls", "camera_spec", "generate", "preview"]
