"""The Triton kernels against float64 formulas written out here, on CPU under TRITON_INTERPRET=1.

tests/conftest.py sets TRITON_INTERPRET=1 before anything imports Triton; on a GPU machine
that exports TRITON_INTERPRET=0 the same tests run the compiled kernels on CUDA. Every kernel
call writes into an output poisoned with NaN, so an element the kernel skipped fails the test.
The interpreter runs each program in Python: shapes are kept small on purpose.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import zlib

import hw2kernels
import pytest
import torch
from torch import nn

from hw2cli.models import FaceUNet
from hw2cli.models.digit_unet import DigitUNet, DigitUNetConfig

pytestmark = pytest.mark.skipif(not hw2kernels.triton_status()[0], reason=hw2kernels.triton_status()[1])

if hw2kernels.triton_status()[0]:
    from hw2kernels import triton_ops

    DEVICE = "cpu" if triton_ops.INTERPRETED else "cuda"
else:  # the module is skipped
    triton_ops = None
    DEVICE = "cpu"

FP32 = {"rtol": 1e-4, "atol": 1e-5}
LOW = {torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2}, torch.float16: {"rtol": 4e-3, "atol": 4e-3}}


def randn(*shape, gen, dtype=torch.float32, mean=0.0, std=1.0):
    return (torch.randn(*shape, generator=gen) * std + mean).to(device=DEVICE, dtype=dtype)


def poisoned_like(x: torch.Tensor) -> torch.Tensor:
    """NaN everywhere, same shape, dtype and memory format (strides) as ``x``."""
    return torch.full_like(x, float("nan"))


def check_written(out: torch.Tensor) -> None:
    assert torch.isfinite(out).all(), f"{(~torch.isfinite(out)).sum().item()} elements not written"


# ----------------------------------------------------------------------------- GroupNorm


def group_norm_f64(x, groups, weight, bias, eps, add=None, scale=None, shift=None, act="none"):
    """act(GN(x + add) · (1 + scale) + shift), spelled out in float64 (no F.group_norm)."""
    x = x.double()
    n, c = x.shape[:2]
    per_channel = (n, c) + (1,) * (x.ndim - 2)
    if add is not None:
        x = x + add.double().reshape(per_channel)
    g = x.reshape(n, groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    if weight is not None:
        y = y * weight.double().reshape((1, c) + (1,) * (x.ndim - 2))
    if bias is not None:
        y = y + bias.double().reshape((1, c) + (1,) * (x.ndim - 2))
    if scale is not None:
        y = y * (1 + scale.double().reshape(per_channel))
    if shift is not None:
        y = y + shift.double().reshape(per_channel)
    return y * torch.sigmoid(y) if act == "silu" else y


def run_group_norm(shape, groups, *, add, scale, shift, act, channels_last=False, affine=True, dtype=torch.float32):
    seed = zlib.crc32(repr((shape, groups, add, scale, shift, act, channels_last, dtype)).encode())
    gen = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    x = randn(*shape, gen=gen, dtype=dtype, mean=1.0, std=3.0)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = randn(c, gen=gen) if affine else None
    bias = randn(c, gen=gen) if affine else None
    vectors = {name: randn(n, c, gen=gen, std=0.5) if on else None for name, on in (("add", add), ("scale", scale))}
    vectors["shift"] = randn(n, c, gen=gen) if shift else None
    out = poisoned_like(x)
    y = triton_ops.group_norm(x, groups, weight, bias, 1e-5, act=act, out=out, **vectors)
    assert y is out and y.dtype == dtype
    check_written(y)
    ref = group_norm_f64(x, groups, weight, bias, 1e-5, act=act, **vectors)
    return y, ref


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("act", ["none", "silu"])
@pytest.mark.parametrize("shift", [False, True], ids=["", "shift"])
@pytest.mark.parametrize("scale", [False, True], ids=["", "scale"])
@pytest.mark.parametrize("add", [False, True], ids=["", "add"])
def test_group_norm_every_epilogue(add, scale, shift, act, channels_last):
    y, ref = run_group_norm((2, 24, 7, 7), 8, add=add, scale=scale, shift=shift, act=act, channels_last=channels_last)
    torch.testing.assert_close(y.double(), ref, **FP32)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize(
    ("shape", "groups"),
    [
        ((2, 96, 7, 7), 32),  # 3 channels per group, H·W = 49
        ((1, 8, 13, 17), 4),  # H·W = 221
        ((2, 6, 5, 3), 3),  # 2 channels per group, H·W = 15
        ((1, 32, 7, 7), 1),  # one group of everything
        ((2, 12, 1, 1), 12),  # one element per group: y = bias (then epilogue)
    ],
)
def test_group_norm_odd_shapes(shape, groups, channels_last):
    y, ref = run_group_norm(shape, groups, add=True, scale=True, shift=True, act="silu", channels_last=channels_last)
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), ref, **FP32)


@pytest.mark.parametrize("shape", [(3, 16), (2, 8, 11), (1, 4, 3, 5, 2)], ids=["2d", "3d", "5d"])
def test_group_norm_other_ranks(shape):
    y, ref = run_group_norm(shape, 4, add=True, scale=False, shift=True, act="silu")
    torch.testing.assert_close(y.double(), ref, **FP32)


def test_group_norm_without_affine():
    y, ref = run_group_norm((2, 8, 5, 5), 2, add=False, scale=True, shift=False, act="none", affine=False)
    torch.testing.assert_close(y.double(), ref, **FP32)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize(
    ("shape", "groups"),
    [
        ((2, 96, 7, 7), 32),  # tiles of 4 channels × 4 positions: 13 chunks, the last one partial
        ((1, 16, 13, 17), 1),  # 16 channels per group: one position per chunk
        ((1, 6, 9, 10), 2),  # 3 channels (padded to 4) × 4 positions per chunk
    ],
)
def test_group_norm_two_pass(monkeypatch, shape, groups, channels_last):
    """With the on-chip limit lowered, small groups take the chunked two-pass (Welford/Chan) path."""
    monkeypatch.setattr(triton_ops, "GN_SINGLE_PASS_MAX", 8)
    monkeypatch.setattr(triton_ops, "GN_CHUNK", 16)
    launched = []
    kernel = triton_ops.group_norm_fwd_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launched.append(kwargs["SINGLE_PASS"])
                return kernel[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(triton_ops, "group_norm_fwd_kernel", Spy())
    y, ref = run_group_norm(shape, groups, add=True, scale=True, shift=True, act="silu", channels_last=channels_last)
    assert launched == [False]
    torch.testing.assert_close(y.double(), ref, **FP32)


def test_group_norm_two_pass_at_default_sizes():
    """A group of 32 channels × 32·32 positions (32768 > GN_SINGLE_PASS_MAX) in chunks of 4096."""
    assert 32 * 1024 > triton_ops.GN_SINGLE_PASS_MAX
    y, ref = run_group_norm((1, 64, 32, 32), 2, add=True, scale=False, shift=False, act="none")
    torch.testing.assert_close(y.double(), ref, **FP32)


def test_group_norm_two_pass_is_stable_for_a_large_mean(monkeypatch):
    """Chunk statistics merged the Welford/Chan way keep the variance of values far from zero."""
    monkeypatch.setattr(triton_ops, "GN_SINGLE_PASS_MAX", 8)
    monkeypatch.setattr(triton_ops, "GN_CHUNK", 16)
    gen = torch.Generator().manual_seed(5)
    x = randn(1, 4, 9, 9, gen=gen, mean=300.0, std=1.0)
    y = triton_ops.group_norm(x, 1, out=poisoned_like(x))
    check_written(y)
    torch.testing.assert_close(y.double(), group_norm_f64(x, 1, None, None, 1e-5), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_group_norm_low_precision(dtype, channels_last):
    y, ref = run_group_norm(
        (2, 96, 7, 7), 32, add=True, scale=True, shift=True, act="silu", channels_last=channels_last, dtype=dtype
    )
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), ref, **LOW[dtype])


def test_group_norm_default_output_keeps_the_memory_format():
    gen = torch.Generator().manual_seed(6)
    x = randn(2, 8, 5, 6, gen=gen).to(memory_format=torch.channels_last)
    y = triton_ops.group_norm(x, 4)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), group_norm_f64(x, 4, None, None, 1e-5), **FP32)
    nchw = triton_ops.group_norm(x.contiguous(), 4)
    assert nchw.is_contiguous()
    torch.testing.assert_close(nchw, y)


def test_group_norm_non_contiguous_inputs():
    """A spatial slice (copied), a per-channel chunk of an [N, 2C] embedding (read in place)."""
    gen = torch.Generator().manual_seed(7)
    big = randn(2, 12, 9, 10, gen=gen)
    x = big[:, :, 1:8, 2:9]  # spatial dims do not collapse: the wrapper copies
    scale, shift = randn(2, 24, gen=gen, std=0.5).chunk(2, dim=1)  # strides (24, 1)
    assert not x.is_contiguous() and not scale.is_contiguous()
    out = poisoned_like(x.contiguous())
    y = triton_ops.group_norm(x, 3, scale=scale, shift=shift, act="silu", out=out)
    check_written(y)
    ref = group_norm_f64(x, 3, None, None, 1e-5, scale=scale, shift=shift, act="silu")
    torch.testing.assert_close(y.double(), ref, **FP32)


def test_group_norm_errors():
    x = torch.zeros(1, 6, 2, 2, device=DEVICE)
    with pytest.raises(ValueError, match="cannot be split"):
        triton_ops.group_norm(x, 4)
    with pytest.raises(ValueError, match="act must be"):
        triton_ops.group_norm(x, 3, act="gelu")
    with pytest.raises(ValueError, match="add must hold"):
        triton_ops.group_norm(x, 3, add=torch.zeros(1, 5, device=DEVICE))
    with pytest.raises(ValueError, match="cannot serve"):
        triton_ops.group_norm(x.double(), 3)


# ----------------------------------------------------------------------------- attention


def attention_f64(q, k, v, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q.double() @ k.double().transpose(-1, -2) * scale
    p = torch.exp(s - s.amax(-1, keepdim=True))
    return (p / p.sum(-1, keepdim=True)) @ v.double()


def run_attention(q, k, v, scale=None):
    out = poisoned_like(q.new_empty(q.shape))
    y = triton_ops.attention(q, k, v, scale=scale, out=out)
    assert y is out and y.dtype == q.dtype and y.shape == q.shape
    check_written(y)
    return y, attention_f64(q, k, v, scale)


def qkv(b, h, nq, nk, d, *, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return randn(b, h, nq, d, gen=gen, dtype=dtype), *(randn(b, h, nk, d, gen=gen, dtype=dtype) for _ in range(2))


@pytest.mark.parametrize("head_dim", [8, 40, 80, 160])
@pytest.mark.parametrize("nq", [1, 17, 49, 130])
def test_attention_sequence_and_head_dims(nq, head_dim):
    q, k, v = qkv(1, 2, nq, nq, head_dim, seed=nq * 1000 + head_dim)
    y, ref = run_attention(q, k, v)
    torch.testing.assert_close(y.double(), ref, **FP32)


@pytest.mark.parametrize(("nq", "nk"), [(1, 77), (77, 1), (17, 130), (130, 77), (49, 5)])
def test_cross_attention(nq, nk):
    """Nq != Nk (a text encoder's 77 tokens as keys, say) with a scale that is not 1/√D."""
    q, k, v = qkv(2, 1, nq, nk, 40, seed=nq + 7 * nk)
    y, ref = run_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(y.double(), ref, **FP32)


@pytest.mark.parametrize(("nq", "nk"), [(4, 4), (16, 9), (33, 33)])
def test_attention_head_dim_512(nq, nk):
    """The face UNet's single 512-channel head, default scale 1/√512."""
    q, k, v = qkv(1, 1, nq, nk, 512, seed=nq + nk)
    y, ref = run_attention(q, k, v)
    torch.testing.assert_close(y.double(), ref, **FP32)


def test_attention_large_logits():
    """Scores in the hundreds: the online softmax's running max must keep exp2 in range."""
    q, k, v = qkv(1, 2, 20, 70, 16, seed=11)
    y, ref = run_attention(q * 30, k, v)
    torch.testing.assert_close(y.double(), ref, **FP32)


def test_attention_non_contiguous_views():
    """q/k/v as SelfAttention passes them (transposed slices of one conv output), an SD-style
    [B, N, H, D] layout seen through transpose(1, 2), and a transposed output buffer."""
    gen = torch.Generator().manual_seed(12)
    b, heads, d, hw = 2, 3, 8, 49
    qkv_map = randn(b, 3, heads, d, hw, gen=gen)
    q, k, v = (qkv_map[:, i].transpose(-1, -2) for i in range(3))
    assert q.stride(-1) == hw and not q.is_contiguous()
    y, ref = run_attention(q, k, v)
    torch.testing.assert_close(y.double(), ref, **FP32)

    bnhd = [randn(b, n, heads, 40, gen=gen).transpose(1, 2) for n in (17, 30, 30)]
    y, ref = run_attention(*bnhd)
    torch.testing.assert_close(y.double(), ref, **FP32)

    out = torch.full((b, heads, d, hw), float("nan"), device=DEVICE).transpose(-1, -2)
    y = triton_ops.attention(q, k, v, out=out)
    assert y is out
    check_written(y)
    torch.testing.assert_close(y.double(), attention_f64(q, k, v), **FP32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_attention_low_precision(dtype):
    q, k, v = qkv(1, 2, 49, 77, 40, seed=13, dtype=dtype)
    y, ref = run_attention(q, k, v)
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), ref, **LOW[dtype])


