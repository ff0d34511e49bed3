"""Flow Generation Model (FGM): a CogVideoX-style video DiT that denoises flow latents.

Seed 000 §Method (Fig. 3): the FGM denoises the latent of the unified flow, conditioned on the
sparse/coarse flow of the explicit controls, on the reference image, and — through reference attention —
on the per-layer features of the Camera Reference Model (:mod:`flowctrl.models.crm`).

Inputs per step:
  * noisy flow latent ``(B, T', C, h, w)`` (the :class:`~flowctrl.models.flow_codec.FlowCodec` layout),
  * reference-image latent ``(B, 1, C_img, h, w)`` placed at latent frame 0 (zeros after it) and
    concatenated on channels, as CogVideoX image-to-video does,
  * sparse condition ``(B, T, 3, H, W)`` = (bounded dx, bounded dy, mask) encoded by a pose-guider-style
    :class:`~flowctrl.models.guider.ConditionEncoder` and added to the patch tokens,
  * timestep, plus the motion-strength embedding (seed 004 §3.3) added to the timestep embedding,
  * optional CRM hidden states, one tensor per CRM layer.

The module names follow diffusers' ``CogVideoXTransformer3DModel`` (``patch_embed``, ``time_embedding``,
``transformer_blocks``, ``norm_out``, ``proj_out`` …) so :meth:`FlowGenerationModel.from_cogvideox` can
start from a pretrained CogVideoX transformer. There is no text: the blocks run with zero text tokens.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
from einops import rearrange
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import (
    CogVideoXPatchEmbed,
    TimestepEmbedding,
    Timesteps,
    get_3d_rotary_pos_embed,
)
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNorm
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
from diffusers.utils import BaseOutput
from torch import nn

from flowctrl.errors import MissingWeightsError
from flowctrl.models.control_tokens import ControlTokenEncoder, control_attention_mask
from flowctrl.models.embeddings import MotionStrengthEmbedding
from flowctrl.models.guider import ConditionEncoder
from flowctrl.models.reference_attention import ReferenceAttnProcessor


def sparse_condition(sparse: torch.Tensor, mask: torch.Tensor, flow_scale: float) -> torch.Tensor:
    """Sparse flow (B,T,2,H,W) px + mask (B,T,1,H,W) → bounded condition (B,T,3,H,W) in [-1, 1]."""
    m = mask.to(sparse.dtype)
    return torch.cat([torch.tanh(sparse / flow_scale) * m, m], dim=2)


BASES = (None, "parametric")


def coarse_base(sparse: torch.Tensor, mask: torch.Tensor, kind: Optional[str],
                camera_flow: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """The dense coarse flow an FGM with ``config.base`` denoises the residual of (None when ``kind`` is None).

    ``"parametric"``: :func:`flowctrl.models.refiner.parametric_interpolation` of the controls (robust affine
    fit + spread residuals; zero at frames without controls, so camera-only conditions give a zero base).
    With ``camera_flow`` (B,T,2,H,W) px (the camera's flow of a plane, :func:`plane_camera_flow`; given
    when a CRM has ``camera_base_depth``), the base is that flow plus the parametric interpolation of what
    the controls add to it (control − camera flow at the control pixels): camera-only conditions then
    start from the camera's flow instead of zero.
    sparse (B,T,2,H,W) px, mask (B,T,1,H,W) → (B,T,2,H,W) px.
    """
    if kind is None:
        return None
    if kind != "parametric":
        raise ValueError(f"unknown FGM base {kind!r}; use one of {BASES}")
    from flowctrl.models.refiner import parametric_interpolation

    on = mask > 0
    if camera_flow is None:
        return parametric_interpolation(sparse * on, mask)
    camera_flow = camera_flow.to(sparse.dtype)
    return camera_flow + parametric_interpolation((sparse - camera_flow) * on, mask)


def plane_camera_flow(K: torch.Tensor, w2c: torch.Tensor, depth: float, size: Tuple[int, int]) -> torch.Tensor:
    """Reprojection flow (B,T,2,H,W) px of a fronto-parallel plane at z-``depth`` (camera-translation units)
    under the trajectory ``w2c`` (B,T,4,4) with intrinsics ``K`` (B,3,3) px at ``size`` (H, W): the
    depth-free prior of a CRM's coarse base (no occlusion test: a plane does not occlude itself)."""
    from flowctrl.flow.camera import camera_flow

    depth_map = torch.full((K.shape[0], 1, *size), float(depth), dtype=torch.float32, device=K.device)
    return camera_flow(depth_map, K.float(), w2c.float(), occlusion=False)[0]


