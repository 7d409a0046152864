"""FaceUNet: the homework's face network, state-dict compatible with its ``UNet.pt``.

``FaceUNet()`` is the official size (width 128, 113,673,283 parameters); ``width`` scales every
channel count so tests can build a small one. The layout is the DDPM CelebA-HQ network (Ho et
al. 2020, App. B): six levels with channel multipliers 1, 1, 2, 2, 4, 4 (256² → 8²), two
residual blocks per level on the way down and three on the way up, single-head
self-attention at 16² and in the middle. Every module name below is fixed by the checkpoint's
keys (``down1`` … ``down18``, ``mid1``, ``mid2``, ``up1`` … ``up23``, ``out``).

The output of ``down1`` and of every later ``down*`` module (downsamplings included) is pushed
on a stack; each decoder residual block takes ``cat(x, stack.pop())``. The network predicts ε.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from hw2cli.models.layers import GroupNorm, SelfAttention

MULTIPLIERS = (1, 1, 2, 2, 4, 4)
ATTENTION_LEVEL = 4  # 16×16 for a 256×256 input


class SinusoidalTime(nn.Module):
    """``[sin(t·f), cos(t·f)]`` of the raw integer t, ``f_i = exp(−ln(10000)·2i/dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        self.register_buffer("inv_freq", inv_freq)  # persistent: `time.0.inv_freq` in the checkpoint

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.inv_freq[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ResBlock(nn.Module):
    """``h = conv1(silu(norm1(x)))``; ``h += time(temb)``; ``h = conv2(dropout(silu(norm2(h))))``; ``h + skip(x)``.

    The time projection is added inside the fused GroupNorm (``add=``), which is the same thing.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = GroupNorm(32, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time = nn.Sequential(nn.SiLU(), nn.Linear(temb_dim, out_ch))
        self.norm2 = GroupNorm(32, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1(x, act="silu"))
        h = self.norm2(h, add=self.time(temb), act="silu")
        h = self.conv2(self.dropout(h))
        return h + (self.skip(x) if self.skip is not None else x)


class Block(nn.Module):
    """``resblocks`` and, at 16² and in the middle, one-head ``attention`` with scale 1/√C."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, attention: bool, dropout: float) -> None:
        super().__init__()
        self.resblocks = ResBlock(in_ch, out_ch, temb_dim, dropout)
        if attention:
            self.attention = SelfAttention(out_ch, num_heads=1, groups=32)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = self.resblocks(x, temb)
        attention = getattr(self, "attention", None)
        return attention(x) if attention is not None else x


def _down(ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ch, ch, 3, stride=2, padding=1))


def _up(ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1))


class FaceUNet(nn.Module):
    """``forward(x [B,3,H,W], t [B] int) -> ε``; H and W must be multiples of 32."""

    def __init__(self, width: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        if width % 32:
            raise ValueError(f"width must be a multiple of 32 (GroupNorm has 32 groups), got {width}")
        self.width = width
        temb = 4 * width
        self.time = nn.Sequential(SinusoidalTime(width), nn.Linear(width, temb), nn.SiLU(), nn.Linear(temb, temb))

        # encoder: down1 is the input conv; two blocks per level, a downsampling between levels
        self.down1 = nn.Conv2d(3, width, 3, padding=1)
        stack = [width]
        ch = width
        index = 2
        for level, mult in enumerate(MULTIPLIERS):
            for _ in range(2):
                self.add_module(f"down{index}", Block(ch, width * mult, temb, level == ATTENTION_LEVEL, dropout))
                ch = width * mult
                stack.append(ch)
                index += 1
            if level + 1 < len(MULTIPLIERS):
                self.add_module(f"down{index}", _down(ch))
                stack.append(ch)
                index += 1

        self.mid1 = Block(ch, ch, temb, attention=True, dropout=dropout)
        self.mid2 = Block(ch, ch, temb, attention=False, dropout=dropout)

        # decoder: three blocks per level, each eating one skip, an upsampling between levels
        index = 1
        for level, mult in reversed(list(enumerate(MULTIPLIERS))):
            for _ in range(3):
                block = Block(ch + stack.pop(), width * mult, temb, level == ATTENTION_LEVEL, dropout)
                self.add_module(f"up{index}", block)
                ch = width * mult
                index += 1
            if level > 0:
                self.add_module(f"up{index}", _up(ch))
                index += 1
        assert not stack
        self.out = nn.Sequential(GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(ch, 3, 3, padding=1))
        self._down_names = [f"down{i}" for i in range(2, 19)]
        self._up_names = [f"up{i}" for i in range(1, 24)]

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        h_in, w_in = x.shape[-2:]
        if h_in % 32 or w_in % 32:
            raise ValueError(f"FaceUNet needs a height and width divisible by 32, got {h_in}×{w_in}")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.time(t)
        h = self.down1(x)
        stack = [h]
        for name in self._down_names:
            layer = getattr(self, name)
            h = layer(h, temb) if isinstance(layer, Block) else layer(h)
            stack.append(h)
        h = self.mid2(self.mid1(h, temb), temb)
        for name in self._up_names:
            layer = getattr(self, name)
            h = layer(torch.cat([h, stack.pop()], 1), temb) if isinstance(layer, Block) else layer(h)
        norm, _, conv = self.out
        return conv(norm(h, act="silu"))
