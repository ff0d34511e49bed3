"""Accelerate training of the stage-2 video DiT (``flowctrl train video --config configs/train/video_tiny.yaml``).

Full fine-tuning or LoRA (peft through diffusers; rank 16 = the static-camera motion LoRA of paper 004),
flow-conditioning dropout (so flow guidance works at inference), gradient checkpointing, bf16 on GPU,
DDP / FSDP / DeepSpeed ZeRO-2 through ``accelerate launch --config_file configs/accelerate/…``.
Data: synthetic scenes (:mod:`flowctrl.train.scenes`) or the shards of ``flowctrl prepare-data``
(:class:`flowctrl.train.shards.ShardDataset`).

Objective (CogVideoX): ``z_t = add_noise(z0, ε, t)``, the transformer sees ``[z_t ⊕ image latent]``,
text, ``t`` and the flow latent (dropped per sample with probability ``flow_dropout``) and regresses the
scheduler's target (``v`` for ``v_prediction``, ``ε`` for ``epsilon``, ``z0`` for ``sample``) with MSE.

Checkpoints and exact resume reuse the stage-1 loop's utilities (:mod:`flowctrl.train.flow_loop`):
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

import argparse
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flowctrl.errors import ConfigError

__all__ = ["VideoTrainConfig", "load_video_config", "build_pipeline", "encode_batch", "training_loss", "train", "main"]


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


# ------------------------------------------------------------------------------------------- models
def make_scheduler(cfg: VideoTrainConfig):
    from diffusers import CogVideoXDDIMScheduler

    s = cfg.scheduler
    return CogVideoXDDIMScheduler(
        num_train_timesteps=s.num_train_timesteps, beta_start=s.beta_start, beta_end=s.beta_end,
        beta_schedule=s.beta_schedule, prediction_type=s.prediction_type, clip_sample=False, set_alpha_to_one=True,
        rescale_betas_zero_snr=s.rescale_betas_zero_snr, timestep_spacing=s.timestep_spacing,
        snr_shift_scale=s.snr_shift_scale,
    )


def build_pipeline(cfg: VideoTrainConfig):
    """The :class:`FlowCtrlVideoPipeline` to train: a tiny random one (``model.init: tiny``) or a checkpoint."""
    from diffusers import AutoencoderKLCogVideoX

    from flowctrl.models.transformer import FlowCtrlTransformer
    from flowctrl.pipelines.diffusion import FlowCtrlVideoPipeline

    m, d = cfg.model, cfg.data
    if m.init != "tiny":
        return FlowCtrlVideoPipeline.from_folder(m.init, load_text_encoder=True)
    torch.manual_seed(cfg.seed)
    vae = codec = None
    if m.pixel_space:
        channels, flow_channels, spatial, temporal = 3, 2, 1, 1
    else:
        from flowctrl.models.flow_codec import FlowCodec

        n = len(m.vae_block_out_channels)
        vae = AutoencoderKLCogVideoX(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * n,
            up_block_types=("CogVideoXUpBlock3D",) * n, block_out_channels=tuple(m.vae_block_out_channels),
            latent_channels=m.vae_latent_channels, layers_per_block=1, norm_num_groups=4,
        )
        codec = FlowCodec.from_cogvideox_vae(vae)
        channels, flow_channels = m.vae_latent_channels, m.vae_latent_channels
        spatial, temporal = 2 ** (n - 1), 4
    latent_frames = (d.num_frames - 1) // temporal + 1
    transformer = FlowCtrlTransformer(
        num_attention_heads=m.num_attention_heads, attention_head_dim=m.attention_head_dim,
        in_channels=2 * channels, out_channels=channels, time_embed_dim=m.time_embed_dim,
        text_embed_dim=m.text_embed_dim, num_layers=m.num_layers, sample_width=d.width // spatial,
        sample_height=d.height // spatial, sample_frames=d.num_frames if temporal == 1 else d.num_frames,
        patch_size=m.patch_size, max_text_seq_length=m.max_text_seq_length, temporal_compression_ratio=temporal,
        flow_in_channels=flow_channels, flow_warp_channels=channels + 1 if m.warped_image else 0,
        flow_token_skip=m.flow_token_skip, flow_warp_input=m.warped_input,
        flow_output_skip=m.warped_output_skip, stabilizer_layers=m.stabilizer_layers,
        use_frequency_stabilizer=m.use_frequency_stabilizer,
        stabilizer_frames=latent_frames,
    )
    if m.flow_gate_init_std > 0:
        nn.init.normal_(transformer.flow_gate.weight, std=float(m.flow_gate_init_std))
    return FlowCtrlVideoPipeline(transformer=transformer, scheduler=make_scheduler(cfg), vae=vae, flow_codec=codec,
                                 pixel_flow_scale=m.pixel_flow_scale)


def setup_trainable(transformer: nn.Module, cfg: VideoTrainConfig) -> List[nn.Parameter]:
    """Freeze what is not trained; add the LoRA adapter when ``lora.rank > 0``. Returns trainable params."""
    new = ("flow_", "frequency_stabilizers.")
    if cfg.lora.rank > 0:
        from peft import LoraConfig

        transformer.requires_grad_(False)
        transformer.add_adapter(LoraConfig(r=int(cfg.lora.rank), lora_alpha=float(cfg.lora.alpha or cfg.lora.rank),
                                           target_modules=list(cfg.lora.target_modules), init_lora_weights=True))
        for name, p in transformer.named_parameters():
            if "lora_" in name or (cfg.lora.train_new_parts and name.startswith(new)):
                p.requires_grad_(True)
    elif cfg.train_parts == "new":
        for name, p in transformer.named_parameters():
            p.requires_grad_(name.startswith(new))
    else:
        transformer.requires_grad_(True)
    return [p for p in transformer.parameters() if p.requires_grad]


def param_groups(transformer: nn.Module, params: List[nn.Parameter], cfg: VideoTrainConfig) -> List[Dict[str, Any]]:
    """One optimizer group, or two when ``output_skip_lr_scale != 1``: the output-skip weights
    (``flow_output_*``) at ``learning_rate × output_skip_lr_scale``, everything else at ``learning_rate``."""
    scale = float(cfg.output_skip_lr_scale)
    if scale == 1.0:
        return [{"params": params}]
    skip_ids = {id(p) for n, p in transformer.named_parameters() if n.startswith("flow_output_")}
    skip = [p for p in params if id(p) in skip_ids]
    rest = [p for p in params if id(p) not in skip_ids]
    return [{"params": rest}] + ([{"params": skip, "lr": cfg.learning_rate * scale}] if skip else [])


# --------------------------------------------------------------------------------------------- data
class SyntheticVideoDataset(torch.utils.data.Dataset):
    """``num_scenes`` clips of :func:`flowctrl.train.scenes.render_scene` (seeds ``seed .. seed+n-1``),
    rendered on first access and kept. Items: ``{"video" (T,3,H,W) [0,1], "flow" (T,2,H,W) px}``."""

    def __init__(self, num_scenes: int, seed: int, num_frames: int, height: int, width: int, camera: str = "random") -> None:
        from flowctrl.train.scenes import SceneConfig

        self.n, self.seed = int(num_scenes), int(seed)
        self.scene = SceneConfig(num_frames=num_frames, height=height, width=width, camera=camera)
        self.cache: Dict[int, Dict[str, Any]] = {}

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:  # same clips every epoch
        pass

    def __getitem__(self, i: int) -> Dict[str, Any]:
        if i not in self.cache:
            from flowctrl.train.scenes import render_scene

            clip = render_scene(self.seed + i, self.scene)
            self.cache[i] = {"video": clip.video.float(), "flow": clip.flow.float(), "caption": ""}
        return self.cache[i]


class TextureMotionDataset(torch.utils.data.Dataset):
    """Textures moving along known flows: a crop of a ``skimage.data`` texture (E's scene textures) under
    a random smooth similarity motion (translation, rotation, zoom, each with a constant rate).

    Clip ``i`` is a pure function of ``seed + i``. The motion of reference pixel ``q`` at frame ``t`` is
    ``T_t(q) = c + s_t·R(θ_t)·(q − c) + d_t`` about the crop centre ``c``, with ``d_t = t·v``,
    ``θ_t = t·ω``, ``s_t = (1 + z)^t``; frame ``t`` samples the texture at ``T_t⁻¹(p)`` (bilinear) and
    the reference-form flow is exactly ``T_t(q) − q``. Items: ``{"video" (T,3,H,W) [0,1], "flow"
    (T,2,H,W) px}``. Rates are per frame: ``|v| ≤ max_speed`` px, ``|ω| ≤ max_rotation_deg``,
    ``|z| ≤ max_zoom``.
    """

    def __init__(self, num_clips: int, seed: int, num_frames: int, height: int, width: int,
                 max_speed: float = 1.0, max_rotation_deg: float = 2.0, max_zoom: float = 0.02) -> None:
        self.n, self.seed, self.t, self.h, self.w = int(num_clips), int(seed), int(num_frames), int(height), int(width)
        self.max_speed, self.max_rot, self.max_zoom = float(max_speed), math.radians(max_rotation_deg), float(max_zoom)

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        pass

    def __getitem__(self, i: int) -> Dict[str, Any]:
        from flowctrl.train.scenes import TEXTURES, _texture

        g = torch.Generator().manual_seed(self.seed + int(i))
        u = lambda: float(torch.rand((), generator=g)) * 2 - 1  # noqa: E731
        tex = _texture(TEXTURES[int(torch.randint(0, 8, (), generator=g))])          # (3, S, S)
        size = tex.shape[-1]
        # The crop covers (h, w) texture pixels scaled by `zoom0` around a random centre kept inside.
        zoom0 = 0.6 + 0.4 * float(torch.rand((), generator=g))   # ≤ 1 texel per pixel: no aliasing
        margin = 0.5 * max(self.h, self.w) * zoom0 * 1.6 + 2
        cx = margin + float(torch.rand((), generator=g)) * max(size - 2 * margin, 1)
        cy = margin + float(torch.rand((), generator=g)) * max(size - 2 * margin, 1)
        speed = self.max_speed * float(torch.rand((), generator=g)) ** 0.5
        angle = math.pi * u()
        v = torch.tensor([speed * math.cos(angle), speed * math.sin(angle)])
        omega, zrate = self.max_rot * u(), self.max_zoom * u()
        ys, xs = torch.meshgrid(torch.arange(self.h, dtype=torch.float32), torch.arange(self.w, dtype=torch.float32),
                                indexing="ij")
        c = torch.tensor([(self.w - 1) / 2, (self.h - 1) / 2])
        q = torch.stack([xs, ys]) - c.view(2, 1, 1)                                    # (2, H, W) about the centre
        frames, flows = [], []
        for t in range(self.t):
            s_t, th = (1 + zrate) ** t, omega * t
            rot = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
            moved = s_t * torch.einsum("ij,jhw->ihw", rot, q) + (t * v).view(2, 1, 1)   # T_t(q) − c
            flows.append(moved - q)
            # inverse map of the output grid p: q = R⁻¹ (p − c − d_t) / s_t, then into texture pixels
            back = torch.einsum("ji,jhw->ihw", rot, q - (t * v).view(2, 1, 1)) / s_t
            tx = cx + zoom0 * back[0]
            ty = cy + zoom0 * back[1]
            grid = torch.stack([tx / (size - 1) * 2 - 1, ty / (size - 1) * 2 - 1], dim=-1)[None]
            frames.append(F.grid_sample(tex[None], grid, mode="bilinear", padding_mode="reflection",
                                        align_corners=True)[0])
        flow = torch.stack(flows)
        flow[0] = 0.0
        return {"video": torch.stack(frames).clamp(0, 1), "flow": flow, "caption": ""}


class ShardVideoDataset(torch.utils.data.Dataset):
    """F's shards (``flowctrl prepare-data``) cut/resampled to ``num_frames`` at ``height×width``."""

    def __init__(self, root: str, num_frames: int, height: int, width: int) -> None:
        from flowctrl.train.shards import ShardDataset

        self.base = ShardDataset(root)
        self.t, self.size = num_frames, (height, width)

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __getitem__(self, i: int) -> Dict[str, Any]:
        item = self.base[i]
        video, flow = item["video"].float(), item["flow"].float()
        if video.shape[0] < self.t:
            raise ConfigError.at(item.get("name", i), "data.num_frames", f"the shard has {video.shape[0]} frames, fewer than {self.t}",
                                 "lower data.num_frames or prepare longer clips")
        video, flow = video[: self.t], flow[: self.t]
        h, w = video.shape[-2:]
        if (h, w) != self.size:
            video = F.interpolate(video, size=self.size, mode="bilinear", align_corners=False)
            scale = flow.new_tensor([self.size[1] / w, self.size[0] / h]).view(1, 2, 1, 1)
            flow = F.interpolate(flow, size=self.size, mode="bilinear", align_corners=False) * scale
        return {"video": video, "flow": flow, "caption": item.get("caption", "")}


def build_dataset(cfg: VideoTrainConfig):
    d = cfg.data
    if d.source == "textures":
        return TextureMotionDataset(d.num_scenes, d.seed, d.num_frames, d.height, d.width)
    if d.source == "shards":
        return ShardVideoDataset(d.shards, d.num_frames, d.height, d.width)
    return SyntheticVideoDataset(d.num_scenes, d.seed, d.num_frames, d.height, d.width, d.camera)


# --------------------------------------------------------------------------------------------- loss
@torch.no_grad()
def encode_batch(pipe: Any, video: torch.Tensor, flow: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Frozen encoders: ``video (B,T,3,H,W)`` [0,1], ``flow (B,T,2,H,W)`` px → ``{"z0", "image", "flow"}``
    latents ``(B,T',C,h,w)`` (video latent, I2V image condition, flow-branch input: the flow latent, plus
    the first frame forward-warped along the flow and its coverage when the model reads them)."""
    return {"z0": pipe.encode_video(video), "image": pipe.encode_image(video[:, 0], video.shape[1]),
            "flow": pipe.encode_flow_condition(flow, video[:, 0])}


def training_loss(pipe: Any, model: nn.Module, latents: Dict[str, torch.Tensor], generator: torch.Generator,
                  *, flow_dropout: float = 0.1, image_noise: bool = True,
                  text: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One diffusion loss on a batch of :func:`encode_batch` latents (scalar, float32).

    All randomness (timesteps, noise, flow dropout, image-latent noise) comes from ``generator`` (CPU),
    so a step is a pure function of its inputs (exact resume).
    """
    from flowctrl.train.flow_loop import diffusion_target

    sched = pipe.scheduler
    device = next(model.parameters()).device
    b = latents["z0"].shape[0]
    z0 = latents["z0"].to(device).float()
    img = latents["image"].to(device).float()
    fl = latents["flow"].to(device).float()
    pad = (-z0.shape[1]) % (pipe.transformer.config.patch_size_t or 1)
    if pad:  # CogVideoX 1.5: whole temporal patches, laid out as at inference (FlowCtrlVideoPipeline)
        z0, fl = (torch.cat([x[:, :pad], x], dim=1) for x in (z0, fl))
        img = torch.cat([img, torch.zeros_like(img[:, :pad])], dim=1)
    if image_noise:
        sigma = torch.exp(torch.randn(b, generator=generator) * 0.5 - 3.0).to(device).view(b, 1, 1, 1, 1)
        first = img[:, :1] + sigma * torch.randn(img[:, :1].shape, generator=generator).to(device)
        img = torch.cat([first, img[:, 1:]], dim=1)
    ts = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=generator).to(device)
    noise = torch.randn(z0.shape, generator=generator).to(device)
    zt = sched.add_noise(z0, noise, ts)
    target = diffusion_target(sched, z0, noise, ts)
    keep = (torch.rand(b, generator=generator) >= flow_dropout).float().to(device)
    cfg = pipe.transformer.config
    if text is None:
        text = torch.zeros(b, cfg.max_text_seq_length, cfg.text_embed_dim, device=device)
    rotary = pipe.rotary_embedding(z0.shape[1], z0.shape[-2], z0.shape[-1], device)
    dtype = next(model.parameters()).dtype
    ofs = None if cfg.ofs_embed_dim is None else torch.full((1,), 2.0, device=device, dtype=dtype)
    pred = model(hidden_states=torch.cat([zt, img], dim=2).to(dtype), encoder_hidden_states=text.to(dtype),
                 timestep=ts, flow_latents=fl.to(dtype), flow_scale=keep.to(dtype), image_rotary_emb=rotary,
                 ofs=ofs, return_dict=False)[0]
    return F.mse_loss(pred.float(), target.float())


class _LatentCache:
    """Frozen-encoder latents per dataset item (video, image condition and flow never change)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.store: Dict[int, Dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def batch(self, indices: Sequence[int], items: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        for i, it in zip(indices, items):
            if i not in self.store:
                lat = encode_batch(self.pipe, it["video"][None], it["flow"][None])
                self.store[i] = {k: v[0].cpu() for k, v in lat.items()}
        return {k: torch.stack([self.store[i][k] for i in indices]) for k in ("z0", "image", "flow")}


@torch.no_grad()
def _text_batch(pipe: Any, items: Sequence[Dict[str, Any]], device) -> Optional[torch.Tensor]:
    if pipe.text_encoder is None or pipe.tokenizer is None:
        return None
    captions = [str(it.get("caption") or "") for it in items]
    cfg = pipe.transformer.config
    return pipe._get_t5_prompt_embeds(captions, 1, cfg.max_text_seq_length, device, pipe.text_encoder.dtype)


# -------------------------------------------------------------------------------------------- train
def train(cfg: VideoTrainConfig, resume: Optional[str] = None, log: Callable[[str], None] = print,
          stop_after: Optional[int] = None, time_budget_s: Optional[float] = None) -> Dict[str, Any]:
    """Run (or continue) a stage-2 training run. Returns ``{"step", "loss", "output_dir", "final"}``.

    ``stop_after``: leave after this many steps of this invocation without the final save (a simulated
    kill; tests use it for resume). ``time_budget_s``: end the run (with checkpoint and final save) once
    this much wall-clock time has passed — benchmarks train for a fixed time. Checkpoints: ``output_dir/checkpoints/checkpoint-N``; the trained
    pipeline: ``output_dir/final`` (and ``final/lora`` with the LoRA weights alone when LoRA is on).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from flowctrl.train.data import num_batches, seeded_order
    from flowctrl.train.flow_loop import (_save_checkpoint, make_lr_scheduler, optimizer_step, record_step, start_run,
                                         trained_module)

    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda, mixed_precision=cfg.mixed_precision if cuda else "no",
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    rank, world = accelerator.process_index, accelerator.num_processes
    out = Path(cfg.output_dir)
    set_seed(cfg.seed)
    try:
        pipe = build_pipeline(cfg)
    except (TypeError, ValueError) as error:  # model: settings the transformer / VAE refuse
        raise ConfigError.at(cfg.output_dir, "model", f"the config's model settings are refused "
                             f"({' '.join(str(error).split())[:200]})", "check the keys and values of model:") from None
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer
    for frozen in (pipe.vae, pipe.flow_codec, pipe.text_encoder):
        if frozen is not None:
            frozen.requires_grad_(False).eval().to(accelerator.device)
    params = setup_trainable(transformer, cfg)
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(param_groups(transformer, params, cfg), lr=cfg.learning_rate,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay)
    lr_sched = make_lr_scheduler(cfg.lr_scheduler, optimizer, cfg.lr_warmup_steps, cfg.max_steps,
                                 accelerator.gradient_accumulation_steps, world)  # the launcher may override the config's
    model, optimizer, lr_sched = accelerator.prepare(transformer, optimizer, lr_sched)
    device = accelerator.device

    dataset = build_dataset(cfg)
    cache = _LatentCache(pipe)
    step, metrics = start_run(accelerator, out, config_to_dict(cfg), resume, log)

    model.train()
    loss_value, done_here, t0 = float("nan"), 0, time.time()
    n = len(dataset)
    out_of_time = False
    while step < cfg.max_steps and not out_of_time:
        nb = num_batches(n, cfg.batch_size, world)
        epoch, pos = divmod(step, nb)
        order = seeded_order(n, epoch, cfg.data.seed, cfg.data.shuffle)
        if len(order) < cfg.batch_size * world:
            order = order * (cfg.batch_size * world // max(1, len(order)) + 1)
        start = (pos * world + rank) * cfg.batch_size
        idx = order[start:start + cfg.batch_size]
        items = [dataset[i] for i in idx]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + rank)
        lat = cache.batch(idx, items) if cfg.cache_latents else encode_batch(
            pipe, torch.stack([it["video"] for it in items]), torch.stack([it["flow"] for it in items]))
        text = _text_batch(pipe, items, device)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss = training_loss(pipe, model, lat, gen, flow_dropout=cfg.flow_dropout,
                                     image_noise=cfg.image_noise, text=text)
            optimizer_step(accelerator, loss, params, optimizer, lr_sched, cfg.grad_clip)
        step += 1
        done_here += 1
        loss_value = record_step(accelerator, metrics, step, loss, lr_sched, t0, cfg.log_every, cfg.max_steps, log)
        if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            _save_checkpoint(accelerator, out, step, cfg.checkpoints_total_limit)
        if stop_after is not None and done_here >= stop_after:
            break
        out_of_time = time_budget_s is not None and bool(
            accelerator.reduce(torch.tensor(float(time.time() - t0 >= time_budget_s), device=device), "max") > 0)

    final = None
    if step >= cfg.max_steps or out_of_time:
        _save_checkpoint(accelerator, out, step, cfg.checkpoints_total_limit)
        trained = trained_module(accelerator, model, rebuild=lambda fresh: setup_trainable(fresh, cfg))  # collective
        if accelerator.is_main_process:
            pipe.transformer = trained
            final = save_final(pipe, cfg, out / "final")
            log(f"saved {final}")
    accelerator.wait_for_everyone()
    result = {"step": step, "loss": loss_value, "output_dir": str(out), "final": str(final) if final else None,
              "pipeline": pipe}
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return result


def save_lora(pipe: Any, path: os.PathLike) -> Path:
    """Write the transformer's LoRA weights alone (``pytorch_lora_weights.safetensors``) to ``path``."""
    from peft.utils import get_peft_model_state_dict

    from flowctrl.io_safety import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(pipe.transformer)
    with atomic_path(path, folder=True, replace=True) as tmp:
        type(pipe).save_lora_weights(str(tmp), transformer_lora_layers=state, safe_serialization=True)
    return path


def save_final(pipe: Any, cfg: VideoTrainConfig, path: Path) -> Path:
    """The trained pipeline in the layout :meth:`DiffusionBackend.from_pretrained` reads (atomic)."""
    from flowctrl.io_safety import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, folder=True, replace=True) as tmp:
        if cfg.lora.rank > 0:
            save_lora(pipe, tmp / "lora")
            # The full pipeline with the LoRA merged, so the folder also runs without peft.
            pipe.transformer.fuse_lora(lora_scale=1.0) if hasattr(pipe.transformer, "fuse_lora") else None
            pipe.transformer.unload_lora() if hasattr(pipe.transformer, "unload_lora") else None
        pipe.save_pretrained(str(tmp))
    return path


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (configs/train/video_tiny.yaml)")
    parser.add_argument("--output-dir", dest="output_dir", default=None, help="overrides output_dir")
    parser.add_argument("--max-steps", dest="max_steps", type=int, default=None, help="overrides max_steps")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--seed", type=int, default=None, help="overrides seed")
    from flowctrl.commands.train import add_set_argument

    add_set_argument(parser)


