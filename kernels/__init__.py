"""hw2kernels: the operations our UNets spend their time in, behind one dispatch layer.

Installed under the import name ``hw2kernels`` (the source folder is ``kernels/``; a top-level
``kernels`` module would be mistaken by transformers and diffusers for an unrelated PyPI
package). Models call only :func:`group_norm` and :func:`attention`; ``backend`` picks the
implementation:

- ``"torch"``: the PyTorch reference (:mod:`hw2kernels.reference`), everywhere;
- ``"triton"``: the fused Triton kernels (on CUDA, or on CPU under ``TRITON_INTERPRET=1``),
  with the reference for inputs they do not serve (:func:`last_fallback_reason` says why);
- ``None``: the process default set by :func:`set_default_backend` (``auto`` unless the CLI's
  ``kernels`` setting says otherwise).

``auto`` is safe by construction. On CUDA, the first call of an op for a (dtype, shape class)
runs the Triton kernel *and* the PyTorch reference and compares them with a tolerance for that
dtype; the kernel serves that class from then on only if it compiled and agreed, otherwise one
warning says which op fell back and why, and the reference serves it for the rest of the
process. Which path ``auto`` prefers per class is decided by :data:`RULE` from measured timings
(``choices.json``, written by the GPU benchmark run); :func:`verdicts` lists what was decided.

This package knows nothing of the CLI above it; warnings go through :func:`set_warning_handler`
(default: :func:`warnings.warn`).
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable
from importlib import resources
from typing import Any

import torch
from hw2kernels import reference

BACKENDS = ("auto", "triton", "torch")
_default_backend = "auto"
# Per operation: why its last call that resolved to Triton ran the reference instead (None when
# the kernel served it, or no call resolved to Triton yet). See last_fallback_reason().
_last_fallback: dict[str, str | None] = {"group_norm": None, "attention": None}


class KernelUnavailable(RuntimeError):
    """The Triton backend was forced where it cannot run."""


class KernelFallbackWarning(UserWarning):
    """``auto`` found a Triton kernel that failed or disagreed with the reference, and fell back."""


# --------------------------------------------------------------------------- the rule for ``auto``

RULE = (
    "auto uses a Triton kernel for an (op, dtype, shape class) only where the GPU benchmark measured it at "
    "least 5 % faster than PyTorch's fastest path for that class (eager GroupNorm+SiLU or torch.compile; SDPA's "
    "fastest backend), and only after its first call there compiled and matched the reference; classes not "
    "measured yet take Triton on the same run-time check; everything else runs PyTorch."
)
TRITON_MARGIN = 1.05  # Triton must be this much faster than PyTorch's best to be chosen
# (atol, rtol) of the first-call comparison, per dtype name
TOLERANCE = {"float32": (2e-3, 2e-3), "bfloat16": (3e-2, 3e-2), "float16": (5e-3, 5e-3)}
_verdicts: dict[tuple[str, str, str], tuple[bool, str]] = {}


def _warn_default(message: str) -> None:
    warnings.warn(message, KernelFallbackWarning, stacklevel=4)


_warning_handler: Callable[[str], None] = _warn_default


def set_warning_handler(handler: Callable[[str], None] | None) -> None:
    """Where ``auto``'s one-line fallback warnings go (``None``: :func:`warnings.warn`)."""
    global _warning_handler
    _warning_handler = handler or _warn_default


def _bucket(n: int) -> int:
    """The power of two at or above ``n``: sizes within one bucket behave alike (tile shapes)."""
    return 1 << max(0, int(n) - 1).bit_length()


def group_norm_class(x: torch.Tensor, num_groups: int) -> str:
    """The shape class a GroupNorm's speed is measured for: channels per group and spatial size
    (rounded up to powers of two) and the layout (``nchw``, ``cl`` for channels_last, ``strided``)."""
    import math

    c = x.shape[1]
    spatial = math.prod(x.shape[2:])
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and c > 1 and not x.is_contiguous():
        layout = "cl"
    else:
        layout = "nchw" if x.is_contiguous() else "strided"
    return f"c/g{_bucket(c // max(1, num_groups))}:hw{_bucket(spatial)}:{layout}"


