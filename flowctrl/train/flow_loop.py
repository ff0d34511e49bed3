"""Stage-1 training (``flowctrl train flow``): FGM (+ CRM), refinement net T, flow-codec fine-tuning.

:func:`train` runs the task the config's ``model:`` names (:data:`flowctrl.train.tasks.TASKS`) through the one
engine (:func:`flowctrl.train.engine.run`): the same code single-process, under ``accelerate launch`` on several
CPU processes (gloo) or GPUs (DDP / FSDP / DeepSpeed via the configs in ``configs/accelerate/``), with
bit-exact resume. The tasks live in :mod:`flowctrl.train.tasks`; this module keeps the names that were
importable from it before the split (models, losses, batching, checkpoints) so callers keep working.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from flowctrl.train.config import TrainConfig
from flowctrl.train.engine import (CHECKPOINT_PREFIX, _truncate_metrics, batch_indices, list_checkpoints,  # noqa: F401
                                   make_lr_scheduler, optimizer_step, read_metrics, record_step, resolve_resume,
                                   run, shards_parameters, start_run, trained_module, with_full_weights)
from flowctrl.train.engine import save_checkpoint as _save_checkpoint  # noqa: F401
from flowctrl.train.losses import diffusion_target, epe_loss  # noqa: F401
from flowctrl.train.tasks import codec, fgm, refiner, stage1_task
from flowctrl.train.tasks.codec import CodecLoss, crop_flow  # noqa: F401
from flowctrl.train.tasks.fgm import (DecodedLatentLoss, FgmLoss, LatentCache, decoder_latent_weights,  # noqa: F401
                                      diffusion_loss, make_scheduler, prepare_fgm_batch)
from flowctrl.train.tasks.refiner import RefinerLoss, pick_frames  # noqa: F401
from flowctrl.train.tasks.stage1 import build_dataset  # noqa: F401
from flowctrl.train.tasks.stage1 import load_codec as _load_codec  # noqa: F401


def train(cfg: TrainConfig, resume: Optional[str] = None, log: Callable[[str], None] = print,
          stop_after: Optional[int] = None) -> Dict[str, Any]:
    """Run (or continue) one stage-1 training run. Returns ``{"step", "loss", "output_dir", "final"}``.

    ``stop_after``: leave the loop after this many steps *of this invocation* without the final save
    (what a kill does; used by tests and for time-sliced jobs); ``cfg.time_limit_s`` ends the run with
    the final save. Checkpoints go to ``output_dir/checkpoints``; the trained models to ``output_dir/final``
    (pipeline layout).
    """
    return run(stage1_task(cfg), resume=resume, log=log, stop_after=stop_after)


def build_models(cfg: TrainConfig) -> Dict[str, nn.Module]:
    """Instantiate (or load) every model of the run: the task's own ``build_models`` (keys per task)."""
    return {"codec": codec, "refiner": refiner, "fgm": fgm}[cfg.model].build_models(cfg)


def Stage1Trainable(kind: str, models: Dict[str, nn.Module], scheduler=None, codec_epe_weight: float = 0.0,  # noqa: N802
                    codec_sample_latent: bool = True, refiner_layer_weight: float = 0.0,
                    latent_weight: Optional[torch.Tensor] = None, decoded: Optional[DecodedLatentLoss] = None,
                    latent_loss_weight: float = 1.0, affinity_weight: float = 0.0) -> nn.Module:
    """The trainable module of a stage-1 run of ``kind`` (``forward`` = loss), built from ``models`` as before the
    split into tasks: :class:`FgmLoss`, :class:`RefinerLoss` or :class:`CodecLoss`."""
    if kind == "fgm":
        return FgmLoss(models["fgm"], models.get("crm"), scheduler, latent_weight, decoded, latent_loss_weight, affinity_weight)
    if kind == "refiner":
        return RefinerLoss(models["refiner"], refiner_layer_weight)
    return CodecLoss(models["codec"], codec_epe_weight, codec_sample_latent)


def save_final(cfg: TrainConfig, module: Any, models: Dict[str, nn.Module], path: Path) -> Path:
    """Write the trained models of ``module`` (a task module or :func:`with_full_weights`' namespace) in the layout
    :class:`FlowGenerationPipeline.from_pretrained` reads (the codec's own folder for ``model: codec``)."""
    if cfg.model == "codec":
        return codec.save_codec(module.codec, path)
    if cfg.model == "refiner":
        return refiner.save_refiner(module.refiner, path)
    return fgm.save_flow_models(cfg, module.fgm, module.crm, models, path)
