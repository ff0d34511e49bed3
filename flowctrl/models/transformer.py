"""Flow-conditioned video DiT (AnimateAnything Fig. 3, stage 2) on top of diffusers' CogVideoX.

``FlowCtrlTransformer`` *is* a :class:`diffusers.CogVideoXTransformer3DModel` (image-to-video layout: the
image latent is concatenated to the noisy video latent on channels, so ``in_channels == 2 *
out_channels``) with two additions:

* **flow branch** — the flow latent of the 3D flow VAE (``FlowCodec``) is patch-embedded, one ViT block
  attends over ``[video tokens; flow tokens]``, and the block's output at the video positions is added to
  the video tokens through a zero-initialized linear gate, before the DiT blocks.
  With ``flow_warp_channels > 0`` (a flowctrl extension, not in the paper; MOFA-Video / Motion-I2V style)
  the branch input is the flow latent concatenated on channels with the reference image forward-warped
  along the flow (its latent) and the coverage mask; the pipeline builds it
  (:meth:`~flowctrl.pipelines.diffusion.FlowCtrlVideoPipeline.encode_flow_condition`). With
  ``flow_token_skip`` the gate reads the fused video token plus the fused flow token at the same position.
  With ``flow_warp_input`` the warped image + coverage are also zero-initialized extra input channels of
  the main patch embedding, and with ``flow_output_skip`` a zero-initialized pointwise linear map adds
  them to the prediction (both flowctrl extensions, scaled by ``flow_scale`` like the branch).
* **frequency stabilizers** — after each selected DiT block the video tokens pass through a
  :class:`~flowctrl.models.frequency.FrequencyStabilizer` along the temporal token axis (identity at init).

Both additions are exactly neutral at initialization, so :meth:`FlowCtrlTransformer.from_cogvideox`
reproduces the base checkpoint's output bit for bit. Attention is diffusers' own (torch SDPA).
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from einops import rearrange
from diffusers import CogVideoXTransformer3DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import get_3d_sincos_pos_embed
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from flowctrl.errors import InputError, MissingWeightsError
from flowctrl.models.frequency import FrequencyStabilizer

try:  # diffusers >= 0.36 scales LoRA layers through this decorator
    from diffusers.utils import apply_lora_scale
except ImportError:  # pragma: no cover - older diffusers
    def apply_lora_scale(_name):  # type: ignore[no-redef]
        return lambda fn: fn

__all__ = ["FlowCtrlTransformer", "COGVIDEOX_HINT"]

COGVIDEOX_HINT = (
    "download an image-to-video CogVideoX checkpoint once (e.g. `huggingface-cli download "
    "THUDM/CogVideoX-5b-I2V --local-dir ckpt/cogvideox-5b-i2v`) and pass that folder"
)


class FlowCtrlTransformer(CogVideoXTransformer3DModel):
    """CogVideoX I2V DiT + flow branch + frequency stabilizers.

    All ``CogVideoXTransformer3DModel`` arguments are accepted unchanged. New ones:

    Args:
        flow_in_channels: channels of the flow latent (``FlowCodec`` latent channels; 16 for the
            CogVideoX VAE; 2 for pixel-space tiny models).
        flow_warp_channels: extra flow-branch input channels after the flow latent: the reference
            image forward-warped along the flow (its latent: 3 in pixel space, the VAE's latent
            channels otherwise) + 1 coverage mask. 0 (default) = the flow alone, as in the paper.
            Everything that depends on the flow (flow latent and warped image) enters through the one
            gated branch, so dropping the flow (``flow_scale = 0``) drops both.
        flow_token_skip: the gate reads the fused video token *plus* the fused flow token at the same
            position (the two token grids are aligned), not the video token alone. False (default) =
            the paper's read-out; True gives the flow a position-wise path besides attention (the
            way ControlNet-style conditioning adds features), still zero at init through the gate.
        flow_warp_input: the warped image + coverage (the last ``flow_warp_channels`` channels of
            ``flow_latents``) are also extra input channels of the main patch embedding, next to the noisy
            latent and the image latent, with zero-initialized weights (``flow_input_proj``: a linear
            patch embedding is a sum over its channel groups, so this equals widening ``patch_embed``'s
            input while its base weights stay untouched). The warped image then sits on the residual
            stream of the very token it predicts, as the I2V image latent does for frame 0. It is scaled
            by ``flow_scale`` like the branch (dropped with the flow). Needs ``flow_warp_channels > 0``.
        flow_output_skip: a zero-initialized pointwise (1×1) linear map from the warped image + coverage
            latent straight to the prediction at the same latent pixel (``flow_output_proj``), times a
            per-channel gain ``1 + flow_output_time(time embedding)`` (zero-init: gain 1), scaled by
            ``flow_scale``. With an ``x0`` target (``prediction_type="sample"``) copying the warped image
            is then a few weights that see the whole latent grid, with no trip through LayerNorms and
            attention; the DiT predicts the correction (holes, splat blur). Needs ``flow_warp_channels > 0``.
        flow_num_attention_heads / flow_attention_head_dim: width of the fusion ViT block; default
            to the DiT's, so the block's hidden size is the DiT's.
        use_frequency_stabilizer: build the stabilizers.
        stabilizer_frames: temporal token count the stabilizer weights are defined for (13 latent
            frames = 49 video frames for CogVideoX 1.0); other lengths resample the response.
        stabilizer_layers: indices of the DiT blocks followed by a stabilizer; ``None`` = every block.
    """

    _no_split_modules = ["CogVideoXBlock", "CogVideoXPatchEmbed", "BasicTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 30,
        attention_head_dim: int = 64,
        in_channels: int = 32,
        out_channels: Optional[int] = 16,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        time_embed_dim: int = 512,
        ofs_embed_dim: Optional[int] = None,
        text_embed_dim: int = 4096,
        num_layers: int = 30,
        dropout: float = 0.0,
        attention_bias: bool = True,
        sample_width: int = 90,
        sample_height: int = 60,
        sample_frames: int = 49,
        patch_size: int = 2,
        patch_size_t: Optional[int] = None,
        temporal_compression_ratio: int = 4,
        max_text_seq_length: int = 226,
        activation_fn: str = "gelu-approximate",
        timestep_activation_fn: str = "silu",
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        spatial_interpolation_scale: float = 1.875,
        temporal_interpolation_scale: float = 1.0,
        use_rotary_positional_embeddings: bool = False,
        use_learned_positional_embeddings: bool = False,
        patch_bias: bool = True,
        flow_in_channels: int = 16,
        flow_warp_channels: int = 0,
        flow_token_skip: bool = False,
        flow_warp_input: bool = False,
        flow_output_skip: bool = False,
        flow_num_attention_heads: Optional[int] = None,
        flow_attention_head_dim: Optional[int] = None,
        use_frequency_stabilizer: bool = True,
        stabilizer_frames: int = 13,
        stabilizer_layers: Optional[Sequence[int]] = None,
    ):
        super().__init__(
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            time_embed_dim=time_embed_dim,
            ofs_embed_dim=ofs_embed_dim,
            text_embed_dim=text_embed_dim,
            num_layers=num_layers,
            dropout=dropout,
            attention_bias=attention_bias,
            sample_width=sample_width,
            sample_height=sample_height,
            sample_frames=sample_frames,
            patch_size=patch_size,
            patch_size_t=patch_size_t,
            temporal_compression_ratio=temporal_compression_ratio,
            max_text_seq_length=max_text_seq_length,
            activation_fn=activation_fn,
            timestep_activation_fn=timestep_activation_fn,
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
            spatial_interpolation_scale=spatial_interpolation_scale,
            temporal_interpolation_scale=temporal_interpolation_scale,
            use_rotary_positional_embeddings=use_rotary_positional_embeddings,
            use_learned_positional_embeddings=use_learned_positional_embeddings,
            patch_bias=patch_bias,
        )
        inner_dim = num_attention_heads * attention_head_dim
        if inner_dim % 16 != 0:
            raise ValueError(f"hidden size {inner_dim} must be divisible by 16 (3D sin-cos positions)")
        p_t = patch_size_t or 1

        # Flow branch: patch embedding (a strided conv written as a linear on patches), one ViT block.
        if flow_warp_channels < 0:
            raise ValueError(f"flow_warp_channels must be >= 0, got {flow_warp_channels}")
        flow_channels = flow_in_channels + flow_warp_channels
        self.flow_patch_embed = nn.Linear(flow_channels * patch_size * patch_size * p_t, inner_dim)
        self.flow_modality_embed = nn.Parameter(torch.zeros(2, inner_dim))
        nn.init.normal_(self.flow_modality_embed, std=0.02)
        self.flow_fusion_block = BasicTransformerBlock(
            dim=inner_dim,
            num_attention_heads=flow_num_attention_heads or num_attention_heads,
            attention_head_dim=flow_attention_head_dim or attention_head_dim,
            activation_fn=activation_fn,
            attention_bias=attention_bias,
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
        )
        # Zero-initialized gate: exactly no contribution at init, yet its weights get gradients at once.
        self.flow_gate = nn.Linear(inner_dim, inner_dim)
        nn.init.zeros_(self.flow_gate.weight)
        nn.init.zeros_(self.flow_gate.bias)
        # Warped image + coverage as zero-initialized extra input channels of the main patch embedding.
        if flow_warp_input and flow_warp_channels <= 0:
            raise ValueError("flow_warp_input needs flow_warp_channels > 0 (the warped image it feeds)")
        if flow_output_skip and flow_warp_channels <= 0:
            raise ValueError("flow_output_skip needs flow_warp_channels > 0 (the warped image it copies)")
        self.flow_output_proj = None
        if flow_output_skip:
            self.flow_output_proj = nn.Linear(flow_warp_channels, out_channels or in_channels)
            # Per-timestep, per-channel gain of the skip (1 + zero-init linear of the time embedding): copying
            # the warped image is right at high noise, while at low noise z_t itself holds x0.
            self.flow_output_time = nn.Linear(time_embed_dim, out_channels or in_channels)
            nn.init.zeros_(self.flow_output_time.weight)
            nn.init.zeros_(self.flow_output_time.bias)
            nn.init.zeros_(self.flow_output_proj.weight)
            nn.init.zeros_(self.flow_output_proj.bias)
        self.flow_input_proj = None
        if flow_warp_input:
            self.flow_input_proj = nn.Linear(flow_warp_channels * patch_size * patch_size * p_t, inner_dim)
            nn.init.zeros_(self.flow_input_proj.weight)
            nn.init.zeros_(self.flow_input_proj.bias)

        layers = list(range(num_layers)) if stabilizer_layers is None else [int(i) for i in stabilizer_layers]
        bad = [i for i in layers if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"stabilizer_layers {bad} out of range for {num_layers} layers")
        token_frames = (stabilizer_frames + p_t - 1) // p_t
        self.frequency_stabilizers = nn.ModuleDict(
            {str(i): FrequencyStabilizer(inner_dim, token_frames) for i in layers} if use_frequency_stabilizer else {}
        )

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_cogvideox(
        cls,
        path_or_hub_id: Union[str, os.PathLike],
        *,
        subfolder: Optional[str] = None,
        torch_dtype: Optional[torch.dtype] = None,
        local_files_only: bool = True,
        **flow_config: Any,
    ) -> "FlowCtrlTransformer":
        """Start from a CogVideoX image-to-video transformer (2B/5B, a pipeline folder or its
        ``transformer/`` folder, or a hub id already in the local cache).

        Every base weight is copied; the flow branch (zero gate) and the stabilizers (zero delta) are
        new, so the converted model's output equals the base model's output exactly.
        ``flow_config`` sets the new arguments (``flow_in_channels``, ``stabilizer_frames``, ...).
        Raises :class:`MissingWeightsError` when the checkpoint is not available locally.
        """
        base = _load_base_transformer(path_or_hub_id, subfolder, torch_dtype, local_files_only)
        config = {k: v for k, v in dict(base.config).items() if not k.startswith("_")}
        if config.get("in_channels") != 2 * (config.get("out_channels") or 16):
            raise MissingWeightsError.at(
                path_or_hub_id,
                "transformer.in_channels",
                f"is {config.get('in_channels')}: a text-to-video checkpoint, not image-to-video",
                "use an I2V checkpoint (in_channels = 2 x out_channels), e.g. THUDM/CogVideoX-5b-I2V",
            )
        config.setdefault("flow_in_channels", config.get("out_channels") or 16)
        config.update(flow_config)
        allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
        model = cls(**{k: v for k, v in config.items() if k in allowed})
        missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        new_prefixes = ("flow_", "frequency_stabilizers.")
        wrong_missing = [k for k in missing if not k.startswith(new_prefixes)]
        if unexpected or wrong_missing:
            raise MissingWeightsError.at(
                path_or_hub_id, "transformer", f"weights do not match (unexpected {unexpected[:3]}, missing {wrong_missing[:3]})",
                "pass an unmodified CogVideoX I2V checkpoint",
            )
        return model if base.dtype == torch.float32 else model.to(dtype=base.dtype)

    def new_parameter_names(self) -> list:
        """Names of the parameters that ``from_cogvideox`` does not take from the base model."""
        return [n for n, _ in self.named_parameters() if n.startswith(("flow_", "frequency_stabilizers."))]

    # ------------------------------------------------------------------ flow branch
    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T', C, h, w)`` → patch vectors ``(B, T'/p_t · h/p · w/p, C·p_t·p·p)``, frame-major like CogVideoX."""
        p, p_t = self.config.patch_size, self.config.patch_size_t or 1
        return rearrange(x, "b (t pt) c (h ph) (w pw) -> b (t h w) (c pt ph pw)", pt=p_t, ph=p, pw=p)

    def flow_input_residual(self, flow_latents: torch.Tensor) -> torch.Tensor:
        """``flow_warp_input``: the warped image + coverage channels of ``flow_latents`` through the
        zero-initialized input weights → ``(B, N, D)`` added to the patch-embedded video tokens."""
        warp = flow_latents[:, :, self.config.flow_in_channels:]
        return self.flow_input_proj(self._patches(warp).to(self.flow_input_proj.weight.dtype))

    def _patchify_flow(self, flow_latents: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
        """``(B, T', C_f [+ C_w], h, w)`` → tokens ``(B, T'/p_t · h/p · w/p, D)``, frame-major like CogVideoX."""
        p, p_t = self.config.patch_size, self.config.patch_size_t or 1
        b, t, c, h, w = flow_latents.shape
        expected = self.config.flow_in_channels + self.config.flow_warp_channels
        if c != expected:
            warp = self.config.flow_warp_channels
            raise InputError.at(
                None, "flow_latents", f"has {c} channels, the model expects {expected}"
                + (f" ({self.config.flow_in_channels} flow latent + {warp} warped image and coverage)" if warp else ""),
                "build it with FlowCtrlVideoPipeline.encode_flow_condition (the FlowCodec the model was trained with)",
            )
        x = self._patches(flow_latents)
        return self.flow_patch_embed(x.to(self.flow_patch_embed.weight.dtype)), (t // p_t, h // p, w // p)

    def flow_residual(self, video_tokens: torch.Tensor, flow_latents: torch.Tensor) -> torch.Tensor:
        """The gated flow contribution added to ``video_tokens (B, N, D)``; zero at initialization."""
        flow_tokens, (tt, hh, ww) = self._patchify_flow(flow_latents)
        if flow_tokens.shape[1] != video_tokens.shape[1]:
            raise InputError.at(
                None, "flow_latents", f"gives {flow_tokens.shape[1]} tokens for {video_tokens.shape[1]} video tokens",
                "encode the flow at the video's frame count and size",
            )
        pos = get_3d_sincos_pos_embed(video_tokens.shape[-1], (ww, hh), tt, device=video_tokens.device)
        pos = pos.reshape(1, tt * hh * ww, -1).to(video_tokens.dtype)
        mod = self.flow_modality_embed.to(video_tokens.dtype)
        tokens = torch.cat([video_tokens + pos + mod[0], flow_tokens + pos + mod[1]], dim=1)
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            fused = self._gradient_checkpointing_func(self.flow_fusion_block, tokens)
        else:
            fused = self.flow_fusion_block(tokens)
        n = video_tokens.shape[1]
        readout = fused[:, :n] + fused[:, n:] if self.config.flow_token_skip else fused[:, :n]
        return self.flow_gate(readout)

    # ------------------------------------------------------------------ forward
    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: Union[int, float, torch.LongTensor],
        flow_latents: Optional[torch.Tensor] = None,
        flow_scale: Optional[Union[float, torch.Tensor]] = None,
        timestep_cond: Optional[torch.Tensor] = None,
        ofs: Optional[Union[int, float, torch.LongTensor]] = None,
        image_rotary_emb: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        attention_kwargs: Optional[Dict[str, Any]] = None,
        return_dict: bool = True,
    ) -> Union[Tuple[torch.Tensor], Transformer2DModelOutput]:
        """Predict the CogVideoX target (v or ε) for one denoising step.

        Args:
            hidden_states: ``(B, T', 2·C, h, w)`` noisy video latent ⊕ image latent (channels).
            encoder_hidden_states: ``(B, L, text_embed_dim)`` text embeddings (T5 or precomputed).
            timestep: ``(B,)`` or scalar diffusion timestep.
            flow_latents: ``(B, T', C_f, h, w)`` flow latent (``C_f + flow_warp_channels`` channels with
                the warped-image input), or ``None`` = flow dropped (base model).
            flow_scale: ``(B,)`` or scalar multiplier of the flow branch (0 = dropped per sample;
                training uses it for flow-conditioning dropout).
        Returns:
            ``(B, T', C, h, w)`` prediction (``Transformer2DModelOutput.sample`` or a 1-tuple).
        """
        batch_size, num_frames, _channels, height, width = hidden_states.shape

        t_emb = self.time_proj(timestep).to(dtype=hidden_states.dtype)
        emb = self.time_embedding(t_emb, timestep_cond)
        if self.ofs_embedding is not None:
            ofs_emb = self.ofs_proj(ofs).to(dtype=hidden_states.dtype)
            emb = emb + self.ofs_embedding(ofs_emb)

        hidden_states = self.patch_embed(encoder_hidden_states, hidden_states)
        hidden_states = self.embedding_dropout(hidden_states)
        text_seq_length = encoder_hidden_states.shape[1]
        encoder_hidden_states = hidden_states[:, :text_seq_length]
        hidden_states = hidden_states[:, text_seq_length:]

        def scaled(x: torch.Tensor) -> torch.Tensor:  # the flow-dependent term x (B, N, ·) times flow_scale
            if flow_scale is None:
                return x
            scale = torch.as_tensor(flow_scale, device=x.device, dtype=x.dtype)
            return x * scale.reshape(-1, 1, 1) if scale.dim() else x * scale

        if flow_latents is not None:
            residual = self.flow_residual(hidden_states, flow_latents.to(hidden_states.dtype))
            if self.flow_input_proj is not None:
                residual = residual + self.flow_input_residual(flow_latents.to(hidden_states.dtype))
            hidden_states = hidden_states + scaled(residual)

        p, p_t = self.config.patch_size, self.config.patch_size_t or 1
        token_frames = (num_frames + p_t - 1) // p_t if p_t > 1 else num_frames
        for i, block in enumerate(self.transformer_blocks):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states, encoder_hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, emb, image_rotary_emb, attention_kwargs
                )
            else:
                hidden_states, encoder_hidden_states = block(
                    hidden_states=hidden_states,
                    encoder_hidden_states=encoder_hidden_states,
                    temb=emb,
                    image_rotary_emb=image_rotary_emb,
                    attention_kwargs=attention_kwargs,
                )
            stabilizer = self.frequency_stabilizers[str(i)] if str(i) in self.frequency_stabilizers else None
            if stabilizer is not None:
                b, n, d = hidden_states.shape
                hidden_states = stabilizer(hidden_states.reshape(b, token_frames, n // token_frames, d)).reshape(b, n, d)

        hidden_states = self.norm_final(hidden_states)
        hidden_states = self.norm_out(hidden_states, temb=emb)
        hidden_states = self.proj_out(hidden_states)

        if self.config.patch_size_t is None:
            output = rearrange(hidden_states, "b (t h w) (c ph pw) -> b t c (h ph) (w pw)", t=num_frames,
                               h=height // p, w=width // p, ph=p, pw=p)
        else:
            output = rearrange(hidden_states, "b (t h w) (c pt ph pw) -> b (t pt) c (h ph) (w pw)", t=token_frames,
                               h=height // p, w=width // p, pt=p_t, ph=p, pw=p)

        if flow_latents is not None and self.flow_output_proj is not None:
            warp = flow_latents[:, :, self.config.flow_in_channels:].to(output.dtype)
            skip = self.flow_output_proj(warp.movedim(2, -1)).movedim(-1, 2)          # (B, T', C_out, h, w)
            gain = 1.0 + self.flow_output_time(emb.to(output.dtype))                  # (B, C_out)
            skip = skip * gain[:, None, :, None, None]
            output = output + scaled(skip.flatten(2)).view_as(skip)

        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)


def _load_base_transformer(
    path_or_hub_id: Union[str, os.PathLike],
    subfolder: Optional[str],
    torch_dtype: Optional[torch.dtype],
    local_files_only: bool,
) -> CogVideoXTransformer3DModel:
    src = str(path_or_hub_id)
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise MissingWeightsError.at(src, "transformer", "is a file, not a checkpoint folder", COGVIDEOX_HINT)
        if subfolder is None:
            if (path / "transformer" / "config.json").is_file():
                subfolder = "transformer"
            elif not (path / "config.json").is_file():
                raise MissingWeightsError.at(src, "transformer/config.json", "not found", COGVIDEOX_HINT)
    elif subfolder is None:
        subfolder = "transformer"
    try:
        return CogVideoXTransformer3DModel.from_pretrained(
            str(path) if path.exists() else src,
            subfolder=subfolder,
            torch_dtype=torch_dtype,
            local_files_only=local_files_only,
            use_safetensors=True,
        )
    except (OSError, EnvironmentError, ValueError) as error:
        raise MissingWeightsError.at(
            src, subfolder or "transformer", f"could not be loaded locally ({type(error).__name__})", COGVIDEOX_HINT
        ) from None
