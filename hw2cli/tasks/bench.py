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
    vs_best: float | None = None  # speed-up over the fastest PyTorch path of the same case
    op: str = ""  # kernels: the hw2kernels op and shape class the case is measured for (what auto looks up)
    shape_class: str = ""


@dataclass
class BenchReport:
    kind: str
    device: str
    rows: list[Row] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "device": self.device, "meta": self.meta, "rows": [asdict(r) for r in self.rows]}


def environment(device: torch.device) -> dict[str, Any]:
    """Where a benchmark ran: the date, the device, the thread count and :func:`hw2cli.runtime.versions`."""
    from hw2cli.runtime import versions

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        **versions(),
    }


def run_times_ms(
    fn: Callable[[], Any], device: torch.device | None = None, *, repeats: int = 20, warmup: int = 3
) -> list[float]:
    """hw2's one timer: milliseconds of each of ``repeats`` runs of ``fn()`` after ``warmup`` runs;
    CUDA events on a GPU (no host sync inside the timed region), ``perf_counter`` for a CPU device
    or ``None`` (a whole command, a subprocess)."""
    for _ in range(warmup):
        fn()
    times = []
    if device is not None and device.type == "cuda":
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
    return times


def median_ms(fn: Callable[[], Any], device: torch.device, *, repeats: int = 20, warmup: int = 3) -> float:
    """Median of :func:`run_times_ms`: for whole loops (seconds each)."""
    return statistics.median(run_times_ms(fn, device, repeats=repeats, warmup=warmup))


def kernel_ms(fn: Callable[[], Any], device: torch.device, *, repeats: int = 20) -> float:
    """Median milliseconds of one kernel-sized call. On a GPU: ``triton.testing.do_bench``, which
    flushes the L2 cache before every timed run (so a tensor that fits in L2 is still read from
    memory) and repeats for ``repeats × 5`` ms; elsewhere :func:`median_ms`."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=max(25, 5 * repeats), return_mode="median"))
    return median_ms(fn, device, repeats=repeats)


def copy_bandwidth(device: torch.device, nbytes: int = 512 * 2**20) -> float:
    """The device's measured copy bandwidth in GB/s (read + write), timed like the kernels
    (L2 flushed): the roofline GroupNorm's GB/s is set against."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = kernel_ms(lambda: dst.copy_(src), device, repeats=10)
    return 2 * nbytes / (ms / 1000) / 1e9


def _triton_path(device: torch.device) -> str:
    """Empty when the compiled Triton kernels can be timed here, else why not."""
    ok, reason = hw2kernels.triton_status()
    if not ok:
        return "not measured: " + reason
    if device.type != "cuda":
        return "not measured: interpreter only, not a timing"
    return ""


def _compiled(fn: Callable[[], Any]) -> tuple[Callable[[], Any] | None, str]:
    try:
        compiled = torch.compile(fn)
        compiled()  # compile now, so a missing toolchain is a note and not a crash mid-table
        return compiled, ""
    except Exception as exc:  # no compiler toolchain, unsupported backend
        return None, f"not measured: torch.compile failed ({type(exc).__name__})"


def _sdpa_backends() -> list[tuple[str, Any]]:
    try:
        from torch.nn.attention import SDPBackend
    except ImportError:  # older torch
        return []
    return [
        ("sdpa:flash", SDPBackend.FLASH_ATTENTION),
        ("sdpa:efficient", SDPBackend.EFFICIENT_ATTENTION),
        ("sdpa:cudnn", SDPBackend.CUDNN_ATTENTION),
        ("sdpa:math", SDPBackend.MATH),
    ]


def _with_sdpa_backend(backend: Any, fn: Callable[[], Any]) -> Callable[[], Any]:
    from torch.nn.attention import sdpa_kernel

    def run() -> Any:
        with sdpa_kernel([backend]):
            return fn()

    return run


