"""hw2kernels: the operations our UNets spend their time in, behind one dispatch layer.

Installed under the import name ``hw2kernels`` (the source folder is ``kernels/``; a top-level
``kernels`` module would be mistaken by transformers and diffusers for an unrelated PyPI
package). Models call only :func:`group_norm` and :func:`attention`; ``backend`` picks the
implementation:

- ``"torch"``: the PyTorch reference (:mod:`hw2kernels.reference`), everywhere;
- ``"triton"``: the fused Triton kernels (on CUDA, or on CPU under ``TRITON_INTERPRET=1``);
- ``None``: the process default set by :func:`set_default_backend` (``auto`` unless the CLI's
  ``kernels`` setting says otherwise): Triton on CUDA when it works, else the reference.

This package knows nothing of the CLI above it.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

from hw2kernels import reference

if TYPE_CHECKING:
    import torch

BACKENDS = ("auto", "triton", "torch")
_default_backend = "auto"


class KernelUnavailable(RuntimeError):
    """The Triton backend was forced where it cannot run."""


def set_default_backend(name: str) -> None:
    """``auto``, ``triton`` or ``torch`` for calls that pass ``backend=None``."""
    global _default_backend
    if name not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    _default_backend = name


def get_default_backend() -> str:
    return _default_backend


@functools.cache
def triton_status() -> tuple[bool, str]:
    """Whether the Triton kernels can run in this process, and why not."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # not installed (macOS, Windows) or broken
        return False, f"triton is not importable: {exc}"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "TRITON_INTERPRET=1 (interpreter on CPU)"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU, slowly)"
    try:
        from hw2kernels import triton_ops  # noqa: F401
    except ImportError:
        return False, "the Triton kernels are not part of this build yet"
    return True, "CUDA"


def resolve_backend(backend: str | None, device_type: str = "cuda") -> str:
    """The backend a call will use: ``"triton"`` or ``"torch"``."""
    choice = backend or _default_backend
    if choice not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {', '.join(BACKENDS)}, got {choice!r}")
    if choice == "torch":
        return "torch"
    ok, reason = triton_status()
    if choice == "triton":
        if not ok:
            raise KernelUnavailable(f"the Triton kernels cannot run here: {reason}")
        return "triton"
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return "triton" if ok and (device_type == "cuda" and not interpreted) else "torch"


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
    backend: str | None = None,
) -> torch.Tensor:
    """``act(GroupNorm(x + add) * (1 + scale) + shift)`` for ``x`` of shape ``[N, C, *spatial]``.

    ``add``, ``scale`` and ``shift`` are ``[N, C]`` (per sample and channel, e.g. a time
    embedding) or ``None``; ``act`` is ``"none"`` or ``"silu"``. Statistics are in fp32.
    """
    if act not in ("none", "silu"):
        raise ValueError(f"act must be 'none' or 'silu', got {act!r}")
    if resolve_backend(backend, x.device.type) == "triton":
        from hw2kernels import triton_ops

        return triton_ops.group_norm(x, num_groups, weight, bias, eps, add=add, scale=scale, shift=shift, act=act)
    return reference.group_norm(x, num_groups, weight, bias, eps, add=add, scale=scale, shift=shift, act=act)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """``softmax(q kᵀ · scale) v`` with q ``[B, H, Nq, D]``, k and v ``[B, H, Nk, D]``.

    ``scale`` defaults to ``1/√D``. Returns ``[B, H, Nq, D]``.
    """
    if resolve_backend(backend, q.device.type) == "triton":
        from hw2kernels import triton_ops

        return triton_ops.attention(q, k, v, scale=scale)
    return reference.attention(q, k, v, scale=scale)


__all__ = [
    "BACKENDS",
    "KernelUnavailable",
    "attention",
    "get_default_backend",
    "group_norm",
    "resolve_backend",
    "set_default_backend",
    "triton_status",
]
