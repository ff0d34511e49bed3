"""Training tasks: what each kind of run adds to the one engine (:mod:`flowctrl.train.engine`) — its models,
data, loss and final save. ``TASKS`` maps a task's name to its :class:`~flowctrl.train.engine.TrainTask` class;
the stage-1 names are the values of ``model:`` in a ``flowctrl train flow`` config.

=========  =============================================  ======================================
name       trains                                         final folder
=========  =============================================  ======================================
codec      the flow VAE (FlowCodec)                       the codec's ``save_pretrained``
refiner    the refinement net T                           FlowGenerationPipeline (T)
fgm        FGM (+ CRM) over the frozen codec's latents    FlowGenerationPipeline (FGM, CRM, codecs)
video      the stage-2 flow-conditioned video DiT         FlowCtrlVideoPipeline (+ ``lora/``)
=========  =============================================  ======================================
"""
from __future__ import annotations

from typing import Dict, Type

from flowctrl.train.engine import TrainTask
from flowctrl.train.tasks.codec import CodecTask
from flowctrl.train.tasks.fgm import FgmTask
from flowctrl.train.tasks.refiner import RefinerTask
from flowctrl.train.tasks.video import VideoTask

TASKS: Dict[str, Type[TrainTask]] = {"codec": CodecTask, "refiner": RefinerTask, "fgm": FgmTask, "video": VideoTask}

__all__ = ["TASKS", "CodecTask", "FgmTask", "RefinerTask", "VideoTask"]