def main(args: Any = None) -> int:
    """Entry of ``flowctrl train video`` (``args``: argparse namespace with config, output_dir, max_steps,
    resume) or of ``python -m flowctrl.train.video_loop`` (``args``: argv list or None)."""
    if args is None or isinstance(args, (list, tuple)):
        parser = argparse.ArgumentParser(prog="flowctrl train video", description="train the stage-2 video DiT")
        add_arguments(parser)
        args = parser.parse_args(args)
    overrides = {"output_dir": getattr(args, "output_dir", None) or getattr(args, "output", None),
                 "max_steps": getattr(args, "max_steps", None), "seed": getattr(args, "seed", None)}
    cfg = load_video_config(getattr(args, "config", None), overrides, getattr(args, "set", None) or ())
    from flowctrl.train.config import check_run_outputs

    init = cfg.model.init if cfg.model.init != "tiny" and Path(cfg.model.init).exists() else None
    check_run_outputs(getattr(args, "config", None), cfg.output_dir, [cfg.data.shards, init],
                      str(getattr(args, "config", None) or "<defaults>"))
    result = train(cfg, resume=getattr(args, "resume", None))
    if result.get("final"):
        print(f"trained video model: step {result['step']} loss {result['loss']:.5f} -> {result['final']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    from flowctrl.errors import FlowCtrlError

    try:
        raise SystemExit(main(sys.argv[1:]))
    except FlowCtrlError as error:
        print(f"flowctrl train video: error: {error}", file=sys.stderr)
        raise SystemExit(2)
