"""`hw2 ddpm`: P1, conditional DDPM on MNIST-M and SVHN digits."""

from __future__ import annotations

from pathlib import Path

import typer

from hw2cli import ui

app = typer.Typer(
    help="P1: conditional DDPM on MNIST-M / SVHN digits: train, sample, the graded folders, figures, grading.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

CHECKPOINT_HELP = "model.safetensors, its folder, or a legacy .pth (TeaPearce ContextUnet too). Default: embedded."
SAMPLER_HELP = "dpm (DPM-Solver++, 20 steps), ddim (50 steps) or ddpm (every step)."
CLIP_HELP = "Keep the predicted x0 in the data range while sampling (without it, guidance saturates images)."


def _legacy(data_range: str | None, cond_layout: str | None) -> dict:
    from hw2cli.errors import UsageError

    legacy: dict = {}
    if data_range is not None:
        if data_range not in ("01", "pm1"):
            raise UsageError(f"--data-range {data_range!r} is not known; expected 01 ([0, 1]) or pm1 ([-1, 1]).")
        legacy["data_range"] = (0.0, 1.0) if data_range == "01" else (-1.0, 1.0)
    if cond_layout is not None:
        from hw2cli.io.checkpoints import CONDITION_LAYOUTS

        if cond_layout not in CONDITION_LAYOUTS:
            raise UsageError(f"--cond-layout {cond_layout!r} is not known; expected {', '.join(CONDITION_LAYOUTS)}.")
        legacy["condition_layout"] = cond_layout
    return legacy


def _model(checkpoint: Path | None, data_range: str | None = None, cond_layout: str | None = None):
    from hw2cli import runtime
    from hw2cli.tasks.ddpm import load_model

    device, dtype = runtime.setup()
    return load_model(checkpoint, device, **_legacy(data_range, cond_layout)), dtype


@app.command()
def train(
    data: Path = typer.Option(None, help="Digits folder holding mnistm/ and svhn/ (default: DATA_ROOT/digits)."),
    out: Path = typer.Option(Path("runs/ddpm"), help="Run folder: checkpoints, samples, log."),
    datasets: str = typer.Option("mnistm,svhn", help="Comma-separated data sets to train on."),
    steps: int = typer.Option(None, help="Optimizer steps [default: 12000; on --resume, the saved value]."),
    batch: int = typer.Option(64, help="Global batch size (split across processes)."),
    lr: float = typer.Option(1e-3, help="Peak AdamW learning rate (linear warm-up, cosine decay)."),
    ema: float = typer.Option(0.999, "--ema", help="EMA decay of the sampling weights."),
    drop_prob: float = typer.Option(0.1, help="Probability of dropping the label (classifier-free guidance)."),
    width: int = typer.Option(16, help="DigitUNet base channels (16: ~1 M parameters)."),
    checkpoint_every: int = typer.Option(1000, help="Save a resumable checkpoint every N steps."),
    sample_every: int = typer.Option(2000, help="Write a sample grid every N steps (0: never)."),
    seed: int = typer.Option(None, help="Random seed [default: the seed setting]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
) -> None:
    """Train the conditional DigitUNet (EMA, warm-up + cosine LR, bf16 on GPU, Ctrl-C saves).

    More than one GPU: [bold]torchrun --nproc-per-node 4 -m hw2cli ddpm train ...[/bold] or
    [bold]accelerate launch -m hw2cli ddpm train ...[/bold]; no option changes.

    Examples:
      hw2 data synth hw2_data && hw2 ddpm train --data hw2_data/digits --out runs/p1
      hw2 ddpm train --out runs/p1 --resume
    """
    from hw2cli import runtime, settings
    from hw2cli.tasks.train_ddpm import TrainOptions, train_ddpm

    device, _ = runtime.setup()
    current = settings.get()
    opts = TrainOptions(
        data=str(data or current.data_root / "digits"),
        out=str(out),
        datasets=tuple(d.strip() for d in datasets.split(",") if d.strip()),
        batch=batch,
        lr=lr,
        ema_decay=ema,
        drop_prob=drop_prob,
        checkpoint_every=checkpoint_every,
        sample_every=sample_every,
        seed=current.seed if seed is None else seed,
        model={"base_channels": width},
    )
    ui.info(f"training on {device}; run folder {out}")
    with ui.progress("train", None) as bar:
        result = train_ddpm(
            opts,
            device=device,
            resume=resume,
            steps=steps,
            on_start=lambda first, total: bar.reset(total, first),
            on_step=lambda step, metrics: bar.update(1, **metrics),
        )
    ui.result(f"done: step {result.step}, loss {result.loss:.4f}; checkpoint {result.checkpoint}")


@app.command("sample")
def sample_command(
    digit: int = typer.Option(..., "--digit", "-d", help="The digit, 0-9."),
    dataset: str = typer.Option("both", help="mnistm, svhn or both."),
    n: int = typer.Option(10, "-n", help="Images per data set."),
    guidance: float = typer.Option(2.0, help="Classifier-free guidance weight w: (1+w)·ε(c) − w·ε(∅)."),
    sampler: str = typer.Option("dpm", help=SAMPLER_HELP),
    steps: int = typer.Option(None, help="Sampler steps [default: per sampler]."),
    seed: int = typer.Option(None, help="Random seed [default: the seed setting]."),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    out: Path = typer.Option(None, help="Output folder [default: OUTPUT_ROOT/samples]."),
    data_range: str = typer.Option(None, help="Legacy checkpoints: 01 or pm1 pixel range."),
    cond_layout: str = typer.Option(None, help="Legacy checkpoints: dataset-major, digit-major or digit-only."),
    clip_x0: bool = typer.Option(True, "--clip-x0/--no-clip-x0", help=CLIP_HELP),
) -> None:
    """Sample one digit: PNG files plus one grid image.

    Examples:
      hw2 ddpm sample --digit 3
      hw2 ddpm sample -d 7 --dataset svhn -n 25 --sampler ddim --steps 100 --guidance 3
    """
    from hw2cli import settings
    from hw2cli.io.images import save_grid
    from hw2cli.tasks.ddpm import check_digit, parse_datasets, sample_digits, write_samples

    check_digit(digit)
    names = parse_datasets(dataset)
    if n < 1:
        from hw2cli.errors import UsageError

        raise UsageError(f"-n is {n}; expected at least 1.")
    model, dtype = _model(checkpoint, data_range, cond_layout)
    current = settings.get()
    out = out or current.output_root / "samples"
    seed = current.seed if seed is None else seed
    with ui.progress(f"sample {digit}", n * len(names)) as bar:
        images = sample_digits(
            model,
            [digit] * (n * len(names)),
            [name for name in names for _ in range(n)],
            sampler=sampler,
            steps=steps,
            guidance=guidance,
            seed=seed,
            dtype=dtype,
            clip_x0=clip_x0,
            on_batch=bar.update,
        )
    files = []
    for k, name in enumerate(names):
        chunk = images[k * n : (k + 1) * n]
        files += write_samples(chunk, [f"{name}_{digit}_{i:03d}.png" for i in range(1, n + 1)], out)
    grid = save_grid(images, out / f"grid_digit{digit}.png", nrow=n)
    ui.result(f"wrote {len(files)} images and {grid} ({model.source})")


@app.command()
def generate(
    out: Path = typer.Argument(..., help="Output folder; gets mnistm/ and svhn/."),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    sampler: str = typer.Option("dpm", help=SAMPLER_HELP),
    steps: int = typer.Option(None, help="Sampler steps [default: per sampler]."),
    guidance: float = typer.Option(2.0, help="Classifier-free guidance weight."),
    seed: int = typer.Option(2024, help="Fixed seed: the same files on every run."),
    per_digit: int = typer.Option(50, help="Images per digit and data set (the homework: 50)."),
    batch: int = typer.Option(None, help="Images per forward batch [default: 100 on CPU, 500 on CUDA]."),
    data_range: str = typer.Option(None, help="Legacy checkpoints: 01 or pm1 pixel range."),
    cond_layout: str = typer.Option(None, help="Legacy checkpoints: dataset-major, digit-major or digit-only."),
    clip_x0: bool = typer.Option(True, "--clip-x0/--no-clip-x0", help=CLIP_HELP),
) -> None:
    """The graded hw2_1.sh contract: OUT/mnistm and OUT/svhn with 0_001.png … 9_050.png each.

    Examples:
      hw2 ddpm generate out/p1 && hw2 ddpm eval out/p1
    """
    from hw2cli.tasks.ddpm import generate_graded

    model, dtype = _model(checkpoint, data_range, cond_layout)
    with ui.progress("generate", 2 * 10 * per_digit) as bar:
        written = generate_graded(
            model,
            out,
            per_digit=per_digit,
            sampler=sampler,
            steps=steps,
            guidance=guidance,
            seed=seed,
            batch=batch,
            dtype=dtype,
            clip_x0=clip_x0,
            on_batch=bar.update,
        )
    ui.result(f"wrote {written['mnistm']} + {written['svhn']} images under {out} ({model.source})")


@app.command()
def grid(
    out: Path = typer.Option(Path("figures"), help="Folder for grid_mnistm.png and grid_svhn.png."),
    dataset: str = typer.Option("both", help="mnistm, svhn or both."),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    sampler: str = typer.Option("dpm", help=SAMPLER_HELP),
    steps: int = typer.Option(None, help="Sampler steps."),
    guidance: float = typer.Option(2.0, help="Classifier-free guidance weight."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """The report's 10×10 grid per data set: rows digits, columns different noise."""
    from hw2cli.tasks.ddpm import grid_figure, parse_datasets

    names = parse_datasets(dataset)
    model, dtype = _model(checkpoint)
    with ui.progress("grid", 100 * len(names)) as bar:
        for name in names:
            path = grid_figure(
                model,
                name,
                out / f"grid_{name}.png",
                seed=seed,
                sampler=sampler,
                steps=steps,
                guidance=guidance,
                dtype=dtype,
                on_batch=bar.update,
            )
            ui.result(f"wrote {path}")


@app.command()
def trajectory(
    out: Path = typer.Option(Path("figures/trajectory.png"), help="Output PNG."),
    timesteps: str = typer.Option(None, help="Comma-separated t to show [default: six, evenly spaced]."),
    digit: int = typer.Option(0, help="Which digit's reverse process."),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    guidance: float = typer.Option(2.0, help="Classifier-free guidance weight."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Six snapshots of the reverse process of the first "0" of each data set (full DDPM)."""
    from hw2cli.errors import UsageError
    from hw2cli.tasks.ddpm import check_digit, trajectory_figure

    check_digit(digit)
    ts = None
    if timesteps:
        try:
            ts = [int(v) for v in timesteps.split(",")]
        except ValueError:
            raise UsageError(f"--timesteps {timesteps!r} must be comma-separated integers, e.g. 0,200,400.") from None
    model, _ = _model(checkpoint)
    path = trajectory_figure(model, out, timesteps=ts, digit=digit, guidance=guidance, seed=seed)
    ui.result(f"wrote {path}")


@app.command("eval")
def eval_command(
    out: Path = typer.Argument(..., help="The generated folder holding mnistm/ and svhn/."),
    mnistm_checkpoint: Path = typer.Option(None, help="MNIST-M classifier (official Classifier.pth loads)."),
    svhn_checkpoint: Path = typer.Option(None, help="SVHN classifier: a local ResNet-34 (timm) state dict."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Grade a generated folder as the P1 grader does: per data set accuracy and their mean."""
    from hw2cli import runtime
    from hw2cli.tasks.classify import evaluate_generated

    device, _ = runtime.setup()
    result = evaluate_generated(out, device, {"mnistm": mnistm_checkpoint, "svhn": svhn_checkpoint})
    scores = result["scores"]
    if as_json:
        ui.print_json(
            {
                "mean_accuracy": result["mean_accuracy"],
                **{
                    name: {
                        "accuracy": s.accuracy,
                        "count": s.count,
                        "per_digit": s.per_digit,
                        "classifier": s.classifier,
                    }
                    for name, s in scores.items()
                },
            }
        )
        return
    rows = [[str(d)] + [f"{scores[n].per_digit.get(d, float('nan')):.1%}" for n in scores] for d in range(10)]
    rows.append(["all"] + [f"{s.accuracy:.2%}" for s in scores.values()])
    ui.print_table(["digit", *scores], rows, title="P1 accuracy")
    ui.result(f"mean accuracy {result['mean_accuracy']:.2%}")
