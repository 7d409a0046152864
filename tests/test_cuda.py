"""The kernels compiled on a real GPU, at the models' real shapes, against float64 references.

Marked ``cuda``; without a CUDA device (and with ``TRITON_INTERPRET=1``, which the CPU suite
sets) every test here is skipped with the reason, and ``.ci/run`` prints how many were skipped
and why. On a GPU: ``TRITON_INTERPRET=0 pytest -m cuda`` (``benchmarks/gpu_suite.sh`` does so).

Tolerances are per dtype, against a float64 computation from the same (rounded) inputs: fp32 is
IEEE (the attention kernel uses IEEE dot products unless TF32 is allowed), bf16 and fp16 are
bounded by their output rounding plus accumulation in fp32.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not CUDA, reason="needs CUDA: compiles the Triton kernels on a real GPU"),
    pytest.mark.skipif(CUDA and INTERPRETED, reason="TRITON_INTERPRET=1: run with TRITON_INTERPRET=0 to compile"),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GN_TOL = {"fp32": (1e-4, 1e-4), "bf16": (2e-2, 2e-2), "fp16": (4e-3, 4e-3)}
ATTN_TOL = {"fp32": (2e-4, 2e-4), "bf16": (2e-2, 2e-2), "fp16": (3e-3, 3e-3)}

# (name, N, C, H, W, groups): every GroupNorm shape class of the three UNets
GN_SHAPES = [
    ("digit 28²", 100, 16, 28, 28, 8),
    ("digit 14²", 100, 32, 14, 14, 8),
    ("digit 7²", 100, 64, 7, 7, 8),
    ("face 256²", 2, 128, 256, 256, 32),
    ("face 64²", 2, 256, 64, 64, 32),
    ("face 16²", 2, 512, 16, 16, 32),
    ("sd 64²", 2, 320, 64, 64, 32),
    ("sd 32²", 2, 640, 32, 32, 32),
    ("sd 8²", 2, 1280, 8, 8, 32),
]
EPILOGUES = ["none", "silu", "add+silu", "scale-shift+silu"]
# (name, B, H, Nq, Nk, D): head dims 32 to 512, self- and cross-attention
ATTN_SHAPES = [
    ("digit 7²", 100, 2, 49, 49, 32),
    ("sd self 64²", 1, 8, 4096, 4096, 40),
    ("sd cross 64²", 2, 8, 4096, 77, 40),
    ("sd self 32²", 2, 8, 1024, 1024, 80),
    ("sd cross 32²", 2, 8, 1024, 77, 80),
    ("sd self 16²", 2, 8, 256, 256, 160),
    ("sd cross 8²", 2, 8, 64, 77, 160),
    ("d64", 2, 4, 512, 512, 64),
    ("d128", 2, 4, 512, 512, 128),
    ("face 16²", 2, 1, 256, 256, 512),
    ("face 32²", 2, 1, 1024, 1024, 512),
]


def _close(got: torch.Tensor, want64: torch.Tensor, tol: tuple[float, float], what: str) -> None:
    atol, rtol = tol
    err = (got.double() - want64).abs()
    bound = atol + rtol * want64.abs()
    worst = (err - bound).max().item()
    assert worst <= 0, f"{what}: max error {err.max().item():.3g} exceeds the {got.dtype} tolerance"


def _gn_inputs(n, c, h, w, dtype, epilogue, layout, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n, c, h, w, device="cuda", generator=g).to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    weight = (1 + 0.1 * torch.randn(c, device="cuda", generator=g)).to(dtype)
    bias = (0.1 * torch.randn(c, device="cuda", generator=g)).to(dtype)
    extra = {}
    if epilogue == "add+silu":
        extra["add"] = torch.randn(n, c, device="cuda", generator=g).to(dtype)
    if epilogue == "scale-shift+silu":
        emb = torch.randn(n, 2 * c, device="cuda", generator=g).to(dtype)
        extra["scale"], extra["shift"] = emb.chunk(2, dim=1)  # strided views, as the models pass them
    return x, weight, bias, extra, "none" if epilogue == "none" else "silu"


GN_CASES = [(s, e, d, lay) for s in GN_SHAPES for d in DTYPES for lay in ("nchw", "channels_last") for e in ("silu",)]
GN_CASES += [(s, e, d, "nchw") for s in (GN_SHAPES[0], GN_SHAPES[3], GN_SHAPES[6]) for e in EPILOGUES for d in DTYPES
             if e != "silu"]  # fmt: skip


@pytest.mark.parametrize(("shape", "epilogue", "dtype", "layout"), GN_CASES,
                         ids=[f"{s[0]}-{e}-{d}-{lay}" for s, e, d, lay in GN_CASES])  # fmt: skip
def test_group_norm_compiled_at_model_shapes(shape, epilogue, dtype, layout):
    import hw2kernels
    from hw2kernels import reference

    _, n, c, h, w, groups = shape
    x, weight, bias, extra, act = _gn_inputs(n, c, h, w, DTYPES[dtype], epilogue, layout)
    got = hw2kernels.group_norm(x, groups, weight, bias, act=act, backend="triton", **extra)
    assert hw2kernels.last_fallback_reason("group_norm") is None
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert got.is_contiguous(memory_format=memory_format)
    want = reference.group_norm(x.double(), groups, weight.double(), bias.double(), act=act,
                                **{k: v.double() for k, v in extra.items()})  # fmt: skip
    _close(got, want, GN_TOL[dtype], f"group_norm {shape[0]} {epilogue} {dtype} {layout}")


ATTN_CASES = [(s, d) for s in ATTN_SHAPES for d in DTYPES]


@pytest.mark.parametrize(("shape", "dtype"), ATTN_CASES, ids=[f"{s[0]}-{d}" for s, d in ATTN_CASES])
def test_attention_compiled_for_head_dims_32_to_512(shape, dtype):
    import hw2kernels

    _, b, h, nq, nk, d = shape
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(b, h, n, d, device="cuda", generator=g).to(DTYPES[dtype]) for n in (nq, nk, nk))
    got = hw2kernels.attention(q, k, v, backend="triton")
    assert hw2kernels.last_fallback_reason("attention") is None
    q64, k64, v64 = q.double(), k.double(), v.double()
    want = torch.softmax(q64 @ k64.transpose(-1, -2) / d**0.5, dim=-1) @ v64
    _close(got, want, ATTN_TOL[dtype], f"attention {shape[0]} {dtype}")


def test_auto_checks_each_class_once_and_agrees_on_this_gpu():
    import hw2kernels

    hw2kernels.reset_verdicts()
    messages: list[str] = []
    hw2kernels.set_warning_handler(messages.append)
    try:
        verdicts = hw2kernels.self_check("cuda")
    finally:
        hw2kernels.set_warning_handler(None)
    assert {v["op"] for v in verdicts} == {"group_norm", "attention"}
    assert all(v["path"] == "triton" for v in verdicts), verdicts
    assert messages == []


# --------------------------------------------------------------------------- whole models


def _digit():
    from hw2cli.diffusion.wrappers import build_network
    from hw2cli.io.checkpoints import DiffusionConfig

    torch.manual_seed(0)
    net = build_network(DiffusionConfig()).cuda().eval()
    x = torch.randn(64, 3, 28, 28, device="cuda")
    t = torch.randint(0, 1000, (64,), device="cuda")
    c = torch.randint(0, 20, (64,), device="cuda")
    return (lambda x, t, c: net(x, t, c)), (x, t, c)


def _face():
    from hw2cli.models import FaceUNet

    torch.manual_seed(0)
    net = FaceUNet().cuda().eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 256, 256, device="cuda").to(memory_format=torch.channels_last)
    t = torch.full((2,), 981, device="cuda")
    return (lambda x, t, c: net(x, t)), (x, t, None)


def _sd():
    from diffusers import UNet2DConditionModel

    from hw2cli.pretrained.sd import shipped_config_dir
    from hw2cli.pretrained.sd_accel import accelerate_unet

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(shipped_config_dir() / "unet"))
    unet = unet.cuda().eval()
    accelerate_unet(unet)
    x = torch.randn(1, 4, 64, 64, device="cuda")
    t = torch.tensor([500], device="cuda")
    context = torch.randn(1, 77, 768, device="cuda")
    return (lambda x, t, c: unet(x, t, encoder_hidden_states=c).sample), (x, t, context)


MODELS = {"digit": _digit, "face": _face, "sd": _sd}
MODEL_TOL = {"fp32": (2e-3, 2e-3), "bf16": (8e-2, 8e-2)}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model", list(MODELS))
def test_models_are_equal_through_eager_triton_and_a_cuda_graph(model, dtype):
    import hw2kernels

    from hw2cli.diffusion.wrappers import GraphedEps

    fn, (x, t, c) = MODELS[model]()
    results = {}
    with torch.inference_mode(), torch.autocast("cuda", dtype=DTYPES[dtype], enabled=dtype != "fp32"):
        for path in ("torch", "triton"):
            hw2kernels.set_default_backend(path)
            results[path] = fn(x, t, c).float()
        graphed = GraphedEps(fn)
        results["graph"] = graphed(x, t, c).float()  # captured with the Triton kernels
        again = graphed(x, t, c).float()
    hw2kernels.set_default_backend("auto")
    assert torch.equal(results["graph"], again)  # a replay is bit-identical
    reference = results["torch"].double()
    for path in ("triton", "graph"):
        _close(results[path], reference, MODEL_TOL[dtype], f"{model} {path} vs eager {dtype}")


def test_ddim_sample_with_a_cuda_graph_writes_the_same_bytes(tmp_path):
    from hw2cli.models import FaceUNet

    torch.manual_seed(0)
    torch.save(FaceUNet().state_dict(), tmp_path / "UNet.pt")
    noise = tmp_path / "noise"
    noise.mkdir()
    for i in range(2):
        torch.save(torch.randn(1, 3, 256, 256), noise / f"{i:02d}.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HW2_")} | {"TRITON_INTERPRET": "0"}
    outs = {}
    for name, extra in (("plain", []), ("graph", ["--cuda-graph"])):
        outs[name] = tmp_path / name
        cmd = [sys.executable, "-m", "hw2cli", "--device", "cuda", "ddim", "sample", str(noise), str(outs[name]),
               "--unet", str(tmp_path / "UNet.pt"), "--steps", "10", *extra]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    for f in ("00.png", "01.png"):
        assert (outs["plain"] / f).read_bytes() == (outs["graph"] / f).read_bytes(), f