def test_attention_supported_says_why_not():
    q, k, v = qkv(1, 1, 4, 4, 8, seed=14)
    assert triton_ops.attention_supported(q, k, v) == (True, "")
    big = qkv(1, 1, 4, 4, 576, seed=15)
    ok, reason = triton_ops.attention_supported(*big)
    assert not ok and "head dim 576" in reason
    ok, reason = triton_ops.attention_supported(q, k.half(), v)
    assert not ok and "dtypes differ" in reason
    ok, reason = triton_ops.attention_supported(q, k[:, :, :0], v[:, :, :0])
    assert not ok and "no keys" in reason
    ok, reason = triton_ops.attention_supported(q.double(), k.double(), v.double())
    assert not ok and "float64" in reason
    ok, reason = triton_ops.attention_supported(q[0], k[0], v[0])
    assert not ok and "4-D" in reason
    with pytest.raises(ValueError, match="cannot serve"):
        triton_ops.attention(*big)


def test_dispatch_falls_back_and_records_why():
    """backend="triton" with inputs the kernels refuse runs the reference and says why."""
    big = qkv(1, 2, 5, 6, 576, seed=16)
    y = hw2kernels.attention(*big, backend="triton")
    assert "head dim 576" in hw2kernels.last_fallback_reason()
    torch.testing.assert_close(y.double(), attention_f64(*big), **FP32)

    q, k, v = (t.clone().requires_grad_() for t in qkv(1, 1, 5, 5, 8, seed=17))
    y = hw2kernels.attention(q, k, v, backend="triton")
    assert "forward-only" in hw2kernels.last_fallback_reason("attention")
    y.sum().backward()
    assert q.grad is not None
    with torch.no_grad():
        hw2kernels.attention(q, k, v, backend="triton")
    assert hw2kernels.last_fallback_reason() is None

    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, device=DEVICE)
    y = hw2kernels.group_norm(x, 2, backend="triton")
    assert "float64" in hw2kernels.last_fallback_reason("group_norm")
    torch.testing.assert_close(y, group_norm_f64(x, 2, None, None, 1e-5))
    hw2kernels.group_norm(x.float(), 2, backend="triton")
    assert hw2kernels.last_fallback_reason("group_norm") is None
    with pytest.raises(ValueError, match="op must be"):
        hw2kernels.last_fallback_reason("conv")


