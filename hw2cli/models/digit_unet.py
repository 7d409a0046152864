"""DigitUNet: a small modern UNet for 28×28 RGB digits, conditioned on digit × dataset.

Read top to bottom: config, residual block, the network. ε-prediction; time enters through a
sinusoidal embedding, the condition through a learned embedding of ``num_conditions + 1``
entries (the last is the null condition used for classifier-free guidance); both modulate
every residual block by scale and shift of its second GroupNorm (the fused
``GN · (1 + scale) + shift → SiLU`` of ``hw2kernels``). Self-attention runs at the 7×7 level
and in the middle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from hw2cli.models.layers import Downsample, GroupNorm, SelfAttention, Upsample, sinusoidal_embedding


@dataclass
class DigitUNetConfig:
    in_channels: int = 3
    # sized for CPU: ~1.0 M parameters, ~0.2 GFLOP per 28×28 image
    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (2,)  # level 2 is 7×7 for 28×28 inputs
    head_dim: int = 32
    groups: int = 8
    num_conditions: int = 20  # 10 digits × 2 data sets; index 20 is "no condition"
    dropout: float = 0.1
    # a guidance-distilled student (Meng et al. 2023) also takes the guidance weight w
    guidance_embedding: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DigitUNetConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("channel_mult", "attention_levels"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ResBlock(nn.Module):
    """``h = conv1(silu(norm1(x)))``; ``h = conv2(dropout(silu(norm2(h)·(1+scale)+shift)))``; ``h + skip(x)``."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (improved-diffusion)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1(x, act="silu"))
        scale, shift = self.emb(emb).chunk(2, dim=1)
        h = self.norm2(h, scale=scale, shift=shift, act="silu")
        h = self.conv2(self.dropout(h))
        return h + self.skip(x)


class Block(nn.Module):
    """A residual block, optionally followed by self-attention."""

    def __init__(self, in_ch: int, out_ch: int, cfg: DigitUNetConfig, emb_dim: int, attention: bool) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, cfg.groups, cfg.dropout)
        heads = max(1, out_ch // cfg.head_dim)
        self.attn = SelfAttention(out_ch, heads, cfg.groups) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


GUIDANCE_SCALE = 100.0  # w ∈ [0, 10] spread over sinusoid phases as timesteps are


class DigitUNet(nn.Module):
    """``forward(x [B,3,28,28] in [-1,1], t [B] int, cond [B] int in 0..num_conditions) -> ε``."""

    def __init__(self, config: DigitUNetConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or DigitUNetConfig()
        c0 = cfg.base_channels
        emb_dim = 4 * c0
        self.time_mlp = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_emb = nn.Embedding(cfg.num_conditions + 1, emb_dim)
        self.guidance_mlp: nn.Module | None = None
        if cfg.guidance_embedding:  # zero last layer: a fresh student is its teacher's conditional ε
            self.guidance_mlp = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            nn.init.zeros_(self.guidance_mlp[2].weight)
            nn.init.zeros_(self.guidance_mlp[2].bias)
        self.conv_in = nn.Conv2d(cfg.in_channels, c0, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [c0]
        ch = c0
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(Block(ch, c0 * mult, cfg, emb_dim, level in cfg.attention_levels))
                ch = c0 * mult
                skip_channels.append(ch)
            if level + 1 < len(cfg.channel_mult):
                self.down.append(Downsample(ch))
                skip_channels.append(ch)

        self.mid1 = Block(ch, ch, cfg, emb_dim, attention=True)
        self.mid2 = Block(ch, ch, cfg, emb_dim, attention=False)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(Block(ch + skip_channels.pop(), c0 * mult, cfg, emb_dim, level in cfg.attention_levels))
                ch = c0 * mult
            if level > 0:
                self.up.append(Upsample(ch))

        self.norm_out = GroupNorm(cfg.groups, ch)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def null_condition(self) -> int:
        return self.config.num_conditions

    @property
    def guidance_distilled(self) -> bool:
        return self.guidance_mlp is not None

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``guidance`` ([B] float, the weight w) only for a guidance-distilled student, which then
        returns the guided ε ``(1 + w)·ε(c) − w·ε(∅)`` of its teacher in one evaluation."""
        emb = self.time_mlp(sinusoidal_embedding(t, self.config.base_channels).to(x.dtype)) + self.cond_emb(cond)
        if self.guidance_mlp is not None:
            if guidance is None:
                raise ValueError("this guidance-distilled DigitUNet needs the guidance weight")
            w = sinusoidal_embedding(guidance * GUIDANCE_SCALE, self.config.base_channels).to(x.dtype)
            emb = emb + self.guidance_mlp(w)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, Downsample) else layer(h, emb)
            skips.append(h)
        h = self.mid2(self.mid1(h, emb), emb)
        for layer in self.up:
            h = layer(h) if isinstance(layer, Upsample) else layer(torch.cat([h, skips.pop()], 1), emb)
        return self.conv_out(self.norm_out(h, act="silu"))
