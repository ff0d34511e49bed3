"""Accelerate training of the stage-2 video DiT (``flowctrl train video --config configs/train/video_tiny.yaml``).

Full fine-tuning or LoRA (peft through diffusers; rank 16 = the static-camera motion LoRA of paper 004),
flow-conditioning dropout (so flow guidance works at inference), gradient checkpointing, bf16 on GPU,
DDP / FSDP / DeepSpeed ZeRO-2 through ``accelerate launch --config_file configs/accelerate/…``.
Data: synthetic scenes (:mod:`flowctrl.train.scenes`) or the shards of ``flowctrl prepare-data``
(:class:`flowctrl.train.shards.ShardDataset`).

Objective (CogVideoX): ``z_t = add_noise(z0, ε, t)``, the transformer sees ``[z_t ⊕ image latent]``,
text, ``t`` and the flow latent (dropped per sample with probability ``flow_dropout``) and regresses the
scheduler's target (``v`` for ``v_prediction``, ``ε`` for ``epsilon``, ``z0`` for ``sample``) with MSE.

This module holds the video run's config (:class:`VideoTrainConfig`, :func:`load_video_config`) and its entry
point :func:`train`; the task itself (models, data, loss, final save) is :mod:`flowctrl.train.tasks.video`
and the loop, checkpoints and exact resume are the one engine's (:mod:`flowctrl.train.engine`):
``accelerator.save_state`` into a temporary folder renamed into ``output_dir/checkpoints/checkpoint-N``;
the batch, noise, timesteps and dropout of step ``s`` are a pure function of ``(config, s, rank)``.

Config (YAML, strict keys; see ``configs/train/video_tiny.yaml``)::

    max_steps: 300
    batch_size: 4
    learning_rate: 1.0e-3
    flow_dropout: 0.1
    data: {source: synthetic, num_scenes: 64, num_frames: 9, height: 32, width: 32}
    model: {init: tiny, pixel_space: true, num_layers: 2, num_attention_heads: 4, attention_head_dim: 16, patch_size: 4}
    lora: {rank: 0}              # rank 16 → LoRA (train_new_parts: also train the flow branch + stabilizers)
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence


from flowctrl.errors import ConfigError
from flowctrl.train.tasks.video import (VideoTask, build_pipeline, encode_batch, make_scheduler, param_groups,  # noqa: F401
                                        save_final, save_lora, setup_trainable, training_loss)
from flowctrl.train.video_data import (ShardVideoDataset, SyntheticVideoDataset, TextureMotionDataset,  # noqa: F401
                                       build_dataset)

__all__ = ["VideoTrainConfig", "load_video_config", "build_pipeline", "encode_batch", "training_loss", "train"]


# ------------------------------------------------------------------------------------------- config
@dataclass
class VideoDataConfig:
    source: str = "synthetic"        # synthetic (3D layered scenes) | textures (2D moving textures) | shards
    shards: Optional[str] = None     # `flowctrl prepare-data` output folder
    num_scenes: int = 64             # synthetic clips in the training pool (rendered once, kept in memory)
    seed: int = 0
    num_frames: int = 9
    height: int = 32
    width: int = 32
    camera: str = "random"           # SceneConfig.camera; "static" = the static-camera motion-LoRA data
    shuffle: bool = True


@dataclass
class VideoModelConfig:
    init: str = "tiny"               # tiny | stage-2 folder | CogVideoX-I2V folder / cached hub id
    pixel_space: bool = True         # tiny only: no VAE / FlowCodec (pixels are the latents)
    num_layers: int = 2
    num_attention_heads: int = 4
    attention_head_dim: int = 16
    patch_size: int = 4
    time_embed_dim: int = 64
    text_embed_dim: int = 16
    max_text_seq_length: int = 4
    use_frequency_stabilizer: bool = True
    stabilizer_layers: Optional[List[int]] = None   # DiT blocks followed by a stabilizer; None = every block
    pixel_flow_scale: float = 4.0
    # Training from scratch only: a small random flow gate lets the flow branch learn from step 1
    # (the zero gate exists for exact conversion of pretrained weights, where it must stay 0).
    flow_gate_init_std: float = 0.0
    # Flow-branch input also holds the reference image forward-warped along the flow + its coverage
    # mask (FlowCtrlTransformer.flow_warp_channels; a flowctrl extension, see docs/diffusion.md).
    warped_image: bool = False
    flow_token_skip: bool = False      # gate reads fused video + flow token at each position (see transformer)
    # The warped image + coverage also enter as zero-initialized extra input channels of the main patch
    # embedding (FlowCtrlTransformer.flow_warp_input; needs warped_image).
    warped_input: bool = False
    # ... and straight to the output patch through a zero-initialized linear map (flow_output_skip).
    warped_output_skip: bool = False
    vae_block_out_channels: List[int] = field(default_factory=lambda: [16, 16, 32, 32])  # tiny latent mode
    vae_latent_channels: int = 4


@dataclass
class VideoLoraConfig:
    rank: int = 0                    # 0 = full fine-tuning; 16 = the paper's motion LoRA
    alpha: Optional[float] = None    # defaults to rank
    target_modules: List[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    train_new_parts: bool = True     # also train the flow branch + stabilizers next to the LoRA


@dataclass
class VideoSchedulerConfig:
    prediction_type: str = "v_prediction"
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    rescale_betas_zero_snr: bool = True
    timestep_spacing: str = "trailing"
    snr_shift_scale: float = 1.0


@dataclass
class VideoTrainConfig:
    output_dir: str = "runs/video"
    seed: int = 0
    max_steps: int = 300
    batch_size: int = 4
    learning_rate: float = 1.0e-3
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 20
    grad_clip: float = 1.0
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str = "bf16"    # applied on GPU only; CPU trains in float32
    flow_dropout: float = 0.1
    image_noise: bool = True         # CogVideoX I2V trick: noise on the image latent, σ ~ logN(−3, 0.5)
    cache_latents: bool = True       # keep frozen-encoder latents per clip in RAM (off for large shard sets)
    train_parts: str = "all"         # all | new (flow branch + stabilizers only) — ignored with LoRA
    # Learning-rate multiplier of the few zero-initialized output-skip weights (model.warped_output_skip):
    # they must travel from 0 to ~1 while the DiT learns its own, blurrier copy.
    output_skip_lr_scale: float = 1.0
    log_every: int = 10
    checkpoint_every: int = 100
    checkpoints_total_limit: int = 2
    data: VideoDataConfig = field(default_factory=VideoDataConfig)
    model: VideoModelConfig = field(default_factory=VideoModelConfig)
    lora: VideoLoraConfig = field(default_factory=VideoLoraConfig)
    scheduler: VideoSchedulerConfig = field(default_factory=VideoSchedulerConfig)


_NESTED = {"data": VideoDataConfig, "model": VideoModelConfig, "lora": VideoLoraConfig, "scheduler": VideoSchedulerConfig}


def _build(cls, data: Any, source: str, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError.at(source, prefix.rstrip(".") or "<root>", f"is {type(data).__name__}, not a mapping",
                             "write key: value pairs")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError.at(source, prefix + str(key), "is not a known key", f"use one of {sorted(names)}")
        kwargs[key] = _build(_NESTED[key], value or {}, source, f"{key}.") if cls is VideoTrainConfig and key in _NESTED else value
    return cls(**kwargs)


def load_video_config(path: Optional[os.PathLike], overrides: Optional[Dict[str, Any]] = None,
                      settings: Sequence[str] = ()) -> VideoTrainConfig:
    """Read and validate a YAML config (defaults when ``path`` is None); ``overrides`` set top-level keys,
    ``settings`` are ``--set KEY=VALUE`` strings (dotted keys, YAML values)."""
    from flowctrl.train.config import read_config_data

    src = str(path or "<defaults>")
    data = read_config_data(path, overrides, example="configs/train/video_tiny.yaml", settings=settings)
    cfg = _build(VideoTrainConfig, data, src)
    from flowctrl.train.config import check_ranges, check_types

    check_types(cfg, src)
    check_ranges(cfg, src)
    checks = [
        (cfg.data.source in ("synthetic", "textures", "shards"), "data.source", f"is {cfg.data.source!r}",
         "use synthetic, textures or shards"),
        (cfg.data.source != "shards" or bool(cfg.data.shards), "data.shards", "is empty while data.source is shards",
         "give the `flowctrl prepare-data` output folder"),
        (cfg.mixed_precision in ("no", "fp16", "bf16"), "mixed_precision", f"is {cfg.mixed_precision!r}", "use no, fp16 or bf16"),
        (cfg.train_parts in ("all", "new"), "train_parts", f"is {cfg.train_parts!r}", "use all or new"),
        (0.0 <= float(cfg.flow_dropout) <= 1.0, "flow_dropout", f"is {cfg.flow_dropout}", "use a probability in [0, 1]"),
        (int(cfg.lora.rank) >= 0, "lora.rank", f"is {cfg.lora.rank}", "use 0 (off) or a positive rank such as 16"),
        (cfg.scheduler.prediction_type in ("epsilon", "v_prediction", "sample"), "scheduler.prediction_type",
         f"is {cfg.scheduler.prediction_type!r}", "use epsilon, v_prediction or sample (x0)"),
        (not cfg.model.warped_input or cfg.model.warped_image, "model.warped_input", "is true while model.warped_image is false",
         "set model.warped_image: true (the input channels carry the warped image)"),
        (not cfg.model.warped_output_skip or cfg.model.warped_image, "model.warped_output_skip",
         "is true while model.warped_image is false", "set model.warped_image: true (the skip copies the warped image)"),
        (cfg.data.num_frames >= 2, "data.num_frames", f"is {cfg.data.num_frames}", "use at least 2 frames (e.g. 9 or 49)"),
        (cfg.data.height >= 8 and cfg.data.width >= 8, "data.height/width", f"is {cfg.data.height}x{cfg.data.width}",
         "give sizes of at least 8 px"),
    ]
    for name in ("max_steps", "batch_size", "checkpoint_every", "log_every"):
        checks.append((int(getattr(cfg, name)) >= 1, name, f"is {getattr(cfg, name)}", "give a positive integer"))
    for ok, fld, problem, fix in checks:
        if not ok:
            raise ConfigError.at(src, fld, problem, fix)
    return cfg


def config_to_dict(cfg: VideoTrainConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


# -------------------------------------------------------------------------------------------- train
def train(cfg: VideoTrainConfig, resume: Optional[str] = None, log: Callable[[str], None] = print,
          stop_after: Optional[int] = None, time_budget_s: Optional[float] = None) -> Dict[str, Any]:
    """Run (or continue) a stage-2 training run. Returns ``{"step", "loss", "output_dir", "final", "pipeline"}``.

    ``stop_after``: leave after this many steps of this invocation without the final save (a simulated
    kill; tests use it for resume). ``time_budget_s``: end the run (with checkpoint and final save) once
    this much wall-clock time has passed — benchmarks train for a fixed time. Checkpoints: ``output_dir/checkpoints/checkpoint-N``; the trained
    pipeline: ``output_dir/final`` (and ``final/lora`` with the LoRA weights alone when LoRA is on).
    """
    from flowctrl.train.engine import run

    return run(VideoTask(cfg), resume=resume, log=log, stop_after=stop_after, time_limit_s=time_budget_s)
