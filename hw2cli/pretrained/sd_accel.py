"""``accelerate_unet(unet)``: route a diffusers UNet's attention and GroupNorm through ``hw2kernels``.

Two changes, both reversible and state-dict neutral: every ``Attention`` module gets
:class:`KernelAttnProcessor` (diffusers' scaled-dot-product processor with the attention call
replaced by :func:`hw2kernels.attention`), and every ``nn.GroupNorm`` becomes our
:class:`~hw2cli.models.layers.GroupNorm` holding the same parameters. With the ``torch`` backend
the UNet computes what it did before; with ``triton`` it runs the fused kernels.
"""

from __future__ import annotations

from typing import Any

import hw2kernels
import torch
import torch.nn.functional as F
from torch import nn

from hw2cli.models.layers import GroupNorm


class KernelAttnProcessor:
    """Self- and cross-attention through :func:`hw2kernels.attention` (masked calls use SDPA)."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, seq, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(t.shape[0], -1, attn.heads, head_dim).transpose(1, 2)

        q, k, v = heads(query), heads(key), heads(value)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, seq, batch)
            mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
        else:
            out = hw2kernels.attention(q, k, v, scale=attn.scale)
        out = out.transpose(1, 2).reshape(out.shape[0], -1, attn.heads * head_dim).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _swap_group_norms(module: nn.Module) -> int:
    swapped = 0
    for name, child in module.named_children():
        if type(child) is nn.GroupNorm:
            new = GroupNorm(child.num_groups, child.num_channels, child.eps, child.affine)
            new.weight, new.bias = child.weight, child.bias  # the same Parameters: state dict unchanged
            setattr(module, name, new)
            swapped += 1
        else:
            swapped += _swap_group_norms(child)
    return swapped


def accelerate_unet(unet: nn.Module) -> dict[str, int]:
    """Install the kernel attention processor and swap GroupNorms; returns what was changed."""
    unet.set_attn_processor(KernelAttnProcessor())  # type: ignore[operator]
    attention_modules = len(unet.attn_processors)  # type: ignore[attr-defined]
    return {"attention": attention_modules, "group_norm": _swap_group_norms(unet)}
