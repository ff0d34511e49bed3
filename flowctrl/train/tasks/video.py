"""Task ``video`` (``flowctrl train video``): the stage-2 flow-conditioned video DiT.

Full fine-tuning or LoRA (peft through diffusers; rank 16 = the static-camera motion LoRA of paper 004),
flow-conditioning dropout (so flow guidance works at inference), gradient checkpointing, bf16 on GPU.
Objective (CogVideoX): ``z_t = add_noise(z0, ε, t)``, the transformer sees ``[z_t ⊕ image latent]``,
text, ``t`` and the flow latent (dropped per sample with probability ``flow_dropout``) and regresses the
scheduler's target (``v`` for ``v_prediction``, ``ε`` for ``epsilon``, ``z0`` for ``sample``) with MSE.
The config is :class:`flowctrl.train.video_loop.VideoTrainConfig`; the final folder is the trained pipeline
(and ``final/lora`` with the LoRA weights alone when LoRA is on).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flowctrl.train.engine import TrainTask
from flowctrl.train.losses import diffusion_target
from flowctrl.train.video_data import build_dataset

# ``cfg`` below is a :class:`flowctrl.train.video_loop.VideoTrainConfig` (typed ``Any``: that module imports this one)
VideoTrainConfig = Any


def make_scheduler(cfg: VideoTrainConfig):
    """The training noise scheduler of ``cfg.scheduler`` (CogVideoX's DDIM, saved with the final pipeline)."""
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


class VideoTask(TrainTask):
    """A stage-2 run: the pipeline's transformer is trained (wholly, its new parts, or a LoRA adapter); the VAE,
    flow codec and text encoder are frozen encoders whose latents are cached per clip (``cache_latents``)."""

    title = "video model"

    def __init__(self, cfg: VideoTrainConfig) -> None:
        self.cfg = cfg
        self.pipe = None

    def build(self, accelerator) -> nn.Module:
        self.pipe = pipe = build_pipeline(self.cfg)
        pipe.set_progress_bar_config(disable=True)
        for frozen in (pipe.vae, pipe.flow_codec, pipe.text_encoder):
            if frozen is not None:
                frozen.requires_grad_(False).eval().to(accelerator.device)
        setup_trainable(pipe.transformer, self.cfg)
        if self.cfg.gradient_checkpointing:
            pipe.transformer.enable_gradient_checkpointing()
        return pipe.transformer

    def param_groups(self, module: nn.Module, params: List[nn.Parameter]) -> List[Dict[str, Any]]:
        return param_groups(module, params, self.cfg)

    def setup_data(self, accelerator, log: Callable[[str], None]) -> Any:
        self.cache = _LatentCache(self.pipe)
        return build_dataset(self.cfg)

    def batch(self, items, indices, generator, device):
        lat = self.cache.batch(indices, items) if self.cfg.cache_latents else encode_batch(
            self.pipe, torch.stack([it["video"] for it in items]), torch.stack([it["flow"] for it in items]))
        return lat, _text_batch(self.pipe, items, device)

    def loss(self, accelerator, model, batch, generator) -> torch.Tensor:
        lat, text = batch
        with accelerator.autocast():
            return training_loss(self.pipe, model, lat, generator, flow_dropout=self.cfg.flow_dropout,
                                 image_noise=self.cfg.image_noise, text=text)

    def rebuild(self, fresh: nn.Module) -> None:
        setup_trainable(fresh, self.cfg)

    def save_final(self, trained, path: Path) -> Path:
        self.pipe.transformer = trained
        return save_final(self.pipe, self.cfg, path)

    def result(self) -> Dict[str, Any]:
        return {"pipeline": self.pipe}
