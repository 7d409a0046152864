"""What adapts a network to the samplers: one place, in the manner of k-diffusion's ``external.py``.

Every sampler takes an :class:`EpsModel`, a callable ``eps = model(x, t, cond)``. The wrappers
here turn a network into one, or one into another:

- :class:`ContextUnetEps`: the conventions of TeaPearce's ``ContextUnet`` (time as ``t / n_T``,
  a context mask for the null label);
- :func:`classifier_free_guidance`: ``(1 + w)·ε(x, c) − w·ε(x, ∅)`` in one batched call
  (Ho & Salimans 2022, eq. 6);
- :func:`autocast_eps`: bf16/fp16 autocast inside, fp32 ε out;
- :class:`GraphedEps`: each call replayed from one CUDA graph.

:func:`build_network` is the factory for the networks a checkpoint's config describes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn


class EpsModel(Protocol):
    """``eps = model(x, t, cond)``: ``x`` ``[B, C, H, W]``, ``t`` integer ``[B]``, ``cond`` what the
    network needs (a ``[B]`` condition index, a text embedding, or ``None``); ε has ``x``'s shape."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None, /) -> torch.Tensor: ...


# --------------------------------------------------------------------------- networks


class ContextUnetEps(nn.Module):
    """``eps = f(x, t, cond)`` over a TeaPearce ``ContextUnet``: integer ``t`` becomes ``t / n_T``;
    ``cond == n_classes`` is the null condition (context mask 1). Its schedule starts at t = 1."""

    def __init__(self, net: nn.Module, n_T: int) -> None:
        super().__init__()
        self.net = net
        self.n_T = n_T

    @property
    def null_condition(self) -> int:
        return self.net.n_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        mask = (cond == self.net.n_classes).to(x.dtype)
        label = torch.where(cond == self.net.n_classes, torch.zeros_like(cond), cond)
        return self.net(x, label, t.to(x.dtype) / self.n_T, mask)


def build_network(config: Any) -> nn.Module:
    """The ``eps = f(x, t, cond)`` module a checkpoint config describes (anything with
    ``architecture``, ``model`` and ``schedule``: :class:`hw2cli.io.checkpoints.DiffusionConfig`)."""
    from hw2cli.models import ContextUnet, DigitUNet, DigitUNetConfig

    if config.architecture == "DigitUNet":
        return DigitUNet(DigitUNetConfig.from_dict(config.model))
    m = config.model
    net = ContextUnet(m.get("in_channels", 3), m.get("n_feat", 128), m.get("n_classes", 20))
    return ContextUnetEps(net, int(config.schedule.get("n_T", 400)))


# --------------------------------------------------------------------------- callables


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


def guided_eps(
    net: Any,
    guidance_scale: float,
    null_cond: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
    *,
    channels_last: bool = False,
) -> EpsModel:
    """The ε a sampler calls at guidance weight ``w``, in ``dtype``: one evaluation of a
    guidance-distilled student (it takes ``w``), else :func:`classifier_free_guidance`'s batched
    pair of evaluations. ``channels_last`` hands the network NHWC inputs (give it NHWC weights too)."""
    distilled = bool(getattr(net, "guidance_distilled", False))

    def call(x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if distilled:
            eps = net(x, t, cond, torch.full((x.shape[0],), float(guidance_scale), device=x.device))
        else:
            eps = net(x, t, cond)
        return eps.contiguous() if channels_last else eps

    inner = autocast_eps(call, device, dtype)
    return inner if distilled else classifier_free_guidance(inner, guidance_scale, null_cond)


def autocast_eps(model: EpsModel, device: torch.device, dtype: torch.dtype) -> EpsModel:
    """Run ``model`` under autocast in ``dtype`` (bf16/fp16) and return fp32 ε; fp32 returns it unchanged."""
    if dtype == torch.float32:
        return model

    def run(x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            return model(x, t, cond).float()

    return run


class GraphedEps:
    """``eps = model(x, t, cond)`` replayed from a CUDA graph captured at the first call's shapes.

    A 50-step loop then launches one graph per step instead of hundreds of kernels, which is
    where small-batch sampling loses its time on a GPU. Each call copies its inputs into the
    graph's static buffers and replays; a call with other shapes (a last, smaller batch) runs the
    model eagerly. The output is cloned, because multistep samplers keep earlier ε's while the
    graph overwrites its output buffer.
    """

    def __init__(self, model: Callable[..., torch.Tensor], *, warmup: int = 3) -> None:
        if not torch.cuda.is_available():
            from hw2cli.errors import RunError

            raise RunError("a CUDA graph needs a CUDA device; there is none here.")
        self.model = model
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple[Any, ...] | None = None

    def _capture(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> None:
        self.static = [x.clone(), t.clone(), cond.clone() if isinstance(cond, torch.Tensor) else cond]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):  # cuDNN/cuBLAS (and hw2kernels' first-call check) outside the capture
                self.model(*self.static)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self.model(*self.static)
        self.key = self._key(x, t, cond)

    @staticmethod
    def _key(x: torch.Tensor, t: torch.Tensor, cond: Any) -> tuple[Any, ...]:
        c = (tuple(cond.shape), cond.dtype) if isinstance(cond, torch.Tensor) else cond
        return tuple(x.shape), x.dtype, tuple(t.shape), c

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if self.graph is None:
            self._capture(x, t, cond)
        elif self._key(x, t, cond) != self.key:
            return self.model(x, t, cond)
        self.static[0].copy_(x)
        self.static[1].copy_(t)
        if isinstance(cond, torch.Tensor):
            self.static[2].copy_(cond)
        assert self.graph is not None
        self.graph.replay()
        return self.out.clone()
