"""``auto`` is safe: on its first call per (op, dtype, shape class) the Triton kernel must compile
and agree with the reference, or the reference serves that class from then on with one warning.

These run on the CPU: ``auto`` is told it is on a GPU, the kernels run under Triton's interpreter,
and a monkeypatched launcher fails or returns wrong values."""

from __future__ import annotations

import hw2kernels
import pytest
import torch
from hw2kernels import reference, triton_ops


@pytest.fixture
def auto_on_gpu(monkeypatch):
    """``auto`` behaving as on CUDA; warnings collected; verdicts reset."""
    monkeypatch.setattr(hw2kernels, "_auto_considers_triton", lambda device_type: True)
    messages: list[str] = []
    hw2kernels.reset_verdicts()
    hw2kernels.set_warning_handler(messages.append)
    yield messages
    hw2kernels.set_warning_handler(None)
    hw2kernels.reset_verdicts()


def counting(monkeypatch, name, behaviour):
    calls = []
    real = getattr(triton_ops, name)

    def launcher(*args, **kwargs):
        calls.append(1)
        return behaviour(real, *args, **kwargs)

    monkeypatch.setattr(triton_ops, name, launcher)
    return calls


def gn_inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 5, 5, generator=g).to(dtype)
    w = torch.randn(16, generator=g).to(dtype)
    return x, w


def test_a_kernel_that_agrees_serves_its_class_after_the_first_check(auto_on_gpu, monkeypatch):
    calls = counting(monkeypatch, "group_norm", lambda real, *a, **k: real(*a, **k))
    x, w = gn_inputs()
    first = hw2kernels.group_norm(x, 4, w, None, act="silu", backend="auto")
    torch.testing.assert_close(first, reference.group_norm(x, 4, w, None, act="silu"), rtol=1e-5, atol=1e-5)
    hw2kernels.group_norm(x * 2, 4, w, None, act="silu", backend="auto")
    assert len(calls) == 2 and auto_on_gpu == []
    (verdict,) = hw2kernels.verdicts()
    assert verdict["op"] == "group_norm" and verdict["path"] == "triton" and verdict["dtype"] == "float32"


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (lambda real, *a, **k: (_ for _ in ()).throw(RuntimeError("out of resource: shared memory")), "failed"),
        (lambda real, *a, **k: real(*a, **k) + 0.5, "disagreed"),
        (lambda real, *a, **k: real(*a, **k) * float("nan"), "NaN"),
    ],
    ids=["raises", "wrong values", "nan"],
)
def test_a_kernel_that_fails_or_disagrees_falls_back_once_with_one_warning(auto_on_gpu, monkeypatch, behaviour, reason):
    calls = counting(monkeypatch, "group_norm", behaviour)
    x, w = gn_inputs()
    want = reference.group_norm(x, 4, w, None, act="silu")
    for _ in range(3):
        torch.testing.assert_close(hw2kernels.group_norm(x, 4, w, None, act="silu", backend="auto"), want)
    assert len(calls) == 1  # tried once, then the reference serves the class
    assert len(auto_on_gpu) == 1 and "group_norm" in auto_on_gpu[0] and reason in auto_on_gpu[0]
    assert hw2kernels.verdicts()[0]["path"] == "torch"
    # another shape class gets its own check
    y = torch.randn(1, 64, 40, 40)
    hw2kernels.group_norm(y, 4, None, None, backend="auto")
    assert len(calls) == 2 and len(hw2kernels.verdicts()) == 2


def test_attention_falls_back_per_dtype_and_class(auto_on_gpu, monkeypatch):
    calls = counting(monkeypatch, "attention", lambda real, q, k, v, **kw: real(q, k, v, **kw).flip(-2))
    q = torch.randn(1, 2, 9, 16)
    want = reference.attention(q, q, q)
    torch.testing.assert_close(hw2kernels.attention(q, q, q, backend="auto"), want)
    assert "attention (float32, d16:q16:k16) fell back to PyTorch: the kernel disagreed" in auto_on_gpu[0]
    half = q.to(torch.bfloat16)
    hw2kernels.attention(half, half, half, backend="auto")
    assert len(calls) == 2 and len(auto_on_gpu) == 2


