"""Triton kernel: GroupNorm forward with a fused epilogue (private; call :func:`hw2kernels.group_norm`).

One program normalizes one (sample, group) pair: ``C/G`` channels × ``S`` spatial positions,
held as a ``[BLOCK_C, BLOCK_S]`` tile (channels × positions, both padded to powers of two and
masked). The strides of ``x`` and ``y`` are arguments, so NCHW (spatial stride 1) and
channels_last (channel stride 1) share the code. The epilogue's per-channel vectors (weight,
bias, add, scale, shift) are loaded once per program as ``[BLOCK_C]`` vectors.

Statistics are fp32 whatever the input dtype:

- single pass (``SINGLE_PASS``, the whole group fits in one tile on chip): load the group once,
  mean, then the variance as the mean of squared deviations from it (exact two-pass arithmetic
  over registers, no second read of ``x``), normalize, store;
- two passes (the group is larger than one tile): pass 1 walks the spatial axis in chunks and
  merges each chunk's per-channel mean and M2 into running ones (Welford's update in Chan et
  al.'s parallel form, which does not cancel catastrophically like ``Σx² − (Σx)²/n``); the
  per-channel results are then merged over the group's channels the same way; pass 2 walks the
  chunks again to normalize and store. ``x`` is read twice.
"""

import triton
import triton.language as tl
from triton import knobs

# Whether the kernel below was built for Triton's CPU interpreter: ``triton.jit`` reads
# TRITON_INTERPRET when it decorates, i.e. when this module is first imported.
INTERPRETED = bool(knobs.runtime.interpret)


@triton.jit
def group_norm_fwd_kernel(
    X,
    Y,
    W,
    B,
    ADD,
    SCALE,
    SHIFT,
    S,
    G,
    CPG,
    stride_xn,
    stride_xc,
    stride_xs,
    stride_yn,
    stride_yc,
    stride_ys,
    stride_an,
    stride_ac,
    stride_scn,
    stride_scc,
    stride_shn,
    stride_shc,
    eps,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_ADD: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    SINGLE_PASS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """``y = act(GN(x + add) · (1 + scale) + shift)`` for sample ``pid // G``, group ``pid % G``.

    1. channel indices and per-channel vectors (add, weight·(1 + scale), bias·(1 + scale) + shift);
    2. statistics of ``x + add``: one tile (single pass) or chunked Welford/Chan merges (two passes);
    3. ``y = (v − mean) · rstd · w' + b'`` (then SiLU), cast to ``y``'s dtype and stored.
    """
    # 1. which sample, which channels; the per-channel epilogue folded into an affine map
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    offs_c = tl.arange(0, BLOCK_C)
    c_mask = offs_c < CPG
    c = g * CPG + offs_c
    x_base = X + n.to(tl.int64) * stride_xn
    y_base = Y + n.to(tl.int64) * stride_yn
    x_c = c.to(tl.int64) * stride_xc
    y_c = c.to(tl.int64) * stride_yc
    if HAS_ADD:
        a = tl.load(ADD + n * stride_an + c * stride_ac, mask=c_mask, other=0.0).to(tl.float32)
    if HAS_W:
        w = tl.load(W + c, mask=c_mask, other=0.0).to(tl.float32)
    else:
        w = tl.full([BLOCK_C], 1.0, tl.float32)
    if HAS_B:
        b = tl.load(B + c, mask=c_mask, other=0.0).to(tl.float32)
    else:
        b = tl.zeros([BLOCK_C], tl.float32)
    if HAS_SCALE:
        sc = 1.0 + tl.load(SCALE + n * stride_scn + c * stride_scc, mask=c_mask, other=0.0).to(tl.float32)
        w = w * sc
        b = b * sc
    if HAS_SHIFT:
        b = b + tl.load(SHIFT + n * stride_shn + c * stride_shc, mask=c_mask, other=0.0).to(tl.float32)
    offs_s = tl.arange(0, BLOCK_S)
    count = CPG * S * 1.0

    if SINGLE_PASS:
        # 2. the whole group in one tile: load once, mean, mean of squared deviations
        mask = c_mask[:, None] & (offs_s < S)[None, :]
        v = tl.load(x_base + x_c[:, None] + offs_s[None, :] * stride_xs, mask=mask, other=0.0).to(tl.float32)
        if HAS_ADD:
            v = tl.where(mask, v + a[:, None], 0.0)
        mean = tl.sum(tl.sum(v, axis=1), axis=0) / count
        d = tl.where(mask, v - mean, 0.0)
        var = tl.sum(tl.sum(d * d, axis=1), axis=0) / count
        rstd = 1.0 / tl.sqrt(var + eps)
        # 3. normalize, epilogue, store
        y = d * (rstd * w)[:, None] + b[:, None]
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(y_base + y_c[:, None] + offs_s[None, :] * stride_ys, y.to(Y.dtype.element_ty), mask=mask)
    else:
        # 2a. pass 1: per-channel running mean and M2, merged chunk by chunk (Chan et al.)
        mean_c = tl.zeros([BLOCK_C], tl.float32)
        m2_c = tl.zeros([BLOCK_C], tl.float32)
        for s0 in range(0, S, BLOCK_S):
            s = s0 + offs_s
            mask = c_mask[:, None] & (s < S)[None, :]
            v = tl.load(x_base + x_c[:, None] + s[None, :] * stride_xs, mask=mask, other=0.0).to(tl.float32)
            if HAS_ADD:
                v = tl.where(mask, v + a[:, None], 0.0)
            cnt = tl.minimum(S - s0, BLOCK_S).to(tl.float32)  # positions in this chunk
            seen = s0 * 1.0  # positions merged before it (the same for every channel)
            chunk_mean = tl.sum(v, axis=1) / cnt
            dev = tl.where(mask, v - chunk_mean[:, None], 0.0)
            chunk_m2 = tl.sum(dev * dev, axis=1)
            total = seen + cnt
            delta = chunk_mean - mean_c
            mean_c = mean_c + delta * (cnt / total)
            m2_c = m2_c + chunk_m2 + delta * delta * (seen * cnt / total)
        # 2b. merge the channels (each holds S positions) into the group's statistics
        mean = tl.sum(tl.where(c_mask, mean_c, 0.0), axis=0) / (CPG * 1.0)
        spread = tl.where(c_mask, mean_c - mean, 0.0)
        m2 = tl.sum(tl.where(c_mask, m2_c, 0.0), axis=0) + tl.sum(spread * spread, axis=0) * S
        rstd = 1.0 / tl.sqrt(m2 / count + eps)
        alpha = rstd * w
        # 3. pass 2: read x again, normalize, epilogue, store
        for s0 in range(0, S, BLOCK_S):
            s = s0 + offs_s
            mask = c_mask[:, None] & (s < S)[None, :]
            v = tl.load(x_base + x_c[:, None] + s[None, :] * stride_xs, mask=mask, other=0.0).to(tl.float32)
            if HAS_ADD:
                v = v + a[:, None]
            y = (v - mean) * alpha[:, None] + b[:, None]
            if SILU:
                y = y * tl.sigmoid(y)
            tl.store(y_base + y_c[:, None] + s[None, :] * stride_ys, y.to(Y.dtype.element_ty), mask=mask)
