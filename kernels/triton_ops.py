"""Host side of the Triton kernels: argument checks, block sizes and launches.

Models do not call this module: :func:`hw2kernels.group_norm` and :func:`hw2kernels.attention`
do, after :func:`group_norm_supported` / :func:`attention_supported` said yes (else they run the
PyTorch reference and record why, see :func:`hw2kernels.last_fallback_reason`). Calling the
functions here with inputs those checks refuse raises ``ValueError``.

The kernels are forward-only (no autograd): the checks refuse inputs that would need a gradient.

Importing this module imports Triton and decorates the kernels; ``triton.jit`` reads
``TRITON_INTERPRET`` at that moment, so set ``TRITON_INTERPRET=1`` before the first import to
run the kernels on CPU tensors (slowly, for tests). :data:`INTERPRETED` says which it was.

Block sizes and warp counts are sensible starting points for H100/H200-class GPUs, chosen by
on-chip footprint, and UNTUNED: no GPU measured them.
"""

from __future__ import annotations

import math

import torch
import triton
from hw2kernels import reference
from hw2kernels._attention import attention_fwd_kernel
from hw2kernels._groupnorm import INTERPRETED, group_norm_fwd_kernel

__all__ = [
    "ATTENTION_MAX_HEAD_DIM",
    "GN_CHUNK",
    "GN_SINGLE_PASS_MAX",
    "INTERPRETED",
    "attention",
    "attention_supported",
    "group_norm",
    "group_norm_supported",
]

DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# GroupNorm: a group whose padded tile (next_pow2(C/G) × next_pow2(H·W) elements) is at most
# GN_SINGLE_PASS_MAX is loaded once and normalized from registers (64 KiB of fp32 spread over
# up to 16 warps); larger groups take the two-pass path in tiles of about GN_CHUNK elements.
# Module constants so tests can lower them (monkeypatch) to send small shapes down the
# two-pass path. Untuned.
GN_SINGLE_PASS_MAX = 16384
GN_CHUNK = 4096

# Attention: the largest head dim the kernel serves (the face UNet's one 512-channel head);
# larger ones fall back to PyTorch's SDPA.
ATTENTION_MAX_HEAD_DIM = 512
MAX_GRID_Y = 65_535  # CUDA limits gridDim.y (and z) to 2**16 - 1


def _device_reason(tensors: tuple[torch.Tensor | None, ...]) -> str:
    """Empty when the kernels can read these tensors, else why not."""
    present = [t for t in tensors if t is not None]
    devices = {t.device for t in present}
    if len(devices) > 1:
        return f"tensors on several devices ({', '.join(sorted(map(str, devices)))})"
    device = next(iter(devices))
    if not INTERPRETED and device.type != "cuda":
        return (
            f"tensors on {device.type}: the compiled Triton kernels need CUDA (TRITON_INTERPRET=1 must be "
            "set before hw2kernels.triton_ops is first imported to run them on CPU)"
        )
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return "an input requires grad and the Triton kernels are forward-only (no autograd)"
    return ""


# ----------------------------------------------------------------------------- GroupNorm


def _flat_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """``(stride_n, stride_c, stride_s)`` when the spatial dims of ``t`` collapse into one axis.

    True for NCHW-contiguous (``stride_s = 1``) and channels_last (``stride_s = C``) tensors,
    and for any layout whose spatial dims are nested in order; ``None`` otherwise.
    """
    inner = expected = None
    for size, stride in reversed(list(zip(t.shape[2:], t.stride()[2:], strict=True))):
        if size == 1:
            continue
        if inner is None:
            inner, expected = stride, stride * size
        elif stride != expected:
            return None
        else:
            expected *= size
    return t.stride(0), t.stride(1), 1 if inner is None else inner