def test_forcing_triton_skips_the_check_and_keeps_failing_loudly(auto_on_gpu, monkeypatch):
    counting(monkeypatch, "group_norm", lambda real, *a, **k: (_ for _ in ()).throw(RuntimeError("no compile")))
    x, w = gn_inputs()
    with pytest.raises(RuntimeError, match="no compile"):
        hw2kernels.group_norm(x, 4, w, None, backend="triton")
    assert hw2kernels.verdicts() == [] and auto_on_gpu == []


def test_a_measured_choice_of_torch_never_runs_the_kernel(auto_on_gpu, monkeypatch):
    calls = counting(monkeypatch, "group_norm", lambda real, *a, **k: real(*a, **k))
    x, w = gn_inputs()
    cls = hw2kernels.group_norm_class(x, 4)
    monkeypatch.setattr(hw2kernels, "measured_choices", lambda: {f"group_norm|float32|{cls}": "torch"})
    hw2kernels.group_norm(x, 4, w, None, backend="auto")
    assert calls == [] and hw2kernels.preferred("group_norm", "float32", cls) == "torch"
    assert hw2kernels.preferred("group_norm", "bfloat16", cls) == "check"


def test_shape_classes_bucket_sizes_and_tell_layouts_apart():
    x = torch.randn(2, 64, 30, 30)
    assert hw2kernels.group_norm_class(x, 32) == "c/g2:hw1024:nchw"
    assert hw2kernels.group_norm_class(x.to(memory_format=torch.channels_last), 32) == "c/g2:hw1024:cl"
    q, k = torch.randn(1, 1, 4096, 40), torch.randn(1, 1, 77, 40)
    assert hw2kernels.attention_class(q, k) == "d40:q4096:k128"


def test_without_a_gpu_auto_is_the_reference_and_env_says_so(run_cli):
    r = run_cli("env", "--json")
    assert r.code == 0, r.err
    import json

    report = json.loads(r.out)
    assert report["auto: group_norm"].startswith("PyTorch reference") and "auto: attention" in report


def test_the_shipped_choices_table_is_valid_and_the_rule_is_stated():
    choices = hw2kernels.measured_choices()
    assert all(v in ("triton", "torch") for v in choices.values())
    assert "5 %" in hw2kernels.RULE and hw2kernels.TRITON_MARGIN == 1.05


def _gn64(x, num_groups, add=None):
    """GroupNorm of ``x + add`` in float64, written out: the judge of both paths below."""
    n, c = x.shape[:2]
    h = x.double() + (0 if add is None else add.double().reshape(n, c, *(1,) * (x.ndim - 2)))
    g = h.reshape(n, num_groups, -1)
    y = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-5)
    return y.reshape(h.shape)


@pytest.mark.parametrize(("dtype", "mean"), [(torch.float16, 30.0), (torch.float16, 100.0), (torch.bfloat16, 16.0)])
def test_a_16_bit_add_is_summed_in_fp32_so_the_check_passes_the_accurate_kernel(auto_on_gpu, dtype, mean):
    """The reference added the time embedding in 16 bits before normalising: 16 times the fused
    kernel's error at a group mean of 30 in fp16, and auto then threw the accurate kernel away."""
    g = torch.Generator().manual_seed(4)
    x = (mean + torch.randn(2, 32, 8, 8, generator=g)).to(dtype)
    add = torch.randn(2, 32, generator=g).to(dtype)
    exact = _gn64(x, 4, add)
    rounding = (exact - exact.to(dtype).double()).abs().max().item()  # the output's own rounding
    ref = reference.group_norm(x, 4, add=add)
    assert (ref.double() - exact).abs().max().item() <= 2 * rounding + 1e-3
    got = hw2kernels.group_norm(x, 4, add=add, backend="auto")
    assert auto_on_gpu == [] and [v["path"] for v in hw2kernels.verdicts()] == ["triton"]
    assert (got.double() - exact).abs().max().item() <= 4 * rounding + 1e-3


