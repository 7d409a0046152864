"""PyTorch reference implementations: the ground truth the Triton kernels are tested against,
and the path every model takes where Triton cannot run (CPU, macOS)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    add: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    act: str = "none",
) -> torch.Tensor:
    """See :func:`hw2kernels.group_norm`."""
    n, c = x.shape[:2]
    check_groups(c, num_groups)
    extra = (1,) * (x.ndim - 2)
    # the sum and the statistics in fp32 at least, as the fused kernel does (fp64 stays fp64): a
    # 16-bit ``x + add`` would round before normalising (at a group mean of 30 in fp16 that error
    # is 16 times the fused kernel's)
    acc = torch.promote_types(x.dtype, torch.float32)
    h = x.to(acc) if add is None else x.to(acc) + add.reshape(n, c, *extra).to(acc)
    y = F.group_norm(
        h,
        num_groups,
        None if weight is None else weight.to(acc),
        None if bias is None else bias.to(acc),
        eps,
    )
    if scale is not None:
        y = y * (1 + scale.reshape(n, c, *extra).to(acc))
    if shift is not None:
        y = y + shift.reshape(n, c, *extra).to(acc)
    if act == "silu":
        y = F.silu(y)
    return y.to(x.dtype)


def check_groups(channels: int, num_groups: int) -> None:
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"{channels} channels cannot be split into {num_groups} groups")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """See :func:`hw2kernels.attention` (PyTorch's fused SDPA picks its fastest backend)."""
    return F.scaled_dot_product_attention(q, k, v, scale=scale)
