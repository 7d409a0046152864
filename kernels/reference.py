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
    if c % num_groups:
        raise ValueError(f"{c} channels cannot be split into {num_groups} groups")
    extra = (1,) * (x.ndim - 2)
    if add is not None:
        x = x + add.reshape(n, c, *extra).to(x.dtype)
    # statistics in fp32 at least, as the fused kernel does (fp64 stays fp64)
    acc = torch.promote_types(x.dtype, torch.float32)
    y = F.group_norm(
        x.to(acc),
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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """See :func:`hw2kernels.attention` (PyTorch's fused SDPA picks its fastest backend)."""
    return F.scaled_dot_product_attention(q, k, v, scale=scale)
