"""Tiny random diffusers image-to-video pipelines (CogVideoX-I2V, Wan 2.1 I2V, Wan 2.2 A14B, Wan 2.2 TI2V-5B)
for the guided backend's tests and benchmark, built offline and saved with diffusers' own ``save_pretrained``.

Every component is random and a few kilobytes; the tokenizer is a word-level ``tokenizers`` vocabulary
wrapped in ``PreTrainedTokenizerFast`` (no sentencepiece model, nothing downloaded).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch

VOCAB = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "cat": 4, "dog": 5, "walks": 6, "blurry": 7, "the": 8}
SIZE = {"cogvideox": (16, 16), "wan21": (16, 16), "wan22": (16, 16), "ti2v": (32, 32)}  # (H, W) per family
FRAMES = 9


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_cogvideox(seed: int = 0, scheduler: str = "ddim", num_layers: int = 1, num_attention_heads: int = 2,
                   attention_head_dim: int = 16):
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXDPMScheduler,
                           CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel)
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 3,
                                 up_block_types=("CogVideoXUpBlock3D",) * 3, block_out_channels=(8, 8, 8),
                                 latent_channels=4, layers_per_block=1, norm_num_groups=4)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim, in_channels=8, out_channels=4,
        time_embed_dim=32, text_embed_dim=16, num_layers=num_layers, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        max_text_seq_length=8, temporal_compression_ratio=4)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(VOCAB), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                           num_heads=2))
    sched_cls = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}[scheduler]
    # the real CogVideoX-5b-I2V scheduler config: v-prediction, zero terminal SNR, trailing spacing
    sched = sched_cls(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
                      beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, snr_shift_scale=1.0)
    pipe = CogVideoXImageToVideoPipeline(tokenizer=tiny_tokenizer(), text_encoder=text_encoder.eval(), vae=vae.eval(),
                                         transformer=transformer.eval(), scheduler=sched)
    return pipe


def _umt5(d_model: int = 32):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=len(VOCAB), d_model=d_model, d_kv=8, d_ff=32, num_layers=1,
                                       num_heads=2, relative_attention_num_buckets=8)).eval()


def _wan_transformer(in_channels: int, out_channels: int, image_dim=None):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                 in_channels=in_channels, out_channels=out_channels, text_dim=32, freq_dim=32,
                                 ffn_dim=32, num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                 rope_max_seq_len=32, image_dim=image_dim,
                                 added_kv_proj_dim=24 if image_dim else None).eval()


def tiny_wan(kind: str = "wan21", seed: int = 0):
    """``kind``: ``"wan21"`` (CLIP image encoder), ``"wan22"`` (A14B: two experts, boundary_ratio 0.875) or
    ``"ti2v"`` (TI2V-5B: 48-channel residual VAE, expand_timesteps)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    kw: Dict[str, Any] = {}
    if kind == "ti2v":
        vae = AutoencoderKLWan(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
                               latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1],
                               num_res_blocks=1, scale_factor_spatial=16, scale_factor_temporal=4,
                               temperal_downsample=[False, True, True])
        kw.update(transformer=_wan_transformer(48, 48), expand_timesteps=True)
    else:
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        if kind == "wan21":
            enc = CLIPVisionModel(CLIPVisionConfig(
                hidden_size=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                intermediate_size=16, patch_size=4)).eval()
            kw.update(transformer=_wan_transformer(36, 16, image_dim=4), image_encoder=enc,
                      image_processor=CLIPImageProcessor(crop_size=32, size=32))
        elif kind == "wan22":
            kw.update(transformer=_wan_transformer(36, 16), transformer_2=_wan_transformer(36, 16), boundary_ratio=0.875)
        else:
            raise ValueError(kind)
    return WanImageToVideoPipeline(tokenizer=tiny_tokenizer(), text_encoder=_umt5(), vae=vae.eval(), scheduler=sched, **kw)


def tiny_pipeline(family: str, seed: int = 0):
    return tiny_cogvideox(seed) if family == "cogvideox" else tiny_wan(family, seed)


def save_tiny(family: str, path: Path, seed: int = 0) -> Path:
    """Build the tiny pipeline of ``family`` and ``save_pretrained`` it (safetensors) to ``path``."""
    pipe = tiny_pipeline(family, seed)
    pipe.save_pretrained(str(path), safe_serialization=True)
    return Path(path)
