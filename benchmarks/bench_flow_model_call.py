"""Benchmark: one call of the learned stage 1 (``FlowGenerationPipeline``) on this machine's CPU.

A residual FGM's call makes three flow-codec passes: encode the zero residual, decode it, decode the
sampled latent. The first two depend only on the codec and the size, so the pipeline keeps them
(``FlowGenerationPipeline._zero_residual_pair``). This prints, in the same run and process:

    first call (nothing kept) | repeated call (zero residual kept) | ratio | the parts: encode, decode, FGM (+ CRM)

    python benchmarks/bench_flow_model_call.py                        # the benchmark's FGM + CRM, 256² × 49
    python benchmarks/bench_flow_model_call.py --model runs/x/final --size 128 --frames 17 --repeats 3

``--model`` defaults to ``runs/bench_flow_models/fgm_crm/final`` (``bench_flow_models.py`` trains it); without
that folder a fresh residual FGM + CRM of ``configs/train/fgm_residual_tiny.yaml``'s size is used (the timing
does not depend on the weights). Nothing is asserted; tests never time anything.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def fresh_pipeline():
    """An untrained residual FGM + CRM with the tiny benchmark config's sizes."""
    from diffusers import DDIMScheduler

    from flowctrl.train.config import load_config
    from flowctrl.train.flow_loop import build_models
    from flowctrl.pipelines.flow_generation import FlowGenerationPipeline

    torch.manual_seed(0)
    models = build_models(load_config(str(REPO / "configs/train/fgm_residual_tiny.yaml")))
    return FlowGenerationPipeline(fgm=models["fgm"], crm=models.get("crm"), codec=models["codec"],
                                  image_codec=models["image_codec"], guidance_scale=1.0, num_inference_steps=1,
                                  scheduler=DDIMScheduler(prediction_type="sample", timestep_spacing="trailing"))


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "runs/bench_flow_models/fgm_crm/final"))
    ap.add_argument("--size", type=int, default=256, help="square working size in px (default 256)")
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--repeats", type=int, default=1, help="repeated calls timed (median; default 1)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from flowctrl.models.fgm import zero_residual_latent
    from flowctrl.pipelines.flow_generation import FlowGenerationPipeline

    if Path(args.model).is_dir():
        pipe, source = FlowGenerationPipeline.from_pretrained(args.model), args.model
    else:
        pipe, source = fresh_pipeline(), "fresh residual FGM + CRM (fgm_residual_tiny.yaml sizes)"
    if pipe.fgm is None or getattr(pipe.fgm.config, "base", None) is None:
        print(f"{source}: not a residual FGM; nothing to compare", file=sys.stderr)
        return 2
    t, s = args.frames, args.size
    unified = SimpleNamespace(flow=torch.zeros(1, t, 2, s, s), sparse_flow=torch.zeros(1, t, 2, s, s),
                              sparse_mask=torch.zeros(1, t, 1, s, s), num_frames=t, size=(s, s), K=None, w2c=None)
    image = torch.rand(1, 3, s, s)

    def call():
        pipe(image, unified, num_inference_steps=1, generator=torch.Generator().manual_seed(0), guidance_scale=1.0)

    first = timed(call)
    repeated = statistics.median(timed(call) for _ in range(args.repeats))
    with torch.no_grad():
        encode = timed(lambda: zero_residual_latent(pipe.codec, t, (s, s)))
        zero = pipe._zero_residual_pair(t, (s, s))[0]
        decode = timed(lambda: pipe.codec.decode(zero, num_frames=t))
    print(f"{source}, {s}×{s} × {t} frames, {args.threads} threads, 1 DDIM step\n")
    print("| first call (s) | repeated call (s) | first / repeated | codec encode (s) | codec decode (s) | rest (s) |")
    print("|---|---|---|---|---|---|")
    print(f"| {first:.1f} | {repeated:.1f} | {first / repeated:.2f}× | {encode:.1f} | {decode:.1f} | "
          f"{max(0.0, repeated - decode):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
