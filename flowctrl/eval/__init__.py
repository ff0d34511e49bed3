"""Evaluation: camera accuracy (pycolmap), flow EPE / ObjMC, PSNR/SSIM/LPIPS, FID/FVD, Tem-Cons, benchmarks.

Submodules import their heavy dependencies lazily; import them directly, e.g.
``from flowctrl.eval.camera import evaluate_camera``.
"""
__all__ = ["camera", "flow_metrics", "quality", "frechet", "temporal", "bench"]
