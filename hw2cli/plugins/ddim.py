"""`hw2 ddim`: P2, DDIM on the homework's face UNet: the graded generation, eta grid, interpolation, MSE."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import typer

from hw2cli import ui
from hw2cli.plugins._options import (
    SETTING,
    float_list,
    keep_finished,
    number,
    resolve_seed,
    rich_safe,
    under_output_root,
)
from hw2cli.plugins._options import seed as seed_option

app = typer.Typer(
    help="P2: DDIM with eta on the face UNet: graded generation, eta grid, slerp/lerp, MSE.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

UNET_HELP = "The homework's UNet.pt. Without it: the embedded digit model (--digit, --dataset)."
FIGURE_UNET_HELP = "The homework's UNet.pt. Without it: the embedded digit model (seeded noise, --digit)."


def _options(steps: int, eta: float, alpha_prev: str, final_alpha: str, clip_x0: bool | None):
    from hw2cli.tasks.ddim import DDIMOptions

    opts = DDIMOptions(steps=steps, eta=eta, alpha_prev=alpha_prev, final_alpha=final_alpha, clip_x0=clip_x0)
    opts.validate()
    return opts


@contextlib.contextmanager
def _face_noise_hint() -> Iterator[None]:
    """The core says the noise does not fit the digit model; the option that fixes it is ours to name."""
    from hw2cli.errors import UsageError
    from hw2cli.tasks.ddim import NoiseDoesNotFit

    try:
        yield
    except NoiseDoesNotFit as exc:
        raise UsageError(f"{exc.args[0]}; pass --unet UNet.pt for face noise.") from None


def _spec(unet: Path | None, digit: int, dataset: str, checkpoint: Path | None = None, cuda_graph: bool = False):
    from hw2cli.errors import UsageError
    from hw2cli.tasks.ddim import SourceSpec

    if unet is not None and checkpoint is not None:
        raise UsageError("--checkpoint is the digit model and --unet the face UNet; give one of them, not both.")

    return SourceSpec(unet=unet, checkpoint=checkpoint, digit=digit, dataset=dataset, cuda_graph=cuda_graph)


# options shared by every command
MAX_ETA = 10.0
MAX_FRAMES = 1000  # interpolation frames and grid rows: a figure, not a video
AlphaPrev = Literal["next", "t-1"]
FinalAlpha = Literal["first", "one"]
Normalize = Literal["minmax", "clip"]
STEPS = typer.Option(50, min=1, max=1000, help="DDIM steps (50: t = 981, 961, …, 1).")
ALPHA_PREV = typer.Option("next", help="ᾱ_prev: next (ᾱ\\[t−20], the homework's) or t-1 (ᾱ\\[t−1]).")
FINAL_ALPHA = typer.Option("first", help="ᾱ after the last step: first (ᾱ\\[0], the homework's) or one (1.0).")
CLIP_X0 = typer.Option(
    None,
    "--clip-x0/--no-clip-x0",
    help="Clamp the predicted x0 to \\[−1, 1] \\[default: off for the face UNet (the homework's), on for the "
    "digit model].",
)
NORMALIZE = typer.Option(
    None,
    help="Saving: minmax (per image, as passing solutions) or clip (the data range) \\[default: minmax for the "
    "face UNet, clip for the digit model].",
)
DIGIT = typer.Option(0, min=0, max=9, help="Without --unet: which digit the digit model draws.")
DATASET = typer.Option("mnistm", help="Without --unet: mnistm or svhn.")
CHECKPOINT = typer.Option(None, help="Without --unet: a digit model other than the embedded one.")

# an interval's worth of extrapolation each side; far beyond, slerp/lerp leave the noise's shell
ALPHAS = (-1.0, 2.0)


@app.command("sample")
def sample_command(
    noise_dir: Path = typer.Argument(
        ..., metavar="NOISE_DIR", help="Folder of noise files (*.pt, \\[1,3,H,W] or \\[3,H,W])."
    ),
    out: Path = typer.Argument(..., metavar="OUT", help="Output folder: one PNG per noise file, same name."),
    unet: Path = typer.Option(None, "--unet", help=UNET_HELP),
    eta: float = number(0.0, min=0.0, max=MAX_ETA, help="η: 0 is deterministic DDIM, 1 is DDPM-like."),
    steps: int = STEPS,
    batch: int = typer.Option(
        None, min=1, max=1000, help=rich_safe("Images per forward batch [default: 10 on a GPU, 1 on a CPU].")
    ),
    seed: int = seed_option(None, "Seed of the per-step noise (η > 0 only)" + SETTING + "."),
    alpha_prev: AlphaPrev = ALPHA_PREV,
    final_alpha: FinalAlpha = FINAL_ALPHA,
    clip_x0: bool | None = CLIP_X0,
    normalize: Normalize = NORMALIZE,
    digit: int = DIGIT,
    dataset: Literal["mnistm", "svhn"] = DATASET,
    checkpoint: Path = CHECKPOINT,
    resume: bool = keep_finished(),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="CUDA: replay each step from one CUDA graph."),
) -> None:
    """The graded hw2_2.sh contract: OUT/00.png … named after each noise file, η = 0, 50 steps.

    Each batch is written as soon as it is done; a rerun with the same settings keeps the
    finished images and makes only the missing ones, identical to an uninterrupted run (on a
    CPU a face takes minutes, so the default batch there is one image).

    Examples:
      hw2 ddim sample hw2_data/face/noise out/p2 --unet hw2_data/face/UNet.pt
      hw2 ddim eval out/p2 hw2_data/face/GT
    """
    from hw2cli import runtime, settings
    from hw2cli.tasks.ddim import graded_sample

    opts = _options(steps, eta, alpha_prev, final_alpha, clip_x0)
    from hw2cli.io.atomic import input_holding

    if noise_dir.is_dir() and input_holding(Path(out), [(noise_dir, "the noise folder")]) is not None:
        from hw2cli.errors import UsageError

        raise UsageError(f"OUT {out} is inside the noise folder {noise_dir}; choose another folder for the images.")
    device, dtype = runtime.setup()
    if cuda_graph and device.type != "cuda":
        from hw2cli.errors import RunError

        raise RunError("--cuda-graph needs a CUDA device; drop it on this machine.")
    described = {}
    ui.on_interrupt(ui.KEPT if resume else None)
    with ui.progress("ddim", None) as bar, _face_noise_hint():

        def started(n: int, description: str) -> None:
            described["source"] = description
            bar.reset(n)

        written = graded_sample(
            noise_dir, out, _spec(unet, digit, dataset, checkpoint, cuda_graph), opts, device=device, dtype=dtype,
            seed=resolve_seed(seed), batch=batch, normalize=normalize, resume=resume,
            state_dir=settings.get().weights_dir, on_start=started, on_batch=bar.update, note=ui.warn,
        )  # fmt: skip
    kept = f"; kept {written.reused} finished by an earlier run" if written.reused else ""
    made = len(written.paths) - written.reused
    ui.result(f"wrote {ui.plural(made, 'image')} to {out}{kept} ({described.get('source', '')})")


@app.command("eta-grid")
def eta_grid_command(
    out: Path = typer.Option(None, help="Output PNG \\[default: eta_grid.png in the figures folder of OUTPUT_ROOT]."),
    etas: str = typer.Option("0,0.25,0.5,0.75,1", help="Comma-separated η values (rows), each 0 to 10."),
    noise: list[Path] = typer.Option(None, help="Noise files (columns); repeat or comma-separate."),
    noise_dir: Path = typer.Option(
        None, help="Use the first --count files of this folder \\[default with --unet: face/noise in DATA_ROOT]."
    ),
    count: int = typer.Option(
        None,
        min=1,
        max=100,
        help="Columns when noise comes from a folder or a seed \\[default: 4, or all of a folder holding fewer].",
    ),
    unet: Path = typer.Option(None, "--unet", help=FIGURE_UNET_HELP),
    steps: int = STEPS,
    seed: int = seed_option(
        None, "Seed of the per-step noise (and of the starting noise without --unet)" + SETTING + "."
    ),
    alpha_prev: AlphaPrev = ALPHA_PREV,
    final_alpha: FinalAlpha = FINAL_ALPHA,
    clip_x0: bool | None = CLIP_X0,
    normalize: Normalize = NORMALIZE,
    digit: int = DIGIT,
    dataset: Literal["mnistm", "svhn"] = DATASET,
    checkpoint: Path = CHECKPOINT,
    resume: bool = keep_finished(),
) -> None:
    """The report's grid: rows η, columns noise (00–03 by default), labelled.

    Finished rows are kept (in the weights folder) until the figure is written, so an
    interrupted grid continues where it stopped: on a CPU each face takes minutes.

    Examples:
      hw2 ddim eta-grid --unet hw2_data/face/UNet.pt
      hw2 ddim eta-grid --digit 7        # no face UNet: the embedded digit model
    """
    from hw2cli import runtime, settings
    from hw2cli.tasks.ddim import eta_grid_figure

    eta_values = float_list(etas, "--etas", low=0.0, high=MAX_ETA, most=100)
    opts = _options(steps, 0.0, alpha_prev, final_alpha, clip_x0)
    from hw2cli.errors import UsageError

    files = [Path(p) for item in (noise or []) for p in str(item).split(",") if p]
    if files and noise_dir is not None:
        raise UsageError("give --noise files or a --noise-dir, not both: they both choose the grid's columns.")
    device, dtype = runtime.setup()
    ui.on_interrupt(ui.KEPT if resume else None)
    with ui.progress("eta grid", None) as bar, _face_noise_hint():
        path = eta_grid_figure(
            under_output_root(out, "figures", "eta_grid.png"), _spec(unet, digit, dataset, checkpoint), eta_values,
            opts, device=device, dtype=dtype,
            noise_files=files, noise_dir=noise_dir, default_noise_dir=settings.get().data_root / "face" / "noise",
            count=count, seed=resolve_seed(seed), normalize=normalize, resume=resume,
            state_dir=settings.get().weights_dir, on_start=lambda n: bar.reset(n), on_batch=bar.update,
        )  # fmt: skip
    ui.result(f"wrote {path}")


@app.command("interpolate")
def interpolate_command(
    a: Path = typer.Argument(
        None, metavar="A", help="First noise file \\[default with --unet: DATA_ROOT/face/noise/00.pt]."
    ),
    b: Path = typer.Argument(None, metavar="B", help="Second noise file \\[default: .../01.pt]."),
    out: Path = typer.Option(
        None, help="Output PNG \\[default: interpolation.png in the figures folder of OUTPUT_ROOT]."
    ),
    mode: Literal["slerp", "lerp", "both"] = typer.Option("both", help="slerp, lerp or both (one figure, a row each)."),
    alphas: str = typer.Option(
        "0:1:0.1",
        help=f"start:stop:step (stop included) or a comma list, each {ALPHAS[0]:g} to {ALPHAS[1]:g} (beyond 0 and 1 "
        f"extrapolates); at most {MAX_FRAMES} values.",
    ),
    unet: Path = typer.Option(None, "--unet", help=FIGURE_UNET_HELP),
    steps: int = STEPS,
    eta: float = number(0.0, min=0.0, max=MAX_ETA, help="η of the DDIM runs."),
    alpha_prev: AlphaPrev = ALPHA_PREV,
    final_alpha: FinalAlpha = FINAL_ALPHA,
    clip_x0: bool | None = CLIP_X0,
    normalize: Normalize = NORMALIZE,
    seed: int = seed_option(None, "Without noise files: the seed of the two noises" + SETTING + "."),
    digit: int = DIGIT,
    dataset: Literal["mnistm", "svhn"] = DATASET,
    checkpoint: Path = CHECKPOINT,
    resume: bool = keep_finished(),
) -> None:
    """Slerp and lerp between two noises, α = 0, 0.1, …, 1: one labelled figure.

    Finished frames are kept (in the weights folder) until the figure is written, so an
    interrupted run continues where it stopped.

    Examples:
      hw2 ddim interpolate hw2_data/face/noise/00.pt hw2_data/face/noise/01.pt --unet hw2_data/face/UNet.pt
    """
    from hw2cli import runtime, settings
    from hw2cli.tasks.ddim import interpolation_figure

    opts = _options(steps, eta, alpha_prev, final_alpha, clip_x0)
    values = _parse_alphas(alphas)
    modes = ["slerp", "lerp"] if mode == "both" else [mode]
    device, dtype = runtime.setup()
    ui.on_interrupt(ui.KEPT if resume else None)
    with ui.progress("interpolate", None) as bar, _face_noise_hint():
        path = interpolation_figure(
            under_output_root(out, "figures", "interpolation.png"), _spec(unet, digit, dataset, checkpoint), values,
            modes, opts, device=device, dtype=dtype, a=a, b=b,
            default_noise_dir=settings.get().data_root / "face" / "noise", seed=resolve_seed(seed), normalize=normalize,
            resume=resume, state_dir=settings.get().weights_dir, on_start=lambda n: bar.reset(n), on_batch=bar.update,
        )  # fmt: skip
    ui.result(f"wrote {path}")


def _parse_alphas(text: str) -> list[float]:
    """``0:1:0.1`` (start:stop:step, stop included) or a comma list such as ``0,0.5,1``."""
    import math

    from hw2cli.errors import UsageError

    if ":" not in text:
        return float_list(text, "--alphas", low=ALPHAS[0], high=ALPHAS[1], most=MAX_FRAMES)
    parts = text.split(":")
    try:
        start, stop, step = (float(v) for v in parts)
    except ValueError:
        raise UsageError(f"--alphas {text!r} must be start:stop:step (e.g. 0:1:0.1) or a comma list.") from None
    if not all(math.isfinite(v) for v in (start, stop, step)):
        raise UsageError(f"--alphas {text!r} holds a value that is not a finite number.")
    if step <= 0 or stop < start:
        raise UsageError(f"--alphas {text!r} needs a positive step and stop >= start.")
    if start < ALPHAS[0] or stop > ALPHAS[1]:
        raise UsageError(f"--alphas {text!r} reaches beyond {ALPHAS[0]:g} to {ALPHAS[1]:g}; keep start and stop in.")
    n = math.floor((stop - start) / step + 1e-9) + 1
    if n > MAX_FRAMES:
        raise UsageError(f"--alphas {text!r} makes {n:,} frames; at most {MAX_FRAMES} are allowed (raise the step).")
    return [round(start + i * step, 10) for i in range(n)]


@app.command("eval")
def eval_command(
    out: Path = typer.Argument(..., metavar="OUT", help="Generated images (00.png …)."),
    gt: Path = typer.Argument(..., metavar="GT", help="Ground truth (hw2_data/face/GT)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """The P2 grader: per-image MSE on the 0–255 scale and the mean (baseline: < 20).

    Examples:
      hw2 ddim eval out/p2 hw2_data/face/GT
      hw2 ddim eval out/p2 hw2_data/face/GT --json
    """
    from hw2cli.tasks.grading import mse_eval

    report = mse_eval(out, gt)
    if as_json:
        ui.print_json({"per_image": report.per_image, "mean": report.mean, "extra_files": report.extra})
        return
    if report.extra:
        ui.warn(f"{out} also holds {', '.join(report.extra[:5])}{' …' if len(report.extra) > 5 else ''} (ignored).")
    ui.print_table(["image", "MSE"], [[k, f"{v:.3f}"] for k, v in report.per_image.items()], title="P2 MSE (0–255)")
    ui.result(f"mean MSE {report.mean:.4f} ({'below' if report.mean < 20 else 'above'} the baseline of 20)")