def camera_base_depth(crm) -> Optional[float]:
    """The CRM's ``camera_base_depth`` (None without a CRM or when unset)."""
    return None if crm is None else getattr(crm.config, "camera_base_depth", None)


def fgm_condition(sparse: torch.Tensor, mask: torch.Tensor, flow_scale: float, base: Optional[str] = None,
                  camera_flow: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The FGM's control condition and coarse base flow.

    Returns ``(condition, base)``: condition (B,T,3,H,W) = :func:`sparse_condition`, with ``base`` set
    (B,T,5,H,W) = that + tanh(base/flow_scale); base (B,T,2,H,W) px or None (``camera_flow``: see
    :func:`coarse_base`).
    """
    cond = sparse_condition(sparse, mask, flow_scale)
    dense = coarse_base(sparse, mask, base, camera_flow)
    if dense is not None:
        cond = append_base(cond, dense, flow_scale)
    return cond, dense


def append_base(condition: torch.Tensor, base: torch.Tensor, flow_scale: float) -> torch.Tensor:
    """(B,T,3,H,W) sparse condition + base flow (B,T,2,H,W) px → (B,T,5,H,W): the base as tanh(base/flow_scale)."""
    return torch.cat([condition, torch.tanh(base / flow_scale)], dim=2)


@torch.no_grad()
def zero_residual_latent(codec, num_frames: int, size) -> torch.Tensor:
    """``codec.encode`` of an all-zero flow (1, T', C, h, w): a residual FGM's latents are taken relative to it,
    so latent 0 decodes to (the codec's round trip of) a zero residual, i.e. to the base flow itself."""
    p = next(codec.parameters())
    return codec.encode(torch.zeros(1, num_frames, 2, *size, device=p.device, dtype=p.dtype))


def rotary_embedding(head_dim: int, num_frames: int, grid_h: int, grid_w: int, device=None):
    """3D RoPE (cos, sin) for a ``num_frames × grid_h × grid_w`` token grid (diffusers' helper)."""
    return get_3d_rotary_pos_embed(
        embed_dim=head_dim,
        crops_coords=((0, 0), (grid_h, grid_w)),
        grid_size=(grid_h, grid_w),
        temporal_size=num_frames,
        device=device,
    )


class _CogVideoXTrunk(ModelMixin):
    """Shared pieces of the FGM and the CRM: patch embedding, timestep embedding, CogVideoX blocks."""

    _supports_gradient_checkpointing = True

    def _build_trunk(self, in_channels: int, num_attention_heads: int, attention_head_dim: int,
                     time_embed_dim: int, num_layers: int, patch_size: int, sample_height: int,
                     sample_width: int, sample_frames: int, temporal_compression_ratio: int,
                     use_rotary_positional_embeddings: bool, attention_bias: bool, text_embed_dim: int,
                     norm_eps: float) -> int:
        inner = num_attention_heads * attention_head_dim
        self.patch_embed = CogVideoXPatchEmbed(
            patch_size=patch_size,
            in_channels=in_channels,
            embed_dim=inner,
            text_embed_dim=text_embed_dim,
            sample_width=sample_width,
            sample_height=sample_height,
            sample_frames=sample_frames,
            temporal_compression_ratio=temporal_compression_ratio,
            max_text_seq_length=0,
            use_positional_embeddings=not use_rotary_positional_embeddings,
            use_learned_positional_embeddings=False,  # sin-cos, recomputed for any latent size
        )
        self.time_proj = Timesteps(inner, True, 0)
        self.time_embedding = TimestepEmbedding(inner, time_embed_dim, "silu")
        self.transformer_blocks = nn.ModuleList(
            [
                CogVideoXBlock(
                    dim=inner,
                    num_attention_heads=num_attention_heads,
                    attention_head_dim=attention_head_dim,
                    time_embed_dim=time_embed_dim,
                    attention_bias=attention_bias,
                    norm_eps=norm_eps,
                )
                for _ in range(num_layers)
            ]
        )
        self.gradient_checkpointing = False
        return inner

    def _no_text(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 0, self.config.text_embed_dim)

    def _rope(self, latent_frames: int, h: int, w: int, device) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        if not self.config.use_rotary_positional_embeddings:
            return None
        p = self.config.patch_size
        return rotary_embedding(self.config.attention_head_dim, latent_frames, h // p, w // p, device)

    def _time(self, timestep: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=self.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        return self.time_embedding(self.time_proj(t).to(dtype))

    def _run_block(self, block: nn.Module, hs: torch.Tensor, ehs: torch.Tensor, emb: torch.Tensor,
                   rope, attention_kwargs) -> Tuple[torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, hs, ehs, emb, rope, attention_kwargs)
        return block(hidden_states=hs, encoder_hidden_states=ehs, temb=emb, image_rotary_emb=rope,
                     attention_kwargs=attention_kwargs)


@dataclass
class FGMOutput(BaseOutput):
    """sample: (B, T', C, h, w) model prediction (ε or v, per the scheduler's prediction type).
    With ``return_tokens``: the last block's patch tokens (B, T'·S, D) and control tokens (B, T'·N, D) (None
    without control tokens), for :func:`~flowctrl.models.control_tokens.control_affinity_loss`."""

    sample: torch.Tensor
    patch_tokens: Optional[torch.Tensor] = None
    control_tokens: Optional[torch.Tensor] = None


class FlowGenerationModel(_CogVideoXTrunk, ConfigMixin):
    """FGM: CogVideoX blocks over flow latents with a sparse-flow guider, strength embedding and reference attention.

    Args (config):
        in_channels: flow-latent channels (the codec's ``latent_channels``).
        image_latent_channels: channels of the reference-image latent (0 = no image input).
        reference_dim: token width of the CRM feeding reference attention (None = no reference attention).
        condition_channels: guider widths (4 → token stride 16 = VAE 8 × patch 2).
        flow_scale: pixels mapped to tanh(1) in the sparse condition.
        condition_image: the reference image (RGB in [-1, 1], every frame) joins the condition at full
            resolution (3 more ``condition_in_channels``): the guider then sees the image edges that the
            8×-downsampled image latent blurs, where motion boundaries are (a flowctrl extension).
        base: None (the latent is the flow's) or ``"parametric"``: the latent is the flow *minus* a coarse
            dense flow of the controls (:func:`coarse_base`), which also joins the condition (2 more
            channels, ``condition_in_channels`` 5); latents are taken relative to :func:`zero_residual_latent`
            and the sampled flow is ``base + decode(latent + zero_residual_latent)``; the output projection
            starts at zero (with ``prediction_type: sample`` a fresh model returns the base flow).
        control_tokens: 0 (off) or the most controls per clip the blocks also attend to as tokens of their own, in
            the text stream (:mod:`flowctrl.models.control_tokens`; a flowctrl extension): every patch token can
            look up every control by its look and position instead of only through the guider's map.
        other arguments: as ``diffusers.CogVideoXTransformer3DModel``.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        image_latent_channels: int = 4,
        out_channels: Optional[int] = None,
        num_attention_heads: int = 2,
        attention_head_dim: int = 16,
        time_embed_dim: int = 64,
        num_layers: int = 2,
        patch_size: int = 2,
        sample_height: int = 8,
        sample_width: int = 8,
        sample_frames: int = 17,
        temporal_compression_ratio: int = 4,
        use_rotary_positional_embeddings: bool = False,
        attention_bias: bool = True,
        text_embed_dim: int = 16,
        norm_eps: float = 1e-5,
        condition_in_channels: int = 3,
        condition_channels: Sequence[int] = (16, 32, 64, 128),
        reference_dim: Optional[int] = None,
        use_motion_strength: bool = True,
        flow_scale: float = 8.0,
        base: Optional[str] = None,
        condition_image: bool = False,
        control_tokens: int = 0,
    ) -> None:
        super().__init__()
        if base not in BASES:
            raise ValueError(f"unknown FGM base {base!r}; use one of {BASES}")
        want = 3 + 2 * (base is not None) + 3 * bool(condition_image)
        if condition_in_channels != want:
            raise ValueError(f"this FGM takes condition_in_channels={want} (sparse 2 + mask 1"
                             + (" + base 2" if base is not None else "") + (" + image 3" if condition_image else "") + ")")
        inner = self._build_trunk(in_channels + image_latent_channels, num_attention_heads, attention_head_dim,
                                  time_embed_dim, num_layers, patch_size, sample_height, sample_width,
                                  sample_frames, temporal_compression_ratio, use_rotary_positional_embeddings,
                                  attention_bias, text_embed_dim, norm_eps)
        if 2 ** len(condition_channels) != 8 * patch_size:
            raise ValueError(f"condition_channels needs log2(8·patch_size) = {(8 * patch_size).bit_length() - 1} entries")
        self.condition_encoder = ConditionEncoder(condition_in_channels, inner, condition_channels, temporal_compression_ratio)
        self.strength_embedding = MotionStrengthEmbedding(time_embed_dim) if use_motion_strength else None
        self.control_encoder = (ControlTokenEncoder(inner, control_tokens, temporal_compression_ratio)
                                if control_tokens else None)
        self.norm_final = nn.LayerNorm(inner, norm_eps)
        self.norm_out = AdaLayerNorm(embedding_dim=time_embed_dim, output_dim=2 * inner, norm_eps=norm_eps, chunk_dim=1)
        self.proj_out = nn.Linear(inner, patch_size * patch_size * (out_channels or in_channels))
        if base is not None:  # a fresh residual FGM predicts 0: with x0 ("sample") prediction that is the base flow
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)
        if reference_dim is not None:
            for block in self.transformer_blocks:
                block.attn1.set_processor(ReferenceAttnProcessor(inner, reference_dim))

    def fresh_parameter_names(self) -> set:
        """Parameters that keep their own initialisation when starting from CogVideoX (:meth:`from_cogvideox`):
        a residual FGM's zero output projection, so that it starts at its base flow."""
        return {"proj_out.weight", "proj_out.bias"} if self.config.base is not None else set()

    def reference_layer(self, i: int, num_reference_layers: int) -> int:
        """Index of the CRM layer whose hidden states feed FGM layer ``i`` (spread evenly)."""
        return min(num_reference_layers - 1, (i * num_reference_layers) // len(self.transformer_blocks))

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        image_latents: Optional[torch.Tensor] = None,
        condition: Optional[torch.Tensor] = None,
        strength: Optional[torch.Tensor] = None,
        reference_hidden_states: Optional[List[torch.Tensor]] = None,
        return_dict: bool = True,
        image: Optional[torch.Tensor] = None,
        return_tokens: bool = False,
    ) -> Union[FGMOutput, Tuple[torch.Tensor]]:
        """Predict noise/velocity.

        Args:
            hidden_states: noisy flow latent (B, T', C, h, w).
            timestep: (B,) or scalar diffusion timestep.
            image_latents: reference-image latent (B, 1, C_img, h, w) or already padded (B, T', C_img, h, w).
            condition: sparse condition (B, T, 3, H, W) from :func:`sparse_condition` (None = all zeros).
            strength: motion strength M_s (B,) px/frame (None = no strength embedding added).
            reference_hidden_states: CRM per-layer tokens, list of (B, N, D_ref).
            image: reference image (B, 3, H, W) in [0, 1]; needed when ``config.condition_image`` (and read by
                the control tokens when ``config.control_tokens``).
            return_tokens: also return the last block's patch and control tokens (:class:`FGMOutput`).
        Returns:
            FGMOutput.sample (B, T', C_out, h, w).
        """
        b, tl, _, h, w = hidden_states.shape
        cfg = self.config
        emb = self._time(timestep, b, hidden_states.dtype)
        if strength is not None and self.strength_embedding is not None:
            emb = emb + self.strength_embedding(strength.to(self.device), hidden_states.dtype)
        if cfg.image_latent_channels:
            if image_latents is None:
                image_latents = hidden_states.new_zeros(b, 1, cfg.image_latent_channels, h, w)
            if image_latents.shape[1] != tl:
                pad = image_latents.new_zeros(b, tl - image_latents.shape[1], *image_latents.shape[2:])
                image_latents = torch.cat([image_latents, pad], dim=1)
            hidden_states = torch.cat([hidden_states, image_latents.to(hidden_states.dtype)], dim=2)
        tokens = self.patch_embed(self._no_text(hidden_states), hidden_states)
        ehs, masking = tokens[:, :0], {}
        if self.control_encoder is not None and condition is not None:
            ehs, keep = self.control_encoder(condition.to(tokens.dtype), image)
            if not bool(keep.all()):
                masking = control_attention_mask(keep, tokens.shape[1], tokens.dtype)
        if cfg.condition_image:
            if image is None or condition is None:
                raise ValueError("this FGM reads the reference image with its condition (config.condition_image): pass image=")
            frames = (image.to(condition.dtype) * 2 - 1)[:, None].expand(-1, condition.shape[1], -1, -1, -1)
            condition = torch.cat([condition, frames], dim=2)
        if condition is not None:
            cond_tokens = self.condition_encoder(condition.to(tokens.dtype))
            if cond_tokens.shape != tokens.shape:
                raise ValueError(f"condition gives tokens {tuple(cond_tokens.shape)}, latent gives {tuple(tokens.shape)}: "
                                 "the condition must have the frames and pixel size the latent was encoded from")
            tokens = tokens + cond_tokens
        rope = self._rope(tl, h, w, tokens.device)
        for i, block in enumerate(self.transformer_blocks):
            kwargs = dict(masking) or None
            if reference_hidden_states is not None:
                if cfg.reference_dim is None:
                    raise ValueError("this FGM has no reference attention (config.reference_dim is None)")
                ref = reference_hidden_states[self.reference_layer(i, len(reference_hidden_states))]
                kwargs = {**masking, "reference_hidden_states": ref}
            tokens, ehs = self._run_block(block, tokens, ehs, emb, rope, kwargs)
        last_tokens = tokens
        tokens = self.norm_final(tokens)
        tokens = self.norm_out(tokens, temb=emb)
        tokens = self.proj_out(tokens)
        p = cfg.patch_size
        out = rearrange(tokens, "b (t h w) (c ph pw) -> b t c (h ph) (w pw)", t=tl, h=h // p, w=w // p, ph=p, pw=p)
        if not return_dict:
            return (out,)
        if return_tokens:
            return FGMOutput(sample=out, patch_tokens=last_tokens, control_tokens=ehs if ehs.shape[1] else None)
        return FGMOutput(sample=out)

    @classmethod
    def from_cogvideox(cls, path: Union[str, os.PathLike], subfolder: Optional[str] = "transformer",
                       **overrides) -> "FlowGenerationModel":
        """Start an FGM from a pretrained CogVideoX transformer (local folder or hub id already cached).

        Blocks, timestep embedding, final norms are copied; the patch embedding keeps the pretrained
        weights for the first input channels (the rest start at zero) and the output projection is
        copied when its shape matches (a residual FGM keeps its zero one: :meth:`fresh_parameter_names`).
        ``overrides`` set FGM config fields (e.g. ``in_channels``).
        """
        return _init_from_cogvideox(cls, path, subfolder, overrides)


def _init_from_cogvideox(cls, path, subfolder, overrides):
    from diffusers import CogVideoXTransformer3DModel

    try:
        base = CogVideoXTransformer3DModel.from_pretrained(path, subfolder=subfolder, local_files_only=True,
                                                           use_safetensors=True)
    except (OSError, ValueError, EnvironmentError) as err:
        raise MissingWeightsError.at(path, subfolder or "transformer", f"no CogVideoX transformer weights ({type(err).__name__})",
                                     "give a local CogVideoX folder (with transformer/) or a cached hub id") from None
    bc = base.config
    fields = dict(
        num_attention_heads=bc.num_attention_heads, attention_head_dim=bc.attention_head_dim,
        time_embed_dim=bc.time_embed_dim, num_layers=bc.num_layers, patch_size=bc.patch_size,
        sample_height=bc.sample_height, sample_width=bc.sample_width, sample_frames=bc.sample_frames,
        temporal_compression_ratio=bc.temporal_compression_ratio,
        use_rotary_positional_embeddings=bc.use_rotary_positional_embeddings,
        attention_bias=bc.attention_bias, text_embed_dim=bc.text_embed_dim, norm_eps=bc.norm_eps,
    )
    fields.update(overrides)
    accepted = set(inspect.signature(cls.__init__).parameters)
    model = cls(**{k: v for k, v in fields.items() if k in accepted})
    src = base.state_dict()
    dst = model.state_dict()
    fresh = model.fresh_parameter_names() if hasattr(model, "fresh_parameter_names") else set()
    load = {}
    for key, value in src.items():
        if key not in dst or key in fresh:
            continue
        if dst[key].shape == value.shape:
            load[key] = value
        elif key == "patch_embed.proj.weight":
            w = torch.zeros_like(dst[key])
            n = min(w.shape[1], value.shape[1])
            w[:, :n] = value[:, :n]
            load[key] = w
    model.load_state_dict(load, strict=False)
    del base
    return model
