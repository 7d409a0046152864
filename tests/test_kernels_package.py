"""The kernels folder installs as ``hw2kernels`` and never as a top-level ``kernels``."""

from __future__ import annotations

import subprocess
import sys

import hw2kernels
import pytest
import torch


def test_not_importable_as_kernels():
    """The installed package exposes no top-level `kernels` (checked from a neutral working directory:
    `python -m pytest` run in the repository puts the source tree itself on sys.path)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util,sys; sys.exit(importlib.util.find_spec('kernels') is not None)",
        ],
        cwd="/",
        capture_output=True,
    )
    assert proc.returncode == 0


def test_transformers_does_not_see_a_kernels_package():
    code = (
        "from transformers.utils import import_utils as u; import sys; sys.exit(u._is_package_available('kernels')[0])"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True).returncode == 0


def _group_norm_f64(x, groups, weight, bias, eps, add, scale, shift, act):
    """An explicit formula in float64, independent of F.group_norm."""
    x = x.double()
    n, c = x.shape[:2]
    if add is not None:
        x = x + add.double().reshape(n, c, 1, 1)
    g = x.reshape(n, groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape_as(x)
    y = y * weight.double().reshape(1, c, 1, 1) + bias.double().reshape(1, c, 1, 1)
    if scale is not None:
        y = y * (1 + scale.double().reshape(n, c, 1, 1))
    if shift is not None:
        y = y + shift.double().reshape(n, c, 1, 1)
    return y * torch.sigmoid(y) if act == "silu" else y


@pytest.mark.parametrize("act", ["none", "silu"])
@pytest.mark.parametrize("epilogue", [False, True])
def test_reference_group_norm_matches_formula(act, epilogue):
    g = torch.Generator().manual_seed(1)
    n, c, h, w = 2, 96, 7, 7
    x = torch.randn(n, c, h, w, generator=g) * 3 + 1
    weight, bias = torch.randn(c, generator=g), torch.randn(c, generator=g)
    add = scale = shift = None
    if epilogue:
        add, scale, shift = (torch.randn(n, c, generator=g) for _ in range(3))
    y = hw2kernels.group_norm(x, 32, weight, bias, 1e-5, add=add, scale=scale, shift=shift, act=act, backend="torch")
    ref = _group_norm_f64(x, 32, weight, bias, 1e-5, add, scale, shift, act)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def test_reference_attention_matches_formula():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, n, 24, generator=g) for n in (10, 13, 13))
    out = hw2kernels.attention(q, k, v, scale=0.3, backend="torch")
    ref = torch.softmax(q.double() @ k.double().transpose(-1, -2) * 0.3, -1) @ v.double()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_backend_resolution(monkeypatch):
    assert hw2kernels.resolve_backend("torch", "cpu") == "torch"
    assert hw2kernels.resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="must be one of"):
        hw2kernels.resolve_backend("cuda", "cpu")
    with pytest.raises(ValueError, match="act must be"):
        hw2kernels.group_norm(torch.zeros(1, 4, 2, 2), 2, act="gelu", backend="torch")
