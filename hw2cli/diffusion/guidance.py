"""Classifier-free guidance (Ho & Salimans 2022, eq. 6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

EpsModel = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def classifier_free_guidance(model: EpsModel, guidance_scale: float, null_cond: Any) -> EpsModel:
    """Wrap ``model`` so it returns ``(1 + w)·ε(x, c) − w·ε(x, ∅)``, with ``w = guidance_scale``.

    The conditional and unconditional passes are one batched forward of size ``2B``. ``cond`` and
    ``null_cond`` must be tensors whose first dimension is the batch (``null_cond`` may have
    batch size 1; it is expanded). With ``w == 0`` the model is called once, conditionally.
    """
    if guidance_scale == 0:
        return model

    def guided(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        null = null_cond.expand(b, *null_cond.shape[1:]) if null_cond.shape[0] != b else null_cond
        eps = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null.to(cond.device)]))
        eps_cond, eps_uncond = eps.chunk(2)
        return (1 + guidance_scale) * eps_cond - guidance_scale * eps_uncond

    return guided


def autocast_eps(model: EpsModel, device: torch.device, dtype: torch.dtype) -> EpsModel:
    """Run ``model`` under autocast in ``dtype`` (bf16/fp16) and return fp32 ε; fp32 returns it unchanged."""
    if dtype == torch.float32:
        return model

    def run(x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            return model(x, t, cond).float()

    return run