def test_forced_triton_without_interpreter_or_cuda_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    code = (
        "import sys, torch, hw2kernels\n"
        "try:\n"
        "    hw2kernels.group_norm(torch.zeros(1, 4, 2, 2), 2, backend='triton')\n"
        "except hw2kernels.KernelUnavailable as exc:\n"
        "    print(exc)\n"
        "    sys.exit(0)\n"
        "sys.exit('no KernelUnavailable')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "cannot run here" in proc.stdout and "no CUDA device" in proc.stdout
    assert "TRITON_INTERPRET=1" in proc.stdout


# ----------------------------------------------------------------------------- models


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Re-draw every conv (the UNets zero-init some, which would hide differences) and the
    GroupNorm affines, so that both backends compute something non-trivial."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
        elif isinstance(module, nn.GroupNorm):
            nn.init.normal_(module.weight, 1.0, 0.2)
            nn.init.normal_(module.bias, 0.0, 0.2)
    return model.eval().to(DEVICE)


def _both_backends(monkeypatch, model: nn.Module, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    calls = {"group_norm": 0, "attention": 0}
    for name in calls:
        original = getattr(triton_ops, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(triton_ops, name, counted)
    outputs = []
    try:
        for backend in ("torch", "triton"):
            hw2kernels.set_default_backend(backend)
            with torch.inference_mode():
                outputs.append(model(*inputs))
    finally:
        hw2kernels.set_default_backend("auto")
    assert calls["group_norm"] > 0 and calls["attention"] > 0, calls
    assert hw2kernels.last_fallback_reason("group_norm") is None
    assert hw2kernels.last_fallback_reason("attention") is None
    return outputs[0], outputs[1]


def _assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-4) -> None:
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert scale > 1e-3, "the model output is trivially small"
    assert err <= tol * scale, f"max error {err:.3g} against output scale {scale:.3g}"


def test_digit_unet_same_output_on_both_backends(monkeypatch):
    config = DigitUNetConfig(base_channels=8, head_dim=8, groups=4, channel_mult=(1, 2), attention_levels=(1,))
    model = _randomize(DigitUNet(config), seed=20)
    gen = torch.Generator().manual_seed(21)
    x = randn(2, 3, 28, 28, gen=gen)
    t = torch.tensor([3, 500], device=DEVICE)
    cond = torch.tensor([1, model.null_condition], device=DEVICE)
    ours, ref = _both_backends(monkeypatch, model, x, t, cond)
    _assert_close_relative(ours, ref)


def test_face_unet_same_output_on_both_backends(monkeypatch):
    model = _randomize(FaceUNet(width=32), seed=22)
    gen = torch.Generator().manual_seed(23)
    x = randn(1, 3, 64, 64, gen=gen)
    ours, ref = _both_backends(monkeypatch, model, x, torch.tensor([981], device=DEVICE))
    _assert_close_relative(ours, ref)


def test_self_attention_layer_matches_sdpa_path():
    """One SelfAttention block (transposed q/k/v views) through both backends, 7×7 map, 2 heads."""
    from hw2cli.models.layers import SelfAttention

    torch.manual_seed(24)
    layer = SelfAttention(16, num_heads=2, groups=4).eval().to(DEVICE)
    x = randn(2, 16, 7, 7, gen=torch.Generator().manual_seed(25))
    with torch.inference_mode():
        ref = layer(x)
        hw2kernels.set_default_backend("triton")
        try:
            ours = layer(x)
        finally:
            hw2kernels.set_default_backend("auto")
    torch.testing.assert_close(ours, ref, **FP32)
