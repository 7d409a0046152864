"""Building blocks shared by the UNets. Their GroupNorm and attention go through ``hw2kernels``,
so the fused Triton kernels serve every model without the models knowing about them."""

from __future__ import annotations

import math

import hw2kernels
import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state-dict keys) with the fused epilogue of
    :func:`hw2kernels.group_norm`: ``act(GN(x + add) · (1 + scale) + shift)``."""

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        *,
        add: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
        act: str = "none",
    ) -> torch.Tensor:
        return hw2kernels.group_norm(
            x, self.num_groups, self.weight, self.bias, self.eps, add=add, scale=scale, shift=shift, act=act
        )


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[sin(t·f_i), cos(t·f_i)]`` with ``f_i = exp(−ln(max_period)·2i/dim)``, i < dim/2.

    ``t`` is ``[B]`` (integer or float timesteps); returns ``[B, dim]`` float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) * 2 / dim)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions of a feature map, with a residual.

    ``n = norm(x)``; ``q, k, v = split(qkv(n))`` (1×1 conv to 3C channels, in that order);
    ``x + out(attention(q, k, v))``. ``scale`` defaults to ``1/√head_dim``.
    """

    def __init__(self, channels: int, num_heads: int = 1, groups: int = 32, scale: float | None = None) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.scale = scale
        self.norm = GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # [B, heads, HW, d]
        y = hw2kernels.attention(q, k, v, scale=self.scale)
        y = y.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.out(y)


class Downsample(nn.Module):
    """3×3 convolution with stride 2 (keeps channels)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
