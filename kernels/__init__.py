"""hw2kernels: the operations our UNets spend their time in, behind one dispatch layer.

Installed under the import name ``hw2kernels`` (the source folder is ``kernels/``; a top-level
``kernels`` module would be mistaken by transformers and diffusers for an unrelated PyPI
package). Models call only :func:`group_norm` and :func:`attention`; ``backend`` picks the
implementation:

- ``"torch"``: the PyTorch reference (:mod:`hw2kernels.reference`), everywhere;
- ``"triton"``: the fused Triton kernels (on CUDA, or on CPU under ``TRITON_INTERPRET=1``),
  with the reference for inputs they do not serve (:func:`last_fallback_reason` says why);
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
# Per operation: why its last call that resolved to Triton ran the reference instead (None when
# the kernel served it, or no call resolved to Triton yet). See last_fallback_reason().
_last_fallback: dict[str, str | None] = {"group_norm": None, "attention": None}


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
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not interpreted:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU, slowly)"
    try:
        from hw2kernels import triton_ops
    except ImportError as exc:
        return False, f"the Triton kernels do not import: {exc}"
    if interpreted and not triton_ops.INTERPRETED:
        return False, "TRITON_INTERPRET=1 was set after hw2kernels.triton_ops was imported (its kernels are compiled)"
    return True, "TRITON_INTERPRET=1 (interpreter on CPU)" if interpreted else "CUDA"


def last_fallback_reason(op: str = "attention") -> str | None:
    """Why the last ``op`` call (``"attention"`` or ``"group_norm"``) that resolved to the Triton
    backend ran the PyTorch reference instead; ``None`` if the kernel served it (or no call
    resolved to Triton yet). Benchmarks print it next to their Triton timings."""
    if op not in _last_fallback:
        raise ValueError(f"op must be one of {', '.join(_last_fallback)}, got {op!r}")
    return _last_fallback[op]


def resolve_backend(backend: str | None, device_type: str = "cuda") -> str:
    """The backend a call will use: ``"triton"`` or ``"torch"``."""
    choice = backend or _default_backend
    if choice not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {', '.join(BACKENDS)}, got {choice!r}")
    if choice == "torch":
        return "torch"
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if choice == "auto" and (device_type != "cuda" or interpreted):
        return "torch"  # without asking triton_status(), which imports Triton
    ok, reason = triton_status()
    if choice == "triton":
        if not ok:
            raise KernelUnavailable(f"the Triton kernels cannot run here: {reason}")
        return "triton"
    return "triton" if ok else "torch"


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

    Where the backend resolves to Triton (``"triton"`` forced, or ``"auto"`` on CUDA) but the
    kernel cannot serve the inputs (fp64, an input that requires grad: the kernel is
    forward-only), the reference runs instead and :func:`last_fallback_reason` says why;
    forcing ``"triton"`` does not turn that into an error.
    """
    if act not in ("none", "silu"):
        raise ValueError(f"act must be 'none' or 'silu', got {act!r}")
    if resolve_backend(backend, x.device.type) == "triton":
        from hw2kernels import triton_ops

        ok, reason = triton_ops.group_norm_supported(x, num_groups, weight, bias, add=add, scale=scale, shift=shift)
        _last_fallback["group_norm"] = None if ok else reason
        if ok:
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

    Where the backend resolves to Triton (``"triton"`` forced, or ``"auto"`` on CUDA) but
    :func:`hw2kernels.triton_ops.attention_supported` refuses the inputs (a head dim above 512,
    mixed or fp64 dtypes, shapes that need broadcasting, an input that requires grad: the kernel
    is forward-only), PyTorch's ``scaled_dot_product_attention`` runs instead and
    :func:`last_fallback_reason` says why. Forcing ``"triton"`` falls back the same way rather
    than raising, so a model with one unusual attention layer still runs; a benchmark that
    forces Triton should report ``last_fallback_reason()``.
    """
    if resolve_backend(backend, q.device.type) == "triton":
        from hw2kernels import triton_ops

        ok, reason = triton_ops.attention_supported(q, k, v)
        _last_fallback["attention"] = None if ok else reason
        if ok:
            return triton_ops.attention(q, k, v, scale=scale)
    return reference.attention(q, k, v, scale=scale)


__all__ = [
    "BACKENDS",
    "KernelUnavailable",
    "attention",
    "get_default_backend",
    "group_norm",
    "last_fallback_reason",
    "resolve_backend",
    "set_default_backend",
    "triton_status",
]