def _time_rows(
    case: str,
    paths: list[tuple[str, Callable[[], Any] | None, str]],
    device: torch.device,
    repeats: int,
    *,
    pytorch: set[str],
    work: Callable[[float], dict[str, float]],
) -> list[Row]:
    """Time every path; ``speedup`` is against the first (eager), ``vs_best`` against the fastest
    of the ``pytorch`` paths, ``work(ms)`` gives GB/s or TFLOP/s."""
    rows = []
    for name, fn, note in paths:
        row = Row(case, name, note=note)
        if fn is not None:
            try:
                row.ms = kernel_ms(fn, device, repeats=repeats)
            except Exception as exc:  # e.g. an SDPA backend that does not serve this input
                row.note = f"not measured: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
            else:
                for key, value in work(row.ms).items():
                    setattr(row, key, value)
        rows.append(row)
    eager = rows[0].ms
    best = min((r.ms for r in rows if r.path in pytorch and r.ms is not None), default=None)
    for row in rows:
        if row.ms is not None:
            row.speedup = eager / row.ms if eager else None
            row.vs_best = best / row.ms if best else None
    return rows


# GroupNorm shapes on a GPU are large enough to miss an H100's 50 MB L2 even in bf16 (except the
# 8×256×64² target shape, which do_bench's flush still sends to memory)
GN_SHAPES_GPU = [(8, 256, 64, 64), (10, 128, 256, 256), (32, 256, 128, 128)]
GN_SHAPES_CPU = [(2, 512, 32, 32), (8, 256, 64, 64)]
# (name, B, H, Nq, Nk, D): SD v1 self- and cross-attention at 512², the face UNet at 16² and 32², the digit UNet
ATTN_SHAPES = [
    ("sd self 64²", 2, 8, 4096, 4096, 40),
    ("sd self 32²", 2, 8, 1024, 1024, 80),
    ("sd self 16²", 2, 8, 256, 256, 160),
    ("sd cross 64²", 2, 8, 4096, 77, 40),
    ("face 16²", 10, 1, 256, 256, 512),
    ("face 32²", 10, 1, 1024, 1024, 512),
    ("digit 7²", 500, 2, 49, 49, 32),
]


