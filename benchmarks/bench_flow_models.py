"""Does learned stage 1 learn? EPE on held-out synthetic scenes (64×64, 16 frames).

Trains, each under a wall-clock budget on this machine's CPU: the flow codec (needed by the FGM), the
refinement net T, the FGM alone, and FGM + CRM — all through ``flowctrl.train.flow_loop.train`` — then
evaluates on held-out scenes with identical sparse conditions per scene and mode:

    Gaussian interpolation (eq. 6–7)  |  T  |  FGM  |  FGM + CRM        EPE in px (lower is better)

Modes: random points, grid, edge-biased (the local controls) and camera-only (no points; the CRM gets
the camera as Plücker rays). The learned models get the true motion strength M_s as the user's strength
control. Writes ``benchmarks/results/flow_models.md`` (table) and ``flow_models_curves.png``.

The parameter-free parametric interpolation (T's base and the residual FGM's base) is its own row, so what
the learning adds is visible. When FGM + CRM's CRM has ``camera_base_depth`` (its base carries the camera's
flow of a plane at that depth), two more no-learning rows see the camera too: that plane flow plus the
Gaussian, and plus the parametric interpolation of what the controls add to it (FGM + CRM's base). Training scenes (default 2000, seeds 0+) are rendered into ``--scene-cache``
before any training clock starts; the FGM runs use the first ``--fgm-scenes`` of them with
``--fgm-config`` (default the residual FGM). ``--codec-from`` reuses a codec trained earlier under the same
budget (only valid while its code and config are unchanged). ``--test-seed 5000`` evaluates on the
validation scenes instead of the test scenes (for choices).

    python benchmarks/bench_flow_models.py                   # 6 min per model (shared cores)
    python benchmarks/bench_flow_models.py --minutes 15      # the issue's full budget
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flowctrl.train.config import load_config  # noqa: E402
from flowctrl.train.data import ConditionConfig, SyntheticConfig, SyntheticFlowDataset, densify, sample_condition  # noqa: E402
from flowctrl.train.flow_loop import read_metrics, train  # noqa: E402
from flowctrl.models.refiner import parametric_interpolation  # noqa: E402

MODES = ("random", "grid", "edge", "camera")


def epe(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean end-point error over frames 1..T-1 and all pixels; (T,2,H,W) or (1,T,2,H,W)."""
    a, b = a.reshape(-1, *a.shape[-3:])[1:], b.reshape(-1, *b.shape[-3:])[1:]
    return float((a - b).norm(dim=1).mean())


