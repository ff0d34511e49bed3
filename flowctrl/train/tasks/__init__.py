"""Training tasks: what each kind of run adds to the one engine (:mod:`flowctrl.train.engine`) — its models,
data, loss and final save — and the ``flowctrl train <command>`` that runs it. Import-light (the CLI reads
:data:`COMMANDS` at start-up): a task's module is imported only when it runs.

=========  =============================================  ==========================================
task       trains                                         final folder
=========  =============================================  ==========================================
codec      the flow VAE (FlowCodec)                       the codec's ``save_pretrained``
refiner    the refinement net T                           FlowGenerationPipeline (T)
fgm        FGM (+ CRM) over the frozen codec's latents    FlowGenerationPipeline (FGM, CRM, codecs)
video      the stage-2 flow-conditioned video DiT         FlowCtrlVideoPipeline (+ ``lora/``)
=========  =============================================  ==========================================

``flowctrl train flow`` runs the stage-1 task its config's ``model:`` names; ``flowctrl train video`` the video task.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Dict, Tuple

# task name → "module:TrainTask subclass"; the stage-1 names are the values of ``model:`` (TrainConfig)
TASKS: Dict[str, str] = {
    "codec": "flowctrl.train.tasks.codec:CodecTask",
    "refiner": "flowctrl.train.tasks.refiner:RefinerTask",
    "fgm": "flowctrl.train.tasks.fgm:FgmTask",
    "video": "flowctrl.train.tasks.video:VideoTask",
}


@dataclass(frozen=True)
class Command:
    """One ``flowctrl train <name>`` subcommand: its help texts, how its YAML config is read
    (``load_config(path, overrides, settings) -> config``, "module:function") and which task runs it
    (``make_task(config) -> TrainTask``, "module:callable", e.g. the task class itself)."""

    help: str
    description: str
    examples: Tuple[str, ...]
    load_config: str
    make_task: str


COMMANDS: Dict[str, Command] = {
    "flow": Command(
        help="FGM + CRM, refinement net T or flow codec (model: in the config)",
        description="Train a learned stage-1 model; the config's `model:` picks FGM + CRM, the refinement net T "
                    "or the flow codec.",
        examples=("flowctrl train flow --config configs/train/fgm_tiny.yaml --output-dir runs/fgm_tiny",
                  "flowctrl train flow --config configs/train/refiner_tiny.yaml --max-steps 200",
                  "flowctrl train flow --config configs/train/fgm_tiny.yaml --output-dir runs/fgm_tiny --resume latest",
                  "accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \\\n"
                  "      -m flowctrl train flow --config configs/train/fgm_tiny.yaml"),
        load_config="flowctrl.train.config:load_config",
        make_task="flowctrl.train.tasks:stage1_task"),
    "video": Command(
        help="the flow-conditioned video DiT (stage 2)",
        description="Train the stage-2 flow-conditioned video DiT (full fine-tuning or LoRA, per the config).",
        examples=("flowctrl train video --config configs/train/video_tiny.yaml --output-dir runs/video_tiny",
                  "flowctrl train video --config configs/train/video_motion_lora.yaml   # rank-16 LoRA (GPU)",
                  "flowctrl train video --config configs/train/video_tiny.yaml --resume latest"),
        load_config="flowctrl.train.video_loop:load_video_config",
        make_task=TASKS["video"]),
}


def resolve(ref: str) -> Any:
    """The object a ``"package.module:name"`` reference names (imports the module)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def task_class(name: str):
    """The :class:`~flowctrl.train.engine.TrainTask` subclass registered as ``name``."""
    return resolve(TASKS[name])


def stage1_task(cfg: Any):
    """The task of a stage-1 config (:class:`~flowctrl.train.config.TrainConfig`): the one its ``model:`` names."""
    return task_class(cfg.model)(cfg)