def bench_kernels(
    device: torch.device,
    *,
    dtype: torch.dtype,
    repeats: int = 20,
    use_compile: bool = True,
    quick: bool = False,
    shapes: dict[str, list[Any]] | None = None,
) -> BenchReport:
    """GroupNorm+SiLU (GB/s, % of copy bandwidth) and attention (TFLOP/s): our Triton kernels next
    to PyTorch's best (eager GN+SiLU or ``torch.compile``; SDPA's flash / efficient / cuDNN / math
    backends), all timed with the L2 flushed between runs. ``shapes`` overrides the cases."""
    report = BenchReport(
        "kernels", str(device), meta={**environment(device), "dtype": str(dtype).removeprefix("torch.")}
    )
    bw = copy_bandwidth(device, 64 * 2**20 if quick or device.type != "cuda" else 512 * 2**20)
    report.meta["copy_bandwidth_gbps"] = bw
    report.meta["timing"] = "triton.testing.do_bench, L2 flushed" if device.type == "cuda" else "perf_counter"
    gn_shapes = (shapes or {}).get("group_norm") or (GN_SHAPES_GPU if device.type == "cuda" else GN_SHAPES_CPU)
    if quick:
        gn_shapes = gn_shapes[:1]
    triton_note = _triton_path(device)
    for shape in gn_shapes:
        x = torch.randn(shape, device=device, dtype=dtype)
        w = torch.randn(shape[1], device=device, dtype=dtype)
        b = torch.randn(shape[1], device=device, dtype=dtype)

        def eager(x=x, w=w, b=b):
            return F.silu(F.group_norm(x, 32, w, b, 1e-5))

        def fused(x=x, w=w, b=b):
            return hw2kernels.group_norm(x, 32, w, b, 1e-5, act="silu", backend="triton")

        paths: list[tuple[str, Callable[[], Any] | None, str]] = [("eager", eager, "")]
        if use_compile:
            paths.append(("torch.compile", *_compiled(eager)))
        paths.append(("triton", None if triton_note else fused, triton_note))
        moved = 2 * x.numel() * x.element_size()

        def gbps(ms: float, moved: int = moved) -> dict[str, float]:
            rate = moved / (ms / 1000) / 1e9
            return {"gbps": rate, "pct_copy_bw": 100 * rate / bw}

        case = "groupnorm+silu " + "×".join(map(str, shape))
        rows = _time_rows(case, paths, device, repeats, pytorch={"eager", "torch.compile"}, work=gbps)
        for row in rows:
            row.op, row.shape_class = "group_norm", hw2kernels.group_norm_class(x, 32)
        report.rows += rows
    cases = (shapes or {}).get("attention") or (ATTN_SHAPES if device.type == "cuda" else ATTN_SHAPES[-3:-2])
    if quick:
        cases = cases[-1:]
    for name, b_, h, nq, nk, d in cases:
        q = torch.randn(b_, h, nq, d, device=device, dtype=dtype)
        k = torch.randn(b_, h, nk, d, device=device, dtype=dtype)
        v = torch.randn(b_, h, nk, d, device=device, dtype=dtype)

        def sdpa(q=q, k=k, v=v):
            return F.scaled_dot_product_attention(q, k, v)

        def fused(q=q, k=k, v=v):
            return hw2kernels.attention(q, k, v, backend="triton")

        paths = [("sdpa", sdpa, "")]
        if device.type == "cuda":
            paths += [(label, _with_sdpa_backend(backend, sdpa), "") for label, backend in _sdpa_backends()]
        if use_compile:
            paths.append(("torch.compile", *_compiled(sdpa)))
        paths.append(("triton", None if triton_note else fused, triton_note))

        def tflops(ms: float, flops: int = 4 * b_ * h * nq * nk * d) -> dict[str, float]:
            return {"tflops": flops / (ms / 1000) / 1e12}

        pytorch = {p[0] for p in paths if p[0] != "triton"}
        rows = _time_rows(f"attention {name} ({b_}×{h}×{nq}×{nk}×{d})", paths, device, repeats, pytorch=pytorch,
                          work=tflops)  # fmt: skip
        for row in rows:
            row.op, row.shape_class = "attention", hw2kernels.attention_class(q, k)
            if row.path == "triton" and row.ms is not None and hw2kernels.last_fallback_reason():
                row.note = f"fell back to SDPA: {hw2kernels.last_fallback_reason()}"
        report.rows += rows
    report.meta["choices"] = kernel_choices(report.rows, report.meta["dtype"])
    return report


def kernel_choices(rows: list[Row], dtype: str) -> dict[str, str]:
    """``hw2kernels.RULE`` applied to measured rows: ``{"op|dtype|class": "triton" | "torch"}``, the
    table ``auto`` reads (``kernels/choices.json``). ``triton`` where the Triton row ran itself (no
    fallback) at least ``TRITON_MARGIN`` times as fast as the fastest PyTorch path of its case;
    ``torch`` where it was measured slower; no entry where Triton was not measured (auto keeps
    its first-call check). Several cases in one class: every one must pick Triton."""
    picked: dict[str, str] = {}
    for row in rows:
        if row.path != "triton" or not row.op or row.ms is None or row.vs_best is None:
            continue
        key = f"{row.op}|{dtype}|{row.shape_class}"
        fast = row.vs_best >= hw2kernels.TRITON_MARGIN and not row.note.startswith("fell back")
        picked[key] = "triton" if fast and picked.get(key, "triton") == "triton" else "torch"
    return picked