def group_norm_supported(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    add: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> tuple[bool, str]:
    """``(True, "")`` when :func:`group_norm` can serve these inputs, else ``(False, reason)``.

    Served: ``x`` of 2 or more dims in fp32, bf16 or fp16, on CUDA (or any device under the
    interpreter), with no input requiring grad. A channel count that ``num_groups`` does not
    divide is not a fallback but an error (in :func:`group_norm`, as in the reference).
    """
    if x.ndim < 2:
        return False, f"x must be [N, C, *spatial], got {x.ndim} dims"
    if x.dtype not in DTYPES:
        return False, f"x is {x.dtype}; the kernel serves fp32, bf16 and fp16"
    reason = _device_reason((x, weight, bias, add, scale, shift))
    return (not reason), reason


def _per_channel(t: torch.Tensor | None, n: int, c: int, name: str) -> tuple[torch.Tensor | None, int, int]:
    if t is None:
        return None, 0, 0
    if t.numel() != n * c:
        raise ValueError(f"{name} must hold N×C = {n}×{c} values, got shape {tuple(t.shape)}")
    t = t.reshape(n, c)  # a view where possible (e.g. a chunk of a [N, 2C] embedding)
    return t, t.stride(0), t.stride(1)


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
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``act(GroupNorm(x + add) · (1 + scale) + shift)`` in one fused kernel (see ``_groupnorm``).

    ``x`` is ``[N, C, *spatial]``, NCHW or channels_last; the output (or ``out``, which must
    have ``x``'s shape and dtype and may be in either layout) keeps ``x``'s memory format.
    Strides are passed to the kernel as they are; only an ``x`` whose spatial dims do not
    collapse into one strided axis is copied with ``.contiguous()`` first. ``add``, ``scale``,
    ``shift`` are any ``[N, C]``-sized views (strided reads), ``weight``/``bias`` ``[C]``.
    Statistics are fp32 (of ``x + add``); the output has ``x``'s dtype.
    """
    ok, reason = group_norm_supported(x, num_groups, weight, bias, add=add, scale=scale, shift=shift)
    if not ok:
        raise ValueError(f"the Triton group_norm cannot serve these inputs: {reason}")
    if act not in ("none", "silu"):
        raise ValueError(f"act must be 'none' or 'silu', got {act!r}")
    n, c = x.shape[:2]
    reference.check_groups(c, num_groups)
    strides_x = _flat_strides(x)
    if strides_x is None:
        x = x.contiguous()
        strides_x = _flat_strides(x)
    if out is None:
        out = torch.empty_like(x)  # preserve_format: NCHW stays NCHW, channels_last stays channels_last
    elif out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"out must be {tuple(x.shape)} {x.dtype} on {x.device}, got {tuple(out.shape)} {out.dtype}")
    strides_y = _flat_strides(out)
    if strides_y is None:
        raise ValueError("out's spatial dims must collapse into one strided axis (NCHW or channels_last)")
    if x.numel() == 0:
        return out
    spatial = math.prod(x.shape[2:])
    add, *stride_a = _per_channel(add, n, c, "add")
    scale, *stride_sc = _per_channel(scale, n, c, "scale")
    shift, *stride_sh = _per_channel(shift, n, c, "shift")
    if weight is not None:
        weight = weight.reshape(c).contiguous()
    if bias is not None:
        bias = bias.reshape(c).contiguous()

    cpg = c // num_groups
    block_c = triton.next_power_of_2(cpg)
    block_s = triton.next_power_of_2(spatial)
    single = block_c * block_s <= GN_SINGLE_PASS_MAX
    if not single:
        block_s = max(1, min(block_s, GN_CHUNK // block_c))
    tile = block_c * block_s
    num_warps = 4 if tile <= 2048 else 8 if tile <= 8192 else 16  # untuned
    dummy = x  # never read: the HAS_* flags switch those loads off
    group_norm_fwd_kernel[(n * num_groups,)](
        x,
        out,
        dummy if weight is None else weight,
        dummy if bias is None else bias,
        dummy if add is None else add,
        dummy if scale is None else scale,
        dummy if shift is None else shift,
        spatial,
        num_groups,
        cpg,
        *strides_x,
        *strides_y,
        *stride_a,
        *stride_sc,
        *stride_sh,
        float(eps),
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        HAS_ADD=add is not None,
        HAS_SCALE=scale is not None,
        HAS_SHIFT=shift is not None,
        SILU=act == "silu",
        SINGLE_PASS=single,
        BLOCK_C=block_c,
        BLOCK_S=block_s,
        num_warps=num_warps,
    )
    return out


# ----------------------------------------------------------------------------- attention


def attention_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[bool, str]:
    """``(True, "")`` when :func:`attention` can serve these inputs, else ``(False, reason)``.

    Served: 4-D ``q [B, H, Nq, D]``, ``k``/``v [B, H, Nk, D]`` (same B, H and D, no
    broadcasting), one dtype among fp32/bf16/fp16, ``1 <= D <= ATTENTION_MAX_HEAD_DIM``,
    ``Nk >= 1``, on CUDA (or any device under the interpreter), no input requiring grad.
    """
    if not (q.ndim == k.ndim == v.ndim == 4):
        return False, f"q, k, v must be 4-D [B, H, N, D], got {q.ndim}, {k.ndim}, {v.ndim} dims"
    if not (q.dtype == k.dtype == v.dtype):
        return False, f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})"
    if q.dtype not in DTYPES:
        return False, f"inputs are {q.dtype}; the kernel serves fp32, bf16 and fp16"
    if not (q.shape[:2] == k.shape[:2] == v.shape[:2]) or k.shape[2] != v.shape[2]:
        return False, f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match"
    head_dim = q.shape[-1]
    if not (k.shape[-1] == v.shape[-1] == head_dim):
        return False, f"head dims differ (q {head_dim}, k {k.shape[-1]}, v {v.shape[-1]})"
    if not 1 <= head_dim <= ATTENTION_MAX_HEAD_DIM:
        return False, f"head dim {head_dim} is outside what the kernel serves (1..{ATTENTION_MAX_HEAD_DIM})"
    if k.shape[2] == 0:
        return False, "no keys (Nk = 0)"
    if q.shape[0] * q.shape[1] > MAX_GRID_Y:  # one program row per (batch, head) in the grid's y
        return False, f"B×H = {q.shape[0] * q.shape[1]:,} exceeds the {MAX_GRID_Y:,} a CUDA grid's y dimension holds"
    reason = _device_reason((q, k, v))
    return (not reason), reason


def _attention_config(block_d: int, element_size: int) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` by bytes per q/k/v row. Untuned.

    The q tile plus ``num_stages`` k and v tiles stay within Hopper's ~228 KiB of shared
    memory, and the fp32 ``[BLOCK_M, BLOCK_D]`` accumulator within the register file.
    """
    row = block_d * element_size
    if row <= 128:  # D <= 64 in 16-bit, D <= 32 in fp32
        return 128, 64, 4, 3
    if row <= 256:  # D <= 128 in 16-bit
        return 128, 64, 8, 3
    if row <= 512:  # D <= 256 in 16-bit
        return 64, 32, 8, 2
    if row <= 1024:  # D <= 512 in 16-bit
        return 32, 32, 8, 2
    return 32, 16, 8, 1  # D = 512 in fp32


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(q kᵀ · scale) v`` without the ``Nq × Nk`` matrix (FlashAttention-2 forward).

    ``q [B, H, Nq, D]``, ``k``/``v [B, H, Nk, D]`` (cross-attention: ``Nq != Nk`` is fine), any
    strides: non-contiguous views (the models' transposed q/k/v) are read in place, never
    copied. ``scale`` defaults to ``1/√D``. Returns a contiguous ``[B, H, Nq, D]`` in the
    input dtype (or fills ``out``, any strides). fp32 inputs use IEEE fp32 dot products unless
    ``torch.set_float32_matmul_precision`` allows TF32; under the interpreter 16-bit inputs
    are computed in fp32 (its ``dot`` has no bf16).
    """
    ok, reason = attention_supported(q, k, v)
    if not ok:
        raise ValueError(f"the Triton attention cannot serve these inputs: {reason}")
    b, h, nq, head_dim = q.shape
    nk = k.shape[2]
    if out is None:
        out = torch.empty(b, h, nq, head_dim, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} on {q.device}, got {tuple(out.shape)} {out.dtype}")
    if out.numel() == 0:
        return out
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    # tl.dot needs every dimension >= 16; the padding is masked
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_m, block_n, num_warps, num_stages = _attention_config(block_d, q.element_size())
    if q.dtype == torch.float32 or INTERPRETED:  # fp32 dot operands (the interpreter upcasts 16-bit ones)
        precision = "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    else:
        precision = None  # 16-bit operands: Triton's default, tensor cores
    grid = (triton.cdiv(nq, block_m), b * h)
    attention_fwd_kernel[grid](
        q,
        k,
        v,
        out,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        h,
        nq,
        nk,
        head_dim,
        scale * math.log2(math.e),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        UPCAST=INTERPRETED and q.dtype != torch.float32,
        DOT_PRECISION=precision,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out
