"""``flowctrl train flow|video``: train the learned stage 1 (FGM + CRM, refinement net T, flow codec) or
the stage-2 video model.

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
    from flowctrl.train.tasks import COMMANDS

    parser = subparsers.add_parser("train", help="train the learned models (flow: stage 1, video: stage 2)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="train_target", metavar="TARGET")
    # one subcommand per entry of flowctrl.train.tasks.COMMANDS, each run by the one engine (flowctrl.train.engine)
    for name, command in COMMANDS.items():
        target = sub.add_parser(name, help=command.help, description=command.description,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n" + "\n".join("  " + e for e in command.examples))
        _common(target)
        target.set_defaults(func=run)
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])


def run(args: argparse.Namespace) -> int:
    from flowctrl.train.config import check_run_outputs
    from flowctrl.train.tasks import COMMANDS, resolve

    command = COMMANDS[args.train_target]
    try:
        load_config, make_task = resolve(command.load_config), resolve(command.make_task)
    except ModuleNotFoundError as err:
        raise ConfigError.at(None, f"train {args.train_target}", f"the {args.train_target} trainer is not installed ({err.name})",
                             "install the complete flowctrl package") from None
    from flowctrl.train.engine import run as run_task

    cfg = load_config(args.config, {"output_dir": args.output_dir, "max_steps": args.max_steps, "seed": args.seed},
                      args.set)
    check_run_outputs(args.config, cfg.output_dir, _run_inputs(args.train_target, cfg), str(args.config or "<defaults>"))
    task = make_task(cfg)
    result = run_task(task, resume=args.resume)
    if result.get("final"):
        print(f"trained {task.title}: step {result['step']} loss {result['loss']:.5f} -> {result['final']}")
    return 0


def _run_inputs(target: str, cfg) -> list:
    """The files a training run reads (its outputs may not resolve to any of them)."""
    if target == "video":
        init = cfg.model.init if cfg.model.init != "tiny" and Path(cfg.model.init).exists() else None
        return [cfg.data.shards, init]
    return [getattr(cfg.data, "shards", None), getattr(cfg, "codec_path", None), getattr(cfg, "image_codec_path", None),
            getattr(cfg, "pretrained_cogvideox", None), getattr(cfg.data, "latent_cache_file", None)]