def bench_sample(
    model: str,
    device: torch.device,
    *,
    dtype: torch.dtype,
    batch: int,
    steps: int,
    repeats: int = 3,
    use_compile: bool = True,
    use_graph: bool = True,
    checkpoint: str | None = None,
    side: int = 256,
    width: int = 128,
) -> BenchReport:
    """A whole DDIM loop of ``steps`` steps for ``batch`` images, per path: eager, the Triton
    kernels, ``torch.compile``, and (CUDA) each replayed from a CUDA graph. Weights are random
    unless a checkpoint is given (time does not depend on them)."""
    from hw2cli.diffusion import NoiseSchedule, make_timesteps, sample_ddim

    net, shape, cond = _bench_model(model, device, batch, checkpoint, side=side, width=width)
    schedule = NoiseSchedule.linear()
    timesteps = make_timesteps(schedule, steps, "leading", offset=1)
    x0 = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    report = BenchReport(
        f"sample:{model}",
        str(device),
        meta={**environment(device), "batch": batch, "steps": steps, "dtype": str(dtype).removeprefix("torch.")},
    )

    def eps_of(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def eps(x: torch.Tensor, t: torch.Tensor, c: Any) -> torch.Tensor:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                return fn(x, t, c).float()

        return eps

    def loop(eps: Callable[..., torch.Tensor], backend: str) -> Callable[[], Any]:
        def run() -> Any:
            hw2kernels.set_default_backend(backend)
            try:
                with torch.inference_mode():
                    return sample_ddim(eps, x0.clone(), schedule, timesteps, cond=cond)
            finally:
                hw2kernels.set_default_backend("auto")

        return run

    triton_note = _triton_path(device)
    paths: list[tuple[str, Callable[[], Any] | None, str]] = [("eager", loop(eps_of(net), "torch"), "")]
    paths.append(("triton", None if triton_note else loop(eps_of(net), "triton"), triton_note))
    if use_compile:
        try:
            paths.append(("torch.compile", loop(eps_of(torch.compile(net)), "torch"), ""))
        except Exception as exc:
            paths.append(("torch.compile", None, f"not measured: {type(exc).__name__}"))
    if use_graph:
        if device.type != "cuda":
            paths.append(("cuda graph", None, "not measured: needs CUDA"))
        else:
            from hw2cli.diffusion.wrappers import GraphedEps

            paths.append(("cuda graph", loop(GraphedEps(eps_of(net)), "torch"), ""))
            if not triton_note:
                paths.append(("triton + cuda graph", loop(GraphedEps(eps_of(net)), "triton"), ""))
    for name, fn, note in paths:
        row = Row(f"{model} ×{batch}, {steps} DDIM steps", name, note=note)
        if fn is not None:
            try:
                row.ms = median_ms(fn, device, repeats=repeats, warmup=1)
            except Exception as exc:
                row.note = f"not measured: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
        report.rows.append(row)
    eager = report.rows[0].ms
    for row in report.rows:
        if row.ms is not None and eager:
            row.speedup = eager / row.ms
    return report


DIGIT_GUIDANCE = 2.0  # the weight hw2 ddpm samples at by default


class _AtGuidance(torch.nn.Module):
    """A guidance-distilled student called as sampling calls it: one evaluation at weight ``w``."""

    def __init__(self, net: torch.nn.Module, w: float) -> None:
        super().__init__()
        self.net, self.w = net, w

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        return self.net(x, t, cond, torch.full((x.shape[0],), self.w, device=x.device))


def _bench_model(
    model: str, device: torch.device, batch: int, checkpoint: str | None, *, side: int = 256, width: int = 128
) -> tuple[Any, tuple, Any]:
    from hw2cli.errors import UsageError

    if model == "digit":
        from hw2cli.io.checkpoints import load_model

        m = load_model(checkpoint, device)
        cond = torch.zeros(batch, dtype=torch.long, device=device)
        net = _AtGuidance(m.net, DIGIT_GUIDANCE) if getattr(m.net, "guidance_distilled", False) else m.net
        return net, (3, 28, 28), cond
    if model == "face":
        from hw2cli.io.checkpoints import load_face_unet
        from hw2cli.models import FaceUNet

        net = load_face_unet(checkpoint, device) if checkpoint else FaceUNet(width=width).to(device).eval()
        if device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        return (lambda x, t, c: net(x, t)), (3, side, side), None
    if model == "sd":
        from diffusers import UNet2DConditionModel

        from hw2cli.pretrained.sd import shipped_config_dir

        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(shipped_config_dir() / "unet"))
        unet = unet.to(device).eval()
        from hw2cli.pretrained.sd_accel import accelerate_unet

        accelerate_unet(unet)
        context = torch.randn(batch, 77, 768, device=device)
        return (lambda x, t, c: unet(x, t, encoder_hidden_states=context).sample), (4, 64, 64), None
    raise UsageError(f"the benchmark model {model!r} is not known; expected digit, face or sd.")
