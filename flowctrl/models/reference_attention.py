"""Reference attention: the ReferenceNet mechanism of Animate Anyone as a diffusers attention processor.

In each FGM self-attention layer the CRM's hidden states of the matching layer are appended to the keys
and values; the FGM's own queries attend over ``[own tokens; reference tokens]`` and only the outputs of
the own tokens are kept (seed 000 §Method, Fig. 3; seeds 001–003 "spatial-attention"). To let a fresh
CRM join a trained FGM without changing it, the reference result enters through a zero-initialised
projection added to the unmodified self-attention result::

    heads     = SDPA(q, k, v)                                   # the plain CogVideoX attention
    ref_heads = SDPA(q, [k; W_k r], [v; W_v r])                 # reference attention (shared W_k, W_v)
    out       = to_out(heads + P_zero(ref_heads))               # P_zero starts at 0 → bit-identical

Without reference states (``reference_hidden_states=None``) the processor computes exactly what
diffusers' ``CogVideoXAttnProcessor2_0`` computes.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn


class ReferenceAttnProcessor(nn.Module):
    """CogVideoX joint attention + reference-key/value attention with a zero-initialised output.

    Args:
        inner_dim: attention width of the layer it is installed in (heads × head_dim).
        reference_dim: token width of the reference model (the CRM); projected to ``inner_dim``.
    """

    def __init__(self, inner_dim: int, reference_dim: int) -> None:
        super().__init__()
        self.ref_in = nn.Linear(reference_dim, inner_dim)
        self.ref_norm = nn.LayerNorm(inner_dim, eps=1e-6)
        self.ref_out = nn.Linear(inner_dim, inner_dim)
        nn.init.zeros_(self.ref_out.weight)
        nn.init.zeros_(self.ref_out.bias)

    def _heads(self, attn: Attention, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

    # nn.Module.__call__ hides the keyword names from diffusers' Attention.forward, which filters
    # keyword arguments by the processor's signature; define __call__ like diffusers' IP-adapter does.
    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        image_rotary_emb: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        reference_hidden_states: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """hidden_states (B, N, D), encoder_hidden_states (B, L, D), reference (B, N_r, D_ref) → two outputs."""
        text_len = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        b, n, _ = x.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, n, b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])

        q = self._heads(attn, attn.to_q(x))
        k = self._heads(attn, attn.to_k(x))
        v = self._heads(attn, attn.to_v(x))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:
            q[:, :, text_len:] = apply_rotary_emb(q[:, :, text_len:], image_rotary_emb)
            if not attn.is_cross_attention:
                k[:, :, text_len:] = apply_rotary_emb(k[:, :, text_len:], image_rotary_emb)

        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)

        if reference_hidden_states is not None:
            r = self.ref_norm(self.ref_in(reference_hidden_states.to(x.dtype)))
            rk = self._heads(attn, attn.to_k(r))
            rv = self._heads(attn, attn.to_v(r))
            if attn.norm_k is not None:
                rk = attn.norm_k(rk)
            if image_rotary_emb is not None and rk.shape[2] == k.shape[2] - text_len:
                rk = apply_rotary_emb(rk, image_rotary_emb)  # same token grid as the FGM
            ref_mask = None
            if attention_mask is not None:
                ref_mask = F.pad(attention_mask, (0, rk.shape[2]), value=0.0 if attention_mask.is_floating_point() else True)
            ref_heads = F.scaled_dot_product_attention(
                q, torch.cat([k, rk], dim=2), torch.cat([v, rv], dim=2), attn_mask=ref_mask, dropout_p=0.0
            )
            ref_flat = ref_heads.transpose(1, 2).reshape(b, -1, attn.heads * q.shape[-1])
            heads = heads + self.ref_out(ref_flat).view(b, -1, attn.heads, q.shape[-1]).transpose(1, 2)

        out = heads.transpose(1, 2).reshape(b, -1, attn.heads * q.shape[-1])
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        return out[:, text_len:], out[:, :text_len]