def attention_class(q: torch.Tensor, k: torch.Tensor) -> str:
    """The shape class an attention's speed is measured for: head dim, queries and keys (rounded up)."""
    return f"d{q.shape[-1]}:q{_bucket(q.shape[-2])}:k{_bucket(k.shape[-2])}"


def _variant(**parts: Any) -> str:
    """What a first-call check is also specific to besides the shape class: the fused extras and
    the strides, each of which the GPU compiles as its own specialisation (``+add+silu``, ...)."""
    return "".join(f"+{name}" for name, present in parts.items() if present)


@functools.cache
def measured_choices() -> dict[str, str]:
    """``{"op|dtype|class": "triton" | "torch"}`` from ``choices.json`` (empty until measured)."""
    try:
        data = json.loads(resources.files("hw2kernels").joinpath("choices.json").read_text())
    except (FileNotFoundError, OSError, ValueError):
        return {}
    return {k: v for k, v in data.get("choices", {}).items() if v in ("triton", "torch")}


def preferred(op: str, dtype: str, shape_class: str) -> str:
    """``triton``, ``torch``, or ``check`` (not measured: Triton if the run-time check passes)."""
    return measured_choices().get(f"{op}|{dtype}|{shape_class}", "check")


def _auto_considers_triton(device_type: str) -> bool:
    """``auto`` looks at the Triton kernels on CUDA only (the interpreter is a test tool, not a path)."""
    if device_type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return triton_status()[0]


def _checked(
    op: str,
    dtype: Any,
    shape_class: str,
    triton_fn: Callable[[], torch.Tensor],
    reference_fn: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """Run ``triton_fn`` if this (op, dtype, class) passed its first-call check; make that check now
    if it was never made; otherwise (failed before) run ``reference_fn``.

    The check compares the finite values. Where the reference holds NaN or inf (an overflow in
    the model's input), agreeing finite values prove little, so no verdict is kept and the next
    call checks again; a kernel that is non-finite where the reference is finite fails."""
    dtype_name = str(dtype).removeprefix("torch.")
    key = (op, dtype_name, shape_class)
    verdict = _verdicts.get(key)
    if verdict is not None:
        if verdict[0]:
            return triton_fn()
        _last_fallback[op] = f"auto: the first call's check failed: {verdict[1]}"
        return reference_fn()
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        _last_fallback[op] = "auto: not checked inside a CUDA-graph capture"
        return reference_fn()  # no host sync inside a CUDA-graph capture: check on an eager call
    want = reference_fn()
    try:
        got = triton_fn()
    except Exception as exc:  # failed to compile or launch: out of shared memory, registers, ...
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else 'no message'}"
        return _record(key, False, f"the kernel failed ({reason})", want)
    atol, rtol = TOLERANCE.get(dtype_name, (1e-6, 1e-6))
    got32, want32 = got.float(), want.float()
    if got.shape != want.shape:
        return _record(key, False, f"the kernel returned shape {tuple(got.shape)}, not {tuple(want.shape)}", want)
    finite = torch.isfinite(want32)
    if bool((finite & ~torch.isfinite(got32)).any()):
        return _record(key, False, "the kernel returned NaN or inf where the reference is finite", want)
    excess = ((got32 - want32).abs() - (atol + rtol * want32.abs()))[finite]
    if excess.numel() and excess.max().item() > 0:
        err = (got32 - want32).abs()[finite].max().item()
        return _record(key, False, f"the kernel disagreed with the reference (max error {err:.3g}, {dtype_name})", want)
    if not bool(finite.all()):
        _last_fallback[op] = "auto: the reference held NaN or inf, so the check is left to a later call"
        return want
    return _record(key, True, "", got)


def _record(key: tuple[str, str, str], ok: bool, reason: str, result: torch.Tensor) -> torch.Tensor:
    _verdicts[key] = (ok, reason)
    if not ok:
        op, dtype_name, shape_class = key
        _last_fallback[op] = f"auto: the first call's check failed: {reason}"
        _warning_handler(f"hw2kernels: {op} ({dtype_name}, {shape_class}) fell back to PyTorch: {reason}.")
    return result


