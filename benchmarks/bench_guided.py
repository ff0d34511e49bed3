"""Benchmark: the guided backend (Time-to-Move) against the plain image-to-video pipeline.

Two modes:

* tiny (default, CPU, no weights): the tiny random pipelines of ``tests/guided_tiny.py`` (CogVideoX-I2V,
  Wan 2.1 I2V, Wan 2.2 A14B, Wan 2.2 TI2V-5B). For each family, guided (``--t-weak``/``--t-strong``) vs
  diffusers' own pipeline at equal steps (plus ``cogvideox-medium``, a larger random CogVideoX where the
  transformer dominates): wall seconds (median of ``--repeats`` after a warm-up),
  transformer calls and branches, and peak resident memory of a fresh process per variant.
  Measures overhead only (warp render, the extra VAE encode of the warp, the blends): tiny random
  models say nothing about quality.

      python benchmarks/bench_guided.py --steps 10 --repeats 3

* real weights (``--model PATH_OR_HUB_ID``, a GPU): motion fidelity — EPE (px) between the requested
  unified flow and the flow measured (DIS) on the video, over the pixels whose motion the controls specify
  (the reference-frame region of ``M``: ``local_mask``, or the validly reprojected pixels for a camera) —
  for the guided video, the plain I2V video (same model, no control) and the warp render itself; peak
  VRAM and seconds per video.

      python benchmarks/bench_guided.py --model THUDM/CogVideoX-5b-I2V --preset offload \\
          --image examples/astronaut.png --arrows examples/a.json --frames 49 --size 480x720 \\
          --prompt "an astronaut waves"

Prints markdown tables; ``--json`` writes the rows. Nothing here is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
FAMILIES = ("cogvideox", "wan21", "wan22", "ti2v", "cogvideox-medium")


def _count_calls(modules: Dict[str, Any], log: List[int]) -> list:
    return [m.register_forward_pre_hook(lambda mod, args, kw: log.append(int(kw["hidden_states"].shape[0])),
                                        with_kwargs=True) for m in modules.values()]


def run_one(family: str, variant: str, steps: int, t_weak: int, t_strong: int, repeats: int) -> Dict[str, Any]:
    """One family × variant in this process: median seconds, transformer calls / branches, peak RSS.

    ``family == "cogvideox-medium"``: a 4-layer, 4×32-head random CogVideoX at 64×64, 25 frames, where the
    transformer (not the fixed overhead) dominates the time, as it does with real models."""
    import torch

    import guided_tiny as tiny
    from flowctrl.pipelines.guided import GuidedBackend, _to_pil

    torch.set_num_threads(1)
    if family == "cogvideox-medium":
        pipe = tiny.tiny_cogvideox(num_layers=4, num_attention_heads=4, attention_head_dim=32)
        H = W = 64
        T = 25
    else:
        pipe = tiny.tiny_pipeline(family)
        H, W = tiny.SIZE[family]
        T = tiny.FRAMES
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    image, warped = torch.rand(1, 3, H, W, generator=g), torch.rand(1, T, 3, H, W, generator=g)
    mask = torch.zeros(1, T, 1, H, W)
    mask[..., : H // 2, : W // 2] = 1
    backend = GuidedBackend(pipe)
    kw = {"max_sequence_length": 8} if family.startswith("cogvideox") else {}

    def guided():
        return backend.generate(image, warped, mask, prompt="a cat", negative_prompt="blurry",
                                num_inference_steps=steps, guidance_scale=3.0, t_weak=t_weak, t_strong=t_strong,
                                generator=torch.Generator().manual_seed(1))

    def plain():
        return pipe(image=_to_pil(image), prompt="a cat", negative_prompt="blurry", height=H, width=W, num_frames=T,
                    num_inference_steps=steps, guidance_scale=3.0, generator=torch.Generator().manual_seed(1),
                    output_type="pt", **kw).frames

    fn = guided if variant == "guided" else plain
    with torch.no_grad():
        fn()  # warm-up
        log: List[int] = []
        hooks = _count_calls(backend.denoiser.transformers, log)
        fn()
        for h in hooks:
            h.remove()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {"family": family, "variant": variant, "steps": steps, "seconds": statistics.median(times),
            "calls": len(log), "branches": sum(log),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def tiny_table(args: argparse.Namespace) -> List[Dict[str, Any]]:
    rows = []
    for family in args.families:
        for variant in ("plain", "guided"):
            cmd = [sys.executable, __file__, "--one", family, variant, "--steps", str(args.steps), "--t-weak",
                   str(args.t_weak), "--t-strong", str(args.t_strong), "--repeats", str(args.repeats)]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"\nguided (t_weak {args.t_weak}, t_strong {args.t_strong}) vs plain diffusers pipeline, {args.steps} steps, "
          f"CFG 3, random models (tiny; cogvideox-medium: 4 layers at 64x64, 25 frames), CPU 1 thread, median of {args.repeats}\n")
    print("| family | plain s | guided s | ratio | plain calls / branches | guided calls / branches "
          "| plain peak RSS MB | guided peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for fam in args.families:
        p, g = (next(r for r in rows if r["family"] == fam and r["variant"] == v) for v in ("plain", "guided"))
        print(f"| {fam} | {p['seconds']:.3f} | {g['seconds']:.3f} | {g['seconds'] / p['seconds']:.2f} | "
              f"{p['calls']} / {p['branches']} | {g['calls']} / {g['branches']} | {p['peak_rss_mb']:.0f} | "
              f"{g['peak_rss_mb']:.0f} |")
    return rows


def real_table(args: argparse.Namespace) -> List[Dict[str, Any]]:
    import torch

    from PIL import Image

    from flowctrl import FlowCtrlPipeline
    from flowctrl.controls import Controls, load_arrows, load_camera
    from flowctrl.eval.flow_metrics import flow_fidelity

    if not torch.cuda.is_available():
        print("note: no CUDA device here; real weights on the CPU are very slow", file=sys.stderr)
    height = width = None
    if args.size:
        height, width = (int(v) for v in args.size.lower().split("x"))
    with Image.open(args.image) as im:
        image_size = (im.height, im.width)
    controls = Controls(arrows=load_arrows(args.arrows, image_size) if args.arrows else [],
                        camera=load_camera(args.camera, args.frames) if args.camera else None, image_size=image_size)
    pipe = FlowCtrlPipeline(backend="guided", model=args.model, preset=args.preset, num_inference_steps=args.real_steps)
    rows = []
    # plain I2V = the same model from pure noise with no mask (t_weak = t_strong = 0): diffusers' own
    # pipeline, as tests/test_guided_backend.py proves
    for name, clocks in (("guided", {}), ("plain I2V", {"t_weak": 0, "t_strong": 0}), ("warp", None)):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        if clocks is None:
            out = FlowCtrlPipeline()(args.image, controls=controls, num_frames=args.frames, height=height, width=width)
        else:
            out = pipe(args.image, controls=controls, num_frames=args.frames, height=height, width=width,
                       generator=torch.Generator().manual_seed(0), prompt=args.prompt, **clocks)
        seconds = time.perf_counter() - t0
        vram = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
        local = out.masks.get("local")
        region = out.masks.get("valid") if local is None or not bool(local.any()) else local
        fid = flow_fidelity(out.flow, out.video, control_mask=region, valid=out.masks.get("valid"))
        rows.append({"video": name, "EPE_inside_M": fid.get("EPE_inside"), "EPE_all": fid["EPE"], "seconds": seconds,
                     "peak_vram_gb": vram})
    print("\n| video | EPE inside M (px) | EPE all (px) | seconds | peak VRAM GB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['video']} | {r['EPE_inside_M']:.2f} | {r['EPE_all']:.2f} | {r['seconds']:.1f} | {r['peak_vram_gb']:.1f} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)  # medium: see run_one
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--t-weak", type=int, default=2)
    p.add_argument("--t-strong", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--one", nargs=2, metavar=("FAMILY", "VARIANT"), help=argparse.SUPPRESS)
    real = p.add_argument_group("real weights")
    real.add_argument("--model", help="folder or hub id of a CogVideoX-I2V / Wan-I2V pipeline")
    real.add_argument("--preset", default=None, help="full | offload | low | cpu")
    real.add_argument("--image", default=str(REPO / "examples" / "astronaut.png"))
    real.add_argument("--arrows", default=str(REPO / "examples" / "a.json"))
    real.add_argument("--camera", default=None)
    real.add_argument("--frames", type=int, default=49)
    real.add_argument("--size", default=None, help="HxW working size, e.g. 480x720")
    real.add_argument("--real-steps", type=int, default=50, help="denoising steps with real weights (default 50)")
    real.add_argument("--prompt", default="")
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.steps, args.t_weak, args.t_strong, args.repeats)))
        return
    rows = real_table(args) if args.model else tiny_table(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
