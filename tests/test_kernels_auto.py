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