def verdicts() -> list[dict[str, str]]:
    """What ``auto`` decided in this process, per (op, dtype, shape class)."""
    return [
        {"op": op, "dtype": dtype, "shape_class": cls, "path": "triton" if ok else "torch", "reason": reason}
        for (op, dtype, cls), (ok, reason) in sorted(_verdicts.items())
    ]


def reset_verdicts() -> None:
    _verdicts.clear()


def self_check(device: Any) -> list[dict[str, str]]:
    """Run each op once under ``auto`` at a small representative shape per dtype (what ``hw2 env``
    does on CUDA), so :func:`verdicts` says what this machine's kernels do."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(2, 64, 16, 16, device=device, dtype=dtype)
        group_norm(x, 32, torch.ones(64, device=device, dtype=dtype), None, act="silu", backend="auto")
        q = torch.randn(2, 2, 64, 32, device=device, dtype=dtype)
        attention(q, q, q, backend="auto")
    return verdicts()


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
    backend ran the PyTorch reference instead (inputs the kernel does not serve; under ``auto``,
    also a failed or postponed first-call check, or a measured choice of PyTorch); ``None`` if the
    kernel served it (or no call resolved to Triton yet). Benchmarks print it next to their
    Triton timings."""
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
    if x.ndim >= 2:
        reference.check_groups(x.shape[1], num_groups)

    def ref() -> torch.Tensor:
        return reference.group_norm(x, num_groups, weight, bias, eps, add=add, scale=scale, shift=shift, act=act)

    choice = backend or _default_backend
    if choice == "auto":
        if not _auto_considers_triton(x.device.type):
            return ref()
    elif resolve_backend(choice, x.device.type) != "triton":
        return ref()
    from hw2kernels import triton_ops

    ok, reason = triton_ops.group_norm_supported(x, num_groups, weight, bias, add=add, scale=scale, shift=shift)
    _last_fallback["group_norm"] = None if ok else reason
    if ok:

        def fused() -> torch.Tensor:
            return triton_ops.group_norm(x, num_groups, weight, bias, eps, add=add, scale=scale, shift=shift, act=act)

        if choice != "auto":
            return fused()
        cls = group_norm_class(x, num_groups)
        if preferred("group_norm", str(x.dtype).removeprefix("torch."), cls) == "torch":
            _last_fallback["group_norm"] = "auto: the GPU benchmark measured PyTorch faster for this class"
            return ref()
        extras = _variant(
            affine=weight is not None or bias is not None, add=add is not None, scale=scale is not None,
            shift=shift is not None, silu=act == "silu",
        )  # fmt: skip
        return _checked("group_norm", x.dtype, cls + extras, fused, ref)
    return ref()


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

    def ref() -> torch.Tensor:
        return reference.attention(q, k, v, scale=scale)

    choice = backend or _default_backend
    if choice == "auto":
        if not _auto_considers_triton(q.device.type):
            return ref()
    elif resolve_backend(choice, q.device.type) != "triton":
        return ref()
    from hw2kernels import triton_ops

    ok, reason = triton_ops.attention_supported(q, k, v)
    _last_fallback["attention"] = None if ok else reason
    if ok:

        def fused() -> torch.Tensor:
            return triton_ops.attention(q, k, v, scale=scale)

        if choice != "auto":
            return fused()
        cls = attention_class(q, k)
        if preferred("attention", str(q.dtype).removeprefix("torch."), cls) == "torch":
            _last_fallback["attention"] = "auto: the GPU benchmark measured PyTorch faster for this class"
            return ref()
        extras = _variant(strided=not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous()))
        return _checked("attention", q.dtype, cls + extras, fused, ref)
    return ref()


__all__ = [
    "BACKENDS",
    "RULE",
    "TRITON_MARGIN",
    "KernelFallbackWarning",
    "KernelUnavailable",
    "attention_class",
    "group_norm_class",
    "measured_choices",
    "preferred",
    "reset_verdicts",
    "self_check",
    "set_warning_handler",
    "verdicts",
    "attention",
    "get_default_backend",
    "group_norm",
    "last_fallback_reason",
    "resolve_backend",
    "set_default_backend",
    "triton_status",
]