@pytest.mark.parametrize(
    "behaviour",
    [lambda real, *a, **k: torch.full_like(real(*a, **k), 12345.0), lambda real, *a, **k: real(*a, **k) * float("nan")],
    ids=["constant", "all nan"],
)
def test_a_non_finite_reference_does_not_let_a_wrong_kernel_through(auto_on_gpu, monkeypatch, behaviour):
    """One inf in the first call's input made the comparison NaN, and NaN > 0 is False: a kernel
    returning 12345 everywhere was accepted for the rest of the process."""
    counting(monkeypatch, "group_norm", behaviour)
    x, w = gn_inputs()
    x[0, 0, 0, 0] = float("inf")  # sample 0, group 0 turns NaN in the reference; the rest stays finite
    hw2kernels.group_norm(x, 4, w, None, backend="auto")
    assert [v["path"] for v in hw2kernels.verdicts()] == ["torch"] and len(auto_on_gpu) == 1
    assert hw2kernels.last_fallback_reason("group_norm").startswith("auto: the first call's check failed")


def test_a_non_finite_reference_leaves_the_verdict_to_a_later_call(auto_on_gpu, monkeypatch):
    calls = counting(monkeypatch, "group_norm", lambda real, *a, **k: real(*a, **k))
    x, w = gn_inputs()
    bad = x.clone()
    bad[0, 0, 0, 0] = float("inf")
    out = hw2kernels.group_norm(bad, 4, w, None, backend="auto")
    torch.testing.assert_close(out, reference.group_norm(bad, 4, w, None), equal_nan=True)
    assert hw2kernels.verdicts() == [] and "NaN or inf" in hw2kernels.last_fallback_reason("group_norm")
    hw2kernels.group_norm(x, 4, w, None, backend="auto")
    assert len(calls) == 2 and [v["path"] for v in hw2kernels.verdicts()] == ["triton"] and auto_on_gpu == []


def test_each_fused_variant_gets_its_own_check(auto_on_gpu, monkeypatch):
    """A plain call's verdict vouched for later calls with add/scale/shift/SiLU, which the GPU
    compiles as other kernels and which were never compared with the reference."""
    wrong_with_add = counting(
        monkeypatch, "group_norm", lambda real, *a, **k: real(*a, **k) + (0.5 if k.get("add") is not None else 0)
    )
    x, w = gn_inputs()
    add = torch.randn(2, 16)
    hw2kernels.group_norm(x, 4, w, None, act="silu", backend="auto")
    out = hw2kernels.group_norm(x, 4, w, None, add=add, act="silu", backend="auto")
    torch.testing.assert_close(out, reference.group_norm(x, 4, w, None, add=add, act="silu"))
    assert len(wrong_with_add) == 2
    paths = {v["shape_class"]: v["path"] for v in hw2kernels.verdicts()}
    cls = hw2kernels.group_norm_class(x, 4)
    assert paths == {f"{cls}+affine+silu": "triton", f"{cls}+affine+add+silu": "torch"}
    assert hw2kernels.group_norm_class(x[:, :, :, 1:], 4).endswith(":strided")


def test_after_a_failed_check_the_fallback_reason_says_so(auto_on_gpu, monkeypatch):
    counting(monkeypatch, "attention", lambda real, q, k, v, **kw: real(q, k, v, **kw) + 1)
    q = torch.randn(1, 2, 9, 16)
    hw2kernels.attention(q, q, q, backend="auto")
    hw2kernels.attention(q * 2, q, q, backend="auto")  # served by the reference after the failed check
    assert hw2kernels.last_fallback_reason("attention").startswith("auto: the first call's check failed: the kernel")
    cls = hw2kernels.attention_class(q, q)
    monkeypatch.setattr(hw2kernels, "measured_choices", lambda: {f"attention|bfloat16|{cls}": "torch"})
    half = q.to(torch.bfloat16)
    hw2kernels.attention(half, half, half, backend="auto")
    assert (
        hw2kernels.last_fallback_reason("attention") == "auto: the GPU benchmark measured PyTorch faster for this class"
    )


def test_more_batch_heads_than_a_cuda_grid_holds_fall_back_and_no_groups_is_an_error():
    q = torch.randn(65_536, 1, 2, 16)
    ok, reason = triton_ops.attention_supported(q, q, q)
    assert not ok and "B×H = 65,536 exceeds the 65,535" in reason
    assert triton_ops.attention_supported(q[:65_535], q[:65_535], q[:65_535])[0]
    x = torch.randn(1, 4, 3)
    for backend in ("torch", "auto", "triton"):
        with pytest.raises(ValueError, match="4 channels cannot be split into 0 groups"):
            hw2kernels.group_norm(x, 0, backend=backend)
