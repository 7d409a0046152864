"""Timing for `hw2 bench` and the scripts in benchmarks/: every path side by side in one run.

Paths: PyTorch eager, our Triton kernels (``hw2kernels`` backend ``triton``) and ``torch.compile``
of the eager function. Median of repeated runs after warm-up; CUDA events on a GPU,
``perf_counter`` elsewhere. A path that cannot run here is reported with the reason, never with a
number.
"""

from __future__ import annotations

import datetime as _dt
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import hw2kernels
import torch
import torch.nn.functional as F


@dataclass
class Row:
    case: str
    path: str
    ms: float | None = None
    speedup: float | None = None
    gbps: float | None = None
    pct_copy_bw: float | None = None
    tflops: float | None = None
    note: str = ""


@dataclass
class BenchReport:
    kind: str
    device: str
    rows: list[Row] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "device": self.device, "meta": self.meta, "rows": [asdict(r) for r in self.rows]}


def environment(device: torch.device) -> dict[str, Any]:
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": version("triton"),
        "diffusers": version("diffusers"),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


def median_ms(fn: Callable[[], Any], device: torch.device, *, repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()``; CUDA events on a GPU (no host sync inside the timed region)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int = 256 * 2**20) -> float:
    """The device's measured copy bandwidth in GB/s (read + write), the roofline for GroupNorm."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, repeats=10, warmup=2)
    return 2 * nbytes / (ms / 1000) / 1e9


def _paths(
    eager: Callable[[], Any],
    triton: Callable[[], Any],
    compiled_factory: Callable[[], Callable[[], Any]],
    device: torch.device,
    use_compile: bool,
) -> list[tuple[str, Callable[[], Any] | None, str]]:
    ok, reason = hw2kernels.triton_status()
    interpreted = ok and device.type != "cuda"
    paths: list[tuple[str, Callable[[], Any] | None, str]] = [("eager", eager, "")]
    if ok and not interpreted:
        paths.append(("triton", triton, ""))
    else:
        paths.append(("triton", None, "not measured: " + (reason if not ok else "interpreter only, not a timing")))
    if use_compile:
        try:
            paths.append(("torch.compile", compiled_factory(), ""))
        except Exception as exc:  # no compiler toolchain, unsupported backend
            paths.append(("torch.compile", None, f"not measured: {type(exc).__name__}"))
    return paths


GN_SHAPES_GPU = [(2, 512, 32, 32), (8, 256, 64, 64), (10, 128, 256, 256)]
GN_SHAPES_CPU = [(2, 512, 32, 32), (8, 256, 64, 64)]
# (name, B, H, Nq, Nk, D): SD v1 self- and cross-attention at 512², the face UNet at 16², the digit UNet at 7²
ATTN_SHAPES = [
    ("sd self 64²", 2, 8, 4096, 4096, 40),
    ("sd self 32²", 2, 8, 1024, 1024, 80),
    ("sd self 16²", 2, 8, 256, 256, 160),
    ("sd cross 64²", 2, 8, 4096, 77, 40),
    ("face 16²", 10, 1, 256, 256, 512),
    ("digit 7²", 500, 2, 49, 49, 32),
]


def bench_kernels(
    device: torch.device, *, dtype: torch.dtype, repeats: int = 20, use_compile: bool = True, quick: bool = False
) -> BenchReport:
    """GroupNorm+SiLU (GB/s, % of copy bandwidth) and attention (TFLOP/s), each path side by side."""
    report = BenchReport(
        "kernels", str(device), meta={**environment(device), "dtype": str(dtype).removeprefix("torch.")}
    )
    bw = copy_bandwidth(device, 64 * 2**20 if quick else 256 * 2**20)
    report.meta["copy_bandwidth_gbps"] = bw
    shapes = GN_SHAPES_GPU if device.type == "cuda" else GN_SHAPES_CPU
    if quick:
        shapes = shapes[:1]
    for shape in shapes:
        x = torch.randn(shape, device=device, dtype=dtype)
        w = torch.randn(shape[1], device=device, dtype=dtype)
        b = torch.randn(shape[1], device=device, dtype=dtype)
        case = "groupnorm+silu " + "×".join(map(str, shape))

        def eager(x=x, w=w, b=b):
            return F.silu(F.group_norm(x, 32, w, b, 1e-5))

        def triton(x=x, w=w, b=b):
            return hw2kernels.group_norm(x, 32, w, b, 1e-5, act="silu", backend="triton")

        moved = 2 * x.numel() * x.element_size()
        base = None
        for name, fn, note in _paths(eager, triton, lambda eager=eager: torch.compile(eager), device, use_compile):
            row = Row(case, name, note=note)
            if fn is not None:
                row.ms = median_ms(fn, device, repeats=repeats)
                base = base or row.ms
                row.speedup = base / row.ms
                row.gbps = moved / (row.ms / 1000) / 1e9
                row.pct_copy_bw = 100 * row.gbps / bw
            report.rows.append(row)
    cases = ATTN_SHAPES[-2:] if device.type != "cuda" else ATTN_SHAPES
    if quick:
        cases = cases[-1:]
    for name, b_, h, nq, nk, d in cases:
        q = torch.randn(b_, h, nq, d, device=device, dtype=dtype)
        k = torch.randn(b_, h, nk, d, device=device, dtype=dtype)
        v = torch.randn(b_, h, nk, d, device=device, dtype=dtype)
        flops = 4 * b_ * h * nq * nk * d

        def sdpa(q=q, k=k, v=v):
            return F.scaled_dot_product_attention(q, k, v)

        def triton(q=q, k=k, v=v):
            return hw2kernels.attention(q, k, v, backend="triton")

        base = None
        for path, fn, note in _paths(sdpa, triton, lambda sdpa=sdpa: torch.compile(sdpa), device, use_compile):
            row = Row(f"attention {name} ({b_}×{h}×{nq}×{nk}×{d})", "sdpa" if path == "eager" else path, note=note)
            if fn is not None:
                row.ms = median_ms(fn, device, repeats=repeats)
                base = base or row.ms
                row.speedup = base / row.ms
                row.tflops = flops / (row.ms / 1000) / 1e12
                fallback = getattr(hw2kernels, "last_fallback_reason", None)
                if path == "triton" and callable(fallback) and fallback():
                    row.note = f"fell back to SDPA: {fallback()}"
            report.rows.append(row)
    return report


def bench_sample(
    model: str,
    device: torch.device,
    *,
    dtype: torch.dtype,
    batch: int,
    steps: int,
    repeats: int = 3,
    use_compile: bool = True,
    checkpoint: str | None = None,
) -> BenchReport:
    """A whole DDIM loop of ``steps`` steps for ``batch`` images, per path. Weights are random
    unless a checkpoint is given (time does not depend on them)."""
    from hw2cli.diffusion import NoiseSchedule, make_timesteps, sample_ddim

    net, shape, cond = _bench_model(model, device, batch, checkpoint)
    schedule = NoiseSchedule.linear()
    timesteps = make_timesteps(schedule, steps, "leading", offset=1)
    x0 = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    report = BenchReport(
        f"sample:{model}",
        str(device),
        meta={**environment(device), "batch": batch, "steps": steps, "dtype": str(dtype).removeprefix("torch.")},
    )

    def loop(fn: Callable[..., torch.Tensor], backend: str) -> Callable[[], Any]:
        def run() -> Any:
            hw2kernels.set_default_backend(backend)
            try:
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    return sample_ddim(lambda x, t, c: fn(x, t, c).float(), x0.clone(), schedule, timesteps, cond=cond)
            finally:
                hw2kernels.set_default_backend("auto")

        return run

    base = None
    for name, fn, note in _paths(
        loop(net, "torch"), loop(net, "triton"), lambda: loop(torch.compile(net), "torch"), device, use_compile
    ):
        row = Row(f"{model} ×{batch}, {steps} DDIM steps", name, note=note)
        if fn is not None:
            row.ms = median_ms(fn, device, repeats=repeats, warmup=1)
            base = base or row.ms
            row.speedup = base / row.ms
        report.rows.append(row)
    return report


def _bench_model(model: str, device: torch.device, batch: int, checkpoint: str | None) -> tuple[Any, tuple, Any]:
    from hw2cli.errors import UsageError

    if model == "digit":
        from hw2cli.tasks.ddpm import load_model

        m = load_model(checkpoint, device)
        cond = torch.zeros(batch, dtype=torch.long, device=device)
        return m.net, (3, 28, 28), cond
    if model == "face":
        from hw2cli.models import FaceUNet
        from hw2cli.tasks.ddim import load_face_unet

        net = load_face_unet(checkpoint, device) if checkpoint else FaceUNet().to(device).eval()
        return (lambda x, t, c: net(x, t)), (3, 256, 256), None
    if model == "sd":
        from diffusers import UNet2DConditionModel

        from hw2cli.pretrained.sd import shipped_config_dir

        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(shipped_config_dir() / "unet"))
        unet = unet.to(device).eval()
        from hw2cli.models.sd_accel import accelerate_unet

        accelerate_unet(unet)
        context = torch.randn(batch, 77, 768, device=device)
        return (lambda x, t, c: unet(x, t, encoder_hidden_states=context).sample), (4, 64, 64), None
    raise UsageError(f"the benchmark model {model!r} is not known; expected digit, face or sd.")
