"""``flowctrl train flow|video``: train the learned stage 1 (FGM + CRM, refinement net T, flow codec) or
the stage-2 video model (``flowctrl.train.video_loop``).

examples:
  single process:           flowctrl train flow --config configs/train/fgm_tiny.yaml
  two CPU processes (gloo): accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \\
                              -m flowctrl train flow --config configs/train/fgm_tiny.yaml
  continue a run:           flowctrl train flow --config ... --resume latest
"""
from __future__ import annotations

import argparse
from pathlib import Path

from flowctrl.errors import ConfigError


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--set KEY=VALUE`` option of ``flowctrl train flow|video`` (read by
    :func:`flowctrl.train.config.apply_settings`; defined here so the CLI starts without importing yaml)."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, dotted for nested ones, YAML value (repeatable): "
                             "--set codec_path=runs/codec/final --set data.num_scenes=200 --set fgm_decoded_crop=null")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training YAML (see configs/train/)")
    p.add_argument("--resume", default=None, metavar="latest|PATH",
                   help="continue from the newest checkpoint of --output-dir (latest) or a checkpoint folder")
    p.add_argument("--output-dir", default=None, help="overrides output_dir of the config")
    p.add_argument("--max-steps", type=int, default=None, help="overrides max_steps of the config")
    p.add_argument("--seed", type=int, default=None, help="overrides seed of the config")
    add_set_argument(p)


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train the learned models (flow: stage 1, video: stage 2)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="train_target", metavar="TARGET")
    raw = argparse.RawDescriptionHelpFormatter
    flow = sub.add_parser(
        "flow", help="FGM + CRM, refinement net T or flow codec (model: in the config)", formatter_class=raw,
        description="Train a learned stage-1 model; the config's `model:` picks FGM + CRM, the refinement net T "
                    "or the flow codec.",
        epilog="examples:\n"
               "  flowctrl train flow --config configs/train/fgm_tiny.yaml --output-dir runs/fgm_tiny\n"
               "  flowctrl train flow --config configs/train/refiner_tiny.yaml --max-steps 200\n"
               "  flowctrl train flow --config configs/train/fgm_tiny.yaml --output-dir runs/fgm_tiny --resume latest\n"
               "  accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \\\n"
               "      -m flowctrl train flow --config configs/train/fgm_tiny.yaml")
    _common(flow)
    flow.set_defaults(func=run)
    video = sub.add_parser(
        "video", help="the flow-conditioned video DiT (stage 2)", formatter_class=raw,
        description="Train the stage-2 flow-conditioned video DiT (full fine-tuning or LoRA, per the config).",
        epilog="examples:\n"
               "  flowctrl train video --config configs/train/video_tiny.yaml --output-dir runs/video_tiny\n"
               "  flowctrl train video --config configs/train/video_motion_lora.yaml   # rank-16 LoRA (GPU)\n"
               "  flowctrl train video --config configs/train/video_tiny.yaml --resume latest")
    _common(video)
    video.set_defaults(func=run)
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])


def run(args: argparse.Namespace) -> int:
    from flowctrl.train.config import check_run_outputs

    if args.train_target == "video":
        try:
            from flowctrl.train.video_loop import load_video_config, train as train_video
        except ModuleNotFoundError as err:
            raise ConfigError.at(None, "train video", f"the video trainer is not installed ({err.name})",
                                 "install the complete flowctrl package") from None
        cfg = load_video_config(args.config, {"output_dir": args.output_dir, "max_steps": args.max_steps,
                                              "seed": args.seed}, args.set)
        init = cfg.model.init if cfg.model.init != "tiny" and Path(cfg.model.init).exists() else None
        check_run_outputs(args.config, cfg.output_dir, [cfg.data.shards, init], str(args.config or "<defaults>"))
        result = train_video(cfg, resume=args.resume)
        if result.get("final"):
            print(f"trained video model: step {result['step']} loss {result['loss']:.5f} -> {result['final']}")
        return 0
    from flowctrl.train.config import load_config
    from flowctrl.train.flow_loop import train

    cfg = load_config(args.config, {"output_dir": args.output_dir, "max_steps": args.max_steps, "seed": args.seed},
                      args.set)
    check_run_outputs(args.config, cfg.output_dir, [cfg.data.shards, cfg.codec_path, cfg.image_codec_path,
                                                   cfg.pretrained_cogvideox, cfg.data.latent_cache_file], str(args.config))
    result = train(cfg, resume=args.resume)
    if result.get("final"):
        print(f"trained {cfg.model}: step {result['step']} loss {result['loss']:.5f} -> {result['final']}")
    return 0
