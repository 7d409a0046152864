"""Triton kernel: fused attention forward (private; call :func:`hw2kernels.attention`).

FlashAttention-2 (Dao 2023) forward: one program owns ``BLOCK_M`` query rows of one (batch,
head) and streams the keys and values in ``BLOCK_N`` blocks, keeping a running row maximum
``m``, a running softmax denominator ``l`` and an unnormalized output accumulator in fp32 (the
"online softmax"); the ``Nq × Nk`` score matrix never exists in memory, and the division by
``l`` happens once at the end. Exponentials are ``exp2`` with ``scale · log2(e)`` folded in.

Every tensor comes with its four strides, so the transposed q/k/v views the models pass are
read in place (no ``.contiguous()`` copies). Sequence lengths are masked at block edges (keys
past ``Nk`` score −inf, queries past ``Nq`` are not stored); head dims that are not a power of
two are zero-padded up to ``BLOCK_D`` by masked loads, which changes neither ``q·k`` nor ``p·v``.
"""

import triton
import triton.language as tl
from triton import knobs

# Whether the kernel below was built for Triton's CPU interpreter: ``triton.jit`` reads
# TRITON_INTERPRET when it decorates, i.e. when this module is first imported.
INTERPRETED = bool(knobs.runtime.interpret)


@triton.jit
def attention_fwd_kernel(
    Q,
    K,
    V,
    Out,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    H,
    NQ,
    NK,
    D,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """``Out[b, h, rows] = softmax(Q Kᵀ · scale) V`` for one block of query rows.

    1. load the ``[BLOCK_M, BLOCK_D]`` query tile once;
    2. for each key block: ``s = q kᵀ · scale·log2e`` (masked past ``Nk``), new row max
       ``m' = max(m, rowmax s)``, ``p = exp2(s − m')``, rescale ``l`` and the accumulator by
       ``exp2(m − m')``, then ``l += rowsum p`` and ``acc += p v``;
    3. ``Out = acc / l``, cast to the output dtype, masked store.
    """
    # 1. this program's (batch, head) and query rows; the query tile stays on chip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < NQ
    d_mask = offs_d < D
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # 2. stream the keys and values; the first block always holds a valid key (NK >= 1), so
    #    m_i is finite after it and exp2(m_i - m_new) never sees -inf - -inf
    for start_n in range(0, NK, BLOCK_N):
        cols = start_n + offs_n
        n_mask = cols < NK
        kt = tl.load(
            k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd,
            mask=d_mask[:, None] & n_mask[None, :],
            other=0.0,
        )  # [BLOCK_D, BLOCK_N]: Kᵀ
        if UPCAST:
            kt = kt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
            mask=n_mask[:, None] & d_mask[None, :],
            other=0.0,
        )  # [BLOCK_N, BLOCK_D]
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new

    # 3. normalize once and store the rows that exist
    out = acc / l_i[:, None]
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])