def run_training(name: str, config: str, out: Path, minutes: float, overrides: dict) -> Path:
    import yaml

    # the benchmark's data keys update the config's data block (its condition mix is kept)
    data = {**(yaml.safe_load((REPO / config).read_text()).get("data") or {}), **overrides.get("data", {})}
    overrides = {**overrides, "data": data}
    cfg = load_config(str(REPO / config), {"output_dir": str(out / name), "time_limit_s": minutes * 60, **overrides})
    if "crm" in overrides and overrides["crm"] is None:  # FGM alone (load_config skips None overrides)
        cfg.crm = None
    t = time.time()
    res = train(cfg, log=lambda m: print(f"[{name}] {m}", flush=True))
    print(f"[{name}] {res['step']} steps in {time.time() - t:.0f}s, final loss {res['loss']:.4f}", flush=True)
    return Path(res["final"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget per model (default 6)")
    ap.add_argument("--codec-minutes", type=float, default=None, help="budget of the codec (default = --minutes)")
    ap.add_argument("--train-scenes", type=int, default=2000,
                    help="distinct training scenes (default 2000; rendered once into --scene-cache before any clock starts)")
    ap.add_argument("--fgm-scenes", type=int, default=2000,
                    help="training scenes of the FGM runs (default 2000); their residual latents (data.condition_variants "
                         "condition draws each) are encoded with the frozen codec before the clock starts and kept in "
                         "WORK/fgm_latents.pt for the next FGM run with the same codec")
    ap.add_argument("--scene-cache", default=str(REPO / "runs" / "scene_cache"),
                    help="folder of rendered training scenes (filled before training when missing)")
    ap.add_argument("--codec-from", default=None,
                    help="use this trained codec folder instead of training one (allowed only if its code/config are unchanged)")
    ap.add_argument("--fgm-config", default="configs/train/fgm_residual_tiny.yaml")
    ap.add_argument("--test-scenes", type=int, default=12)
    ap.add_argument("--test-seed", type=int, default=10_000, help="first held-out scene (5000: the validation scenes used for choices)")
    ap.add_argument("--steps", type=int, default=1,
                    help="DDIM steps at evaluation (default 1: the x0 prediction from pure noise ≈ the posterior mean, EPE-optimal)")
    ap.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance (1 = off; the residual FGM trains without dropout)")
    ap.add_argument("--work", default=str(REPO / "runs" / "bench_flow_models"))
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--skip-train", action="store_true", help="evaluate the models already in --work")
    ap.add_argument("--methods", default="gaussian,refiner,fgm,fgm_crm",
                    help="comma list of methods to train/evaluate (the Gaussian baseline needs no training)")
    ap.add_argument("--tag", default="", help="suffix of the result files (flow_models<tag>.md)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on shared cores 2 threads ran 6x slower per step than 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work, results = Path(args.work), Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    data = {"data": {"source": "synthetic", "num_scenes": args.train_scenes, "num_frames": 16, "height": 64, "width": 64,
                     "cache_dir": args.scene_cache}}
    if not args.skip_train:  # render the training scenes before any training clock starts
        from flowctrl.train.data import render_clip

        t = time.time()
        for seed in range(args.train_scenes):
            render_clip(seed, 16, 64, 64, args.scene_cache)
        print(f"{args.train_scenes} training scenes ready in {args.scene_cache} ({time.time() - t:.0f}s)", flush=True)
    big = 10 ** 6
    wanted = [m for m in args.methods.split(",") if m]
    diffusion = [m for m in wanted if m in ("fgm", "fgm_crm")]
    if not args.skip_train:
        cm = args.codec_minutes or args.minutes
        if diffusion and not args.codec_from:
            run_training("codec", "configs/train/fgm_codec_tiny.yaml", work, cm, {**data, "max_steps": big, "checkpoint_every": big})
        if "refiner" in wanted:
            run_training("refiner", "configs/train/refiner_tiny.yaml", work, args.minutes, {**data, "max_steps": big, "checkpoint_every": big})
        codec = args.codec_from or str(work / "codec" / "final")
        # one latent file per run: with the CRM's camera base the residual latents differ from the FGM's
        fdata = lambda name: {"data": {**data["data"], "num_scenes": min(args.fgm_scenes, args.train_scenes),  # noqa: E731
                                       "latent_cache_file": str(work / f"{name}_latents.pt")}}
        if "fgm" in wanted:
            run_training("fgm", args.fgm_config, work, args.minutes,
                         {**fdata("fgm"), "max_steps": big, "checkpoint_every": big, "codec_path": codec, "crm": None})
        if "fgm_crm" in wanted:
            run_training("fgm_crm", args.fgm_config, work, args.minutes,
                         {**fdata("fgm_crm"), "max_steps": big, "checkpoint_every": big, "codec_path": codec})
    from flowctrl.models.flow_codec import FlowCodec
    from flowctrl.pipelines.flow_generation import FlowGenerationPipeline

    codec = FlowCodec.from_pretrained(args.codec_from or str(work / "codec" / "final")).eval() if diffusion else None
    pipes = {name: FlowGenerationPipeline.from_pretrained(work / name / "final") for name in ("refiner", "fgm", "fgm_crm")
             if name in wanted}
    test = SyntheticFlowDataset(SyntheticConfig(num_scenes=args.test_scenes, seed=args.test_seed, num_frames=16, height=64, width=64,
                                                with_dense=False))
    # a CRM with camera_base_depth refines the camera's plane flow: the same no-learning base, and the Gaussian
    # interpolation on top of that plane flow, get their own rows (they see the camera, like FGM + CRM)
    from flowctrl.models.fgm import camera_base_depth, plane_camera_flow

    plane_depth = camera_base_depth(pipes["fgm_crm"].crm) if "fgm_crm" in pipes else None
    with_camera = ("gaussian_cam", "parametric_cam") if plane_depth is not None else ()
    methods = tuple(m for m in ("gaussian", "parametric", *with_camera, "refiner", "fgm", "fgm_crm")
                    if m in ("gaussian", "parametric", *with_camera) or m in wanted)
    errs = {m: {mode: [] for mode in MODES} for m in methods}
    codec_err = []
    t0 = time.time()
    for i in range(args.test_scenes):
        clip = test.clip(i)
        plane = plane_camera_flow(clip["K"][None], clip["w2c"][None], plane_depth, (64, 64))[0] if with_camera else None
        if codec is not None:
            with torch.no_grad():
                codec_err.append(epe(codec.decode(codec.encode(clip["flow"][None]), 16), clip["flow"]))
        for k, mode in enumerate(MODES):
            g = torch.Generator().manual_seed(777 * i + k)
            sparse, mask, _ = sample_condition(clip["image"], clip["flow"], clip["visibility"], ConditionConfig(mode=mode), g)
            dense = densify(sparse, mask)
            errs["gaussian"][mode].append(epe(dense, clip["flow"]))
            errs["parametric"][mode].append(epe(parametric_interpolation(sparse[None], mask[None])[0], clip["flow"]))
            if plane is not None:  # what the controls add to the plane flow, interpolated, + the plane flow
                rest = (sparse - plane) * (mask > 0)
                errs["gaussian_cam"][mode].append(epe(plane + densify(rest, mask), clip["flow"]))
                errs["parametric_cam"][mode].append(epe(plane + parametric_interpolation(rest[None], mask[None])[0], clip["flow"]))
            unified = SimpleNamespace(flow=dense[None], sparse_flow=sparse[None], sparse_mask=mask[None], num_frames=16,
                                      size=(64, 64), K=None, w2c=None, camera_flow=None)
            if "refiner" in pipes:
                with torch.no_grad():
                    refined = pipes["refiner"].refiner(clip["image"][None], dense[None], mask[None])[0]
                errs["refiner"][mode].append(epe(refined, clip["flow"]))
            strength = float(clip["strength"])
            for name in diffusion:
                u = unified
                pipe = pipes[name]
                gen = torch.Generator().manual_seed(1000 + i)
                if name == "fgm_crm":  # the true camera, as the user's camera control
                    flow = _sample_with_plucker(pipe, clip, u, args, gen, strength)
                else:
                    flow = pipe(clip["image"][None], u, num_inference_steps=args.steps, generator=gen,
                                guidance_scale=args.guidance, strength=strength)[0]
                errs[name][mode].append(epe(flow, clip["flow"]))
        print(f"scene {i + 1}/{args.test_scenes} ({time.time() - t0:.0f}s)", flush=True)

    mean = lambda v: sum(v) / max(1, len(v))  # noqa: E731
    rows = []
    for m in methods:
        local = [x for mode in ("random", "grid", "edge") for x in errs[m][mode]]
        rows.append((m, *[mean(errs[m][mode]) for mode in MODES], mean(local)))
    base_local = rows[0][-1]
    names = {"gaussian": "Gaussian interpolation (eq. 6–7)", "parametric": "parametric interpolation (no learning: T's base and the residual FGM's base)",
             "refiner": "refinement net T", "fgm": "FGM",
             "gaussian_cam": f"camera plane flow (z = {plane_depth:g}) + Gaussian interpolation (no learning; sees the camera)"
             if plane_depth else "",
             "parametric_cam": f"camera plane flow (z = {plane_depth:g}) + parametric interpolation (no learning; FGM + CRM's base)"
             if plane_depth else "",
             "fgm_crm": "FGM + CRM"}
    run_dir = {"codec": Path(args.codec_from).parent if args.codec_from else work / "codec"}
    curves = {name: read_metrics(run_dir.get(name, work / name)) for name in ("codec", "refiner", "fgm", "fgm_crm")
              if name in wanted or (name == "codec" and diffusion)}
    lines = [
        "# Learned stage 1 vs Gaussian interpolation (held-out synthetic scenes)",
        "",
        f"{args.test_scenes} held-out scenes (seeds {args.test_seed}+), 64×64, 16 frames; identical sparse conditions per scene and "
        f"mode; EPE in px over frames 1–15 (lower is better). "
        + ("Models trained earlier (budgets and steps under Training runs), " if args.skip_train else
           f"Training budget {args.minutes:g} min per model on 2 shared CPU cores, {args.train_scenes} training scenes "
           f"(FGM runs: the first {min(args.fgm_scenes, args.train_scenes)}, latents of their condition draws encoded "
           f"before the clock), ")
        + f"{args.threads} torch thread(s). FGM sampling: DDIM {args.steps} steps, "
        f"guidance {args.guidance}." + (f" Codec round-trip EPE on the test flows: {mean(codec_err):.3f} px." if codec_err else ""),
        "",
        "| method | random | grid | edge | camera-only | local (random+grid+edge) | vs Gaussian (local) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gain = 100.0 * (base_local - r[-1]) / max(base_local, 1e-9)
        lines.append(f"| {names[r[0]]} | " + " | ".join(f"{x:.3f}" for x in r[1:]) + f" | {gain:+.1f}% |")
    if "fgm_crm" in pipes:  # does the CRM reach the FGM? reference attention's zero-initialised output projections
        norms = [float(blk.attn1.processor.ref_out.weight.norm()) for blk in pipes["fgm_crm"].fgm.transformer_blocks]
        lines += ["", "Reference-attention gate (‖ref_out.weight‖ per FGM layer; 0 = CRM ignored): "
                  + ", ".join(f"{n:.3f}" for n in norms)]
    lines += ["", "Training runs (steps in budget, last logged loss):", ""]
    for name, c in curves.items():
        if c:
            lines.append(f"- {name}: {c[-1]['step']} steps, {c[-1]['time']:.0f}s, loss {c[0]['loss']:.4f} → {c[-1]['loss']:.4f}")
    extra = "".join(f" --{k.replace('_', '-')} {getattr(args, k)}" for k in ("codec_minutes", "codec_from", "fgm_config", "fgm_scenes", "steps", "guidance", "train_scenes", "test_seed", "methods", "tag")
                    if getattr(args, k) != ap.get_default(k))
    extra += " --skip-train" if args.skip_train else ""
    lines += ["", f"Reproduce: `python benchmarks/bench_flow_models.py --minutes {args.minutes:g}{extra}`", ""]
    text = "\n".join(lines)
    (results / f"flow_models{args.tag}.md").write_text(text)
    (results / f"flow_models{args.tag}.json").write_text(json.dumps({"errors": errs, "codec_epe": codec_err}, indent=1))
    print(text)
    _plot(curves, results / f"flow_models{args.tag}_curves.png")
    return 0


def _sample_with_plucker(pipe, clip, unified, args, gen, strength):
    """FGM + CRM with the scene's true camera: K and w2c → Plücker rays inside the pipeline."""
    u = SimpleNamespace(**{**vars(unified), "K": clip["K"][None], "w2c": clip["w2c"][None]})
    return pipe(clip["image"][None], u, num_inference_steps=args.steps, generator=gen, guidance_scale=args.guidance,
                strength=strength)[0]


def _plot(curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3), squeeze=False)
    axes = axes[0]
    for ax, (name, c) in zip(axes, curves.items()):
        if not c:
            continue
        steps = [r["step"] for r in c]
        loss = torch.tensor([r["loss"] for r in c])
        k = max(1, len(loss) // 50)
        smooth = torch.nn.functional.avg_pool1d(loss[None, None], k, 1)[0, 0] if len(loss) >= k else loss
        ax.plot(steps, loss.tolist(), alpha=0.3)
        ax.plot(steps[k - 1:], smooth.tolist())
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_yscale("log")
    axes[0].set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
