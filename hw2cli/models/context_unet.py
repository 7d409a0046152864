"""A network that loads checkpoints of the public TeaPearce/Conditional_Diffusion_MNIST model.

Many students start from that repository, so ``hw2`` samples their checkpoints as they are.
Module names and computations follow it exactly (state-dict compatible): BatchNorm+GELU
convolution blocks, two max-pool downsamplings to 7×7, a 7×7 average-pooled bottleneck, and
time and context embeddings that modulate the decoder as ``cemb·h + temb``. Its conventions:
time enters as the float ``t / n_T``; the label enters as a one-hot multiplied by
``−(1 − mask)``, so a kept label is a *negated* one-hot and a dropped one is all zeros. Inputs
must be 28×28.

``hw2cli.diffusion.wrappers.ContextUnetEps`` adapts it to the samplers' ``eps = f(x, t, cond)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, is_res: bool = False) -> None:
        super().__init__()
        self.same_channels = in_channels == out_channels
        self.is_res = is_res
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, 1, 1), nn.BatchNorm2d(out_channels), nn.GELU()
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, 1, 1), nn.BatchNorm2d(out_channels), nn.GELU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        x2 = self.conv2(x1)
        if not self.is_res:
            return x2
        # the original divides by 1.414, not √2: kept for bit-compatibility
        return ((x if self.same_channels else x1) + x2) / 1.414


class UnetDown(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(ResidualConvBlock(in_channels, out_channels), nn.MaxPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UnetUp(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, 2, 2),
            ResidualConvBlock(out_channels, out_channels),
            ResidualConvBlock(out_channels, out_channels),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat((x, skip), 1))


class EmbedFC(nn.Module):
    def __init__(self, input_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.model = nn.Sequential(nn.Linear(input_dim, emb_dim), nn.GELU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.reshape(-1, self.input_dim))


class ContextUnet(nn.Module):
    """``forward(x [B,C,28,28], c [B] int label, t [B] float t/n_T, context_mask [B] 1=drop) -> ε``."""

    def __init__(self, in_channels: int = 3, n_feat: int = 128, n_classes: int = 10) -> None:
        super().__init__()
        self.in_channels, self.n_feat, self.n_classes = in_channels, n_feat, n_classes
        self.init_conv = ResidualConvBlock(in_channels, n_feat, is_res=True)
        self.down1 = UnetDown(n_feat, n_feat)
        self.down2 = UnetDown(n_feat, 2 * n_feat)
        self.to_vec = nn.Sequential(nn.AvgPool2d(7), nn.GELU())
        self.timeembed1 = EmbedFC(1, 2 * n_feat)
        self.timeembed2 = EmbedFC(1, n_feat)
        self.contextembed1 = EmbedFC(n_classes, 2 * n_feat)
        self.contextembed2 = EmbedFC(n_classes, n_feat)
        self.up0 = nn.Sequential(
            nn.ConvTranspose2d(2 * n_feat, 2 * n_feat, 7, 7), nn.GroupNorm(8, 2 * n_feat), nn.ReLU()
        )
        self.up1 = UnetUp(4 * n_feat, n_feat)
        self.up2 = UnetUp(2 * n_feat, n_feat)
        self.out = nn.Sequential(
            nn.Conv2d(2 * n_feat, n_feat, 3, 1, 1),
            nn.GroupNorm(8, n_feat),
            nn.ReLU(),
            nn.Conv2d(n_feat, in_channels, 3, 1, 1),
        )

    @classmethod
    def from_state_dict_shapes(cls, state: dict[str, torch.Tensor]) -> ContextUnet:
        """Build the module a checkpoint was saved from: channels and classes come from its shapes."""
        n_feat, in_channels = state["init_conv.conv1.0.weight"].shape[:2]
        n_classes = state["contextembed1.model.0.weight"].shape[1]
        return cls(int(in_channels), int(n_feat), int(n_classes))

    def forward(self, x: torch.Tensor, c: torch.Tensor, t: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        x = self.init_conv(x)
        down1 = self.down1(x)
        down2 = self.down2(down1)
        hidden = self.to_vec(down2)
        keep = -(1 - context_mask.float())[:, None]  # −1 keeps the label (negated one-hot), 0 drops it
        onehot = F.one_hot(c, num_classes=self.n_classes).float() * keep
        cemb1 = self.contextembed1(onehot).reshape(-1, self.n_feat * 2, 1, 1)
        temb1 = self.timeembed1(t).reshape(-1, self.n_feat * 2, 1, 1)
        cemb2 = self.contextembed2(onehot).reshape(-1, self.n_feat, 1, 1)
        temb2 = self.timeembed2(t).reshape(-1, self.n_feat, 1, 1)
        up1 = self.up0(hidden)
        up2 = self.up1(cemb1 * up1 + temb1, down2)
        up3 = self.up2(cemb2 * up2 + temb2, down1)
        return self.out(torch.cat((up3, x), 1))
