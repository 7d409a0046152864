"""`hw2 bench`: time the kernels and whole sampling loops, every path side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from hw2cli import ui
from hw2cli.plugins._options import under_output_root

app = typer.Typer(
    help="Benchmarks: fused kernels and sampling loops (eager, Triton, torch.compile).", no_args_is_help=True
)

DTYPE_HELP = "fp32, bf16 or fp16 \\[default: bf16 on CUDA, fp32 on CPU]."
Dtype = Literal["fp32", "bf16", "fp16"]


def _dtype(name: str | None, device):
    from hw2cli.runtime import torch_dtype

    return torch_dtype(name or ("bf16" if device.type == "cuda" else "fp32"))


def _show(report, out: Path, name: str, as_json: bool) -> None:
    from hw2cli.io.atomic import write_json

    path = write_json(out / f"{name}.json", report.to_dict())
    if as_json:
        ui.print_json(report.to_dict())
        return

    def fmt(value, spec):
        return "—" if value is None else format(value, spec)

    rows = [
        [
            r.case,
            r.path,
            fmt(r.ms, ".3f"),
            fmt(r.speedup, ".2f"),
            fmt(r.vs_best, ".2f"),
            fmt(r.gbps, ".0f"),
            fmt(r.pct_copy_bw, ".0f"),
            fmt(r.tflops, ".1f"),
            r.note,
        ]
        for r in report.rows
    ]
    ui.print_table(
        ["case", "path", "ms", "× eager", "× best PyTorch", "GB/s", "% copy BW", "TFLOP/s", "note"],
        rows,
        title=f"hw2 bench {report.kind} on {report.meta.get('device', report.device)}",
    )
    ui.result(f"wrote {path}")


@app.command()
def kernels(
    dtype: Dtype = typer.Option(None, help=DTYPE_HELP),
    repeats: int = typer.Option(20, min=1, max=10_000, help="Timed repeats per case (median)."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="Also time torch.compile of the eager op."),
    quick: bool = typer.Option(False, "--quick", help="One small case each (a smoke run)."),
    out: Path = typer.Option(None, help="Folder for the JSON result \\[default: the bench folder of OUTPUT_ROOT]."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON instead of a table."),
) -> None:
    """GroupNorm+SiLU (GB/s, % of copy bandwidth) and attention (TFLOP/s) next to PyTorch's best paths.

    On a GPU every case is timed with triton.testing.do_bench, which flushes the L2 cache before
    each run; the copy bandwidth that GroupNorm is compared with is measured the same way.

    Examples:
      hw2 bench kernels --quick --no-compile          # a smoke run, seconds on a CPU
      hw2 --device cuda bench kernels --dtype bf16
    """
    from hw2cli import runtime
    from hw2cli.io.atomic import check_output_folder
    from hw2cli.tasks.bench import bench_kernels

    out = under_output_root(out, "bench")
    check_output_folder(out, "results folder")  # before minutes of timing, not after
    device, _ = runtime.setup()
    report = bench_kernels(device, dtype=_dtype(dtype, device), repeats=repeats, use_compile=compile, quick=quick)
    _show(report, out, "kernels", as_json)


@app.command()
def sample(
    model: Literal["digit", "face", "sd"] = typer.Option(
        "digit", help="digit, face (official size, 256²) or sd (SD v1 UNet, 64² latents)."
    ),
    batch: int = typer.Option(None, min=1, max=100_000, help="Images per batch \\[default: digit 500, face 10, sd 2]."),
    steps: int = typer.Option(50, min=1, max=1000, help="DDIM steps."),
    dtype: Dtype = typer.Option(None, help=DTYPE_HELP),
    repeats: int = typer.Option(3, min=1, max=1000, help="Timed repeats (median)."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="Also time torch.compile of the network."),
    graph: bool = typer.Option(True, "--graph/--no-graph", help="Also time each step replayed from a CUDA graph."),
    side: int = typer.Option(256, min=32, max=1024, help="face: the image side (a multiple of 32)."),
    width: int = typer.Option(128, min=32, max=512, help="face: the UNet's base width (official: 128)."),
    checkpoint: str = typer.Option(None, help="Real weights (digit checkpoint or face UNet.pt); random otherwise."),
    out: Path = typer.Option(None, help="Folder for the JSON result \\[default: the bench folder of OUTPUT_ROOT]."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON instead of a table."),
) -> None:
    """A whole DDIM loop per path: eager, Triton kernels, torch.compile, CUDA graphs.

    Examples:
      hw2 bench sample --batch 50 --steps 6 --no-compile   # the embedded digit model on a CPU
      hw2 --device cuda bench sample --model face --dtype bf16
    """
    from hw2cli import runtime
    from hw2cli.errors import RunError, UsageError
    from hw2cli.io.atomic import check_output_folder
    from hw2cli.tasks.bench import bench_sample

    if model == "face" and side % 32:
        raise UsageError(f"--side is {side}; the face UNet needs a multiple of 32 (256 is the homework's).")
    if model == "face" and width % 32:
        raise UsageError(f"--width is {width}; the face UNet's width is a multiple of 32 (official: 128).")
    out = under_output_root(out, "bench")
    check_output_folder(out, "results folder")  # before minutes of timing, not after
    device, _ = runtime.setup()
    batch = batch or {"digit": 500, "face": 10, "sd": 2}.get(model, 1)
    report = bench_sample(
        model,
        device,
        dtype=_dtype(dtype, device),
        batch=batch,
        steps=steps,
        repeats=repeats,
        use_compile=compile,
        use_graph=graph,
        checkpoint=checkpoint,
        side=side,
        width=width,
    )
    eager = report.rows[0] if report.rows else None
    if eager is None or eager.ms is None:  # no result file: a run that measured nothing is no result
        raise RunError(f"the eager baseline was not measured ({eager.note if eager else 'no rows'}), so nothing is.")
    _show(report, out, f"sample_{model}", as_json)
