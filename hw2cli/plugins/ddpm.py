"""`hw2 ddpm`: P1, conditional DDPM on MNIST-M and SVHN digits."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import typer

from hw2cli import ui
from hw2cli.plugins._options import SETTING, keep_finished, nothing_to_train, number, resolve_seed, under_output_root
from hw2cli.plugins._options import seed as seed_option

app = typer.Typer(
    help="P1: conditional DDPM on MNIST-M / SVHN digits: train, sample, the graded folders, figures, grading.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

CHECKPOINT_HELP = "model.safetensors, its folder, or a legacy .pth (TeaPearce ContextUnet too). Default: embedded."
SAMPLER_HELP = (
    "dpm (DPM-Solver++(2M)) or unipc (UniPC): 20 steps, or the steps a distilled checkpoint records "
    "(as the embedded default does); ddim (50) or ddpm (every step)."
)
Sampler = Literal["dpm", "unipc", "ddim", "ddpm"]
DatasetChoice = Literal["mnistm", "svhn", "both"]
DataRange = Literal["01", "pm1"]
CondLayout = Literal["dataset-major", "digit-major", "digit-only"]
GUIDANCE_HELP = "Classifier-free guidance weight w: (1+w)·ε(c) − w·ε(∅)."
CLIP_HELP = "Keep the predicted x0 in the data range while sampling (without it, guidance saturates images)."


def data_range_option() -> Any:
    return typer.Option(None, help="Legacy checkpoints: 01 or pm1 pixel range.")


def cond_layout_option() -> Any:
    return typer.Option(None, help="Legacy checkpoints: dataset-major, digit-major or digit-only.")


def n_t_option() -> Any:
    return typer.Option(
        None,
        "--n-t",
        min=2,
        max=100_000,
        help="TeaPearce checkpoints: the n_T of their training \\[default: 400].",
    )


def _legacy(data_range: str | None, cond_layout: str | None, n_t: int | None = None) -> dict:
    legacy: dict = {}
    if data_range is not None:
        legacy["data_range"] = (0.0, 1.0) if data_range == "01" else (-1.0, 1.0)
    if cond_layout is not None:
        legacy["condition_layout"] = cond_layout
    if n_t is not None:
        legacy["schedule"] = {"kind": "teapearce", "n_T": n_t, "beta1": 1e-4, "beta2": 0.02}
    return legacy


def _model(
    checkpoint: Path | None,
    data_range: str | None = None,
    cond_layout: str | None = None,
    guidance: float = 2.0,
    n_t: int | None = None,
):
    from hw2cli import runtime
    from hw2cli.io.checkpoints import load_model
    from hw2cli.tasks.ddpm import guidance_outside_training

    device, dtype = runtime.setup()
    model = load_model(checkpoint, device, **_legacy(data_range, cond_layout, n_t))
    note = guidance_outside_training(model, guidance)
    if note:
        ui.warn(note)
    return model, dtype


# what --resume may change besides --steps: where the data and the run folder are now
RESUME_FREE = {"data", "out", "steps", "resume"}
# where a run's saved options (TrainOptions) keep an option given on the command line, when not under its own name
SAVED_AS: dict[str, Any] = {
    "datasets": lambda o: ",".join(o["datasets"]),
    "ema": lambda o: o["ema_decay"],
    "width": lambda o: o["model"]["base_channels"],
    "guidance_min": lambda o: o["guidance_range"][0],
    "guidance_max": lambda o: o["guidance_range"][1],
}


def _saved_mark(out: Path) -> dict[str, Any]:
    """``hw2_state.json`` of the newest state in ``out`` (empty if there is none to read)."""
    import json

    from hw2cli.tasks.training import STATE_MARK, state_folders

    try:
        mark = json.loads((state_folders(out)[0] / STATE_MARK).read_text())
    except (IndexError, OSError, ValueError):
        return {}
    return mark if isinstance(mark, dict) else {}


def _saved_options(out: Path) -> dict[str, Any] | None:
    """The options the newest state in ``out`` was saved with (``None`` if there is none to read)."""
    options = _saved_mark(out).get("options")
    return options if isinstance(options, dict) else None


def _kept_value(name: str, saved: dict[str, Any] | None) -> tuple[bool, Any]:
    if saved is None:
        return False, None
    try:
        return True, SAVED_AS.get(name, lambda o: o[name])(saved)
    except (KeyError, TypeError, IndexError):
        return False, None


def _same(name: str, given: Any, kept: Any) -> bool:
    if name == "datasets":
        return ",".join(d.strip() for d in str(given).split(",") if d.strip()) == kept
    if name == "teacher":
        return Path(given).resolve() == Path(kept).resolve()
    return given == kept


def _warn_ignored_on_resume(ctx: typer.Context, resume: bool, out: Path) -> None:
    """On --resume the run continues with its saved options: say which ones given here differ from
    them and are therefore not applied (the very command that started the run warns of nothing)."""
    from typer._click.core import ParameterSource

    if not resume:
        return
    saved = _saved_options(out)
    ignored = []
    for p in ctx.command.params:
        if p.name in RESUME_FREE or not p.opts or p.name is None:
            continue
        if ctx.get_parameter_source(p.name) not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        known, kept = _kept_value(p.name, saved)
        if not known:
            ignored.append(p.opts[0])
        elif not _same(p.name, ctx.params[p.name], kept):
            ignored.append(f"{p.opts[0]} (the run's: {kept})")
    if ignored:
        ui.warn(
            f"--resume continues the run with its own saved options, so {', '.join(ignored)} given here "
            f"{'is' if len(ignored) == 1 else 'are'} not applied (only --steps changes on a resume)."
        )


def _run_training(opts: Any, label: str, device: Any, resume: bool, steps: int | None, *, loss_digits: int) -> None:
    """``train_ddpm`` behind a progress bar (a resumed run starts it at its saved step), then one result line."""
    from hw2cli.tasks.train_ddpm import train_ddpm

    mark = _saved_mark(Path(opts.out)) if resume else {}
    saved = mark.get("options") if isinstance(mark.get("options"), dict) else None
    at = mark.get("step")
    planned = saved.get("steps") if saved is not None and isinstance(saved.get("steps"), int) else None
    if steps is not None and planned not in (None, steps) and isinstance(at, int) and steps > at:
        ui.info(
            f"--steps {steps}: the run was planned for {planned} steps; the learning rate's cosine decay "
            f"is planned again for {steps} from its saved step, so the result is not what --steps {steps} "
            "from the start would have made."
        )

    with ui.progress(label, None) as bar:
        result = train_ddpm(
            opts,
            device=device,
            resume=resume,
            steps=steps,
            on_start=lambda first, total: bar.reset(max(total, first), first),  # never 99/5
            on_step=lambda step, metrics: bar.update(1, **metrics),
            note=ui.warn,
        )
    if resume and math.isnan(result.loss):  # nothing left to train
        asked = steps if steps is not None else planned if planned is not None else result.step
        ui.result(f"{nothing_to_train(opts.out, result.step, asked, planned)}; checkpoint {result.checkpoint}")
        return
    ui.result(f"done: step {result.step}, loss {result.loss:.{loss_digits}f}; checkpoint {result.checkpoint}")


@app.command()
def train(
    ctx: typer.Context,
    data: Path = typer.Option(None, help="Digits folder holding mnistm/ and svhn/ (default: DATA_ROOT/digits)."),
    out: Path = typer.Option(Path("runs/ddpm"), help="Run folder: checkpoints, samples, log."),
    datasets: str = typer.Option("mnistm,svhn", help="Comma-separated data sets to train on."),
    steps: int = typer.Option(
        None, min=1, max=10_000_000, help="Optimizer steps \\[default: 12000; on --resume, the saved value]."
    ),
    batch: int = typer.Option(64, min=1, max=65_536, help="Global batch size (split across processes)."),
    lr: float = number(1e-3, min=1e-9, max=1.0, help="Peak AdamW learning rate (linear warm-up, cosine decay)."),
    ema: float = number(0.999, "--ema", min=0.0, max=0.999999, help="EMA decay of the sampling weights."),
    drop_prob: float = number(
        0.1, min=0.0, max=0.99, help="Probability of dropping the label (classifier-free guidance)."
    ),
    width: int = typer.Option(16, min=8, max=512, help="DigitUNet base channels, a multiple of 8 (16: ~1 M)."),
    checkpoint_every: int = typer.Option(1000, min=1, max=1_000_000, help="Save a resumable checkpoint every N steps."),
    sample_every: int = typer.Option(2000, min=0, max=1_000_000, help="Write a sample grid every N steps (0: never)."),
    seed: int = seed_option(None, "Random seed [default: the seed setting]."),
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
    from hw2cli.errors import UsageError
    from hw2cli.io.atomic import check_output_folder
    from hw2cli.tasks.train_ddpm import TrainOptions

    if width % 8:
        raise UsageError(f"--width is {width}; expected a multiple of 8 (its GroupNorms have 8 groups).")
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    if not names or any(n not in ("mnistm", "svhn") for n in names) or len(set(names)) != len(names):
        raise UsageError(f"--datasets is {datasets!r}; expected mnistm, svhn or mnistm,svhn.")
    check_output_folder(out, "run folder")
    check_output_folder(out / "samples", "samples folder", within=out)
    device, _ = runtime.setup()
    current = settings.get()
    opts = TrainOptions(
        data=str(data or current.data_root / "digits"),
        out=str(out),
        datasets=tuple(names),
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
    _warn_ignored_on_resume(ctx, resume, out)
    _run_training(opts, "train", device, resume, steps, loss_digits=4)


@app.command()
def distill(
    ctx: typer.Context,
    data: Path = typer.Option(None, help="Digits folder holding mnistm/ and svhn/ (default: DATA_ROOT/digits)."),
    out: Path = typer.Option(Path("runs/distill"), help="Run folder: checkpoints, samples, log."),
    teacher: Path = typer.Option(
        None, help="The guided teacher (a DigitUNet from hw2 ddpm train) \\[default: the embedded teacher]."
    ),
    steps: int = typer.Option(
        None, min=1, max=10_000_000, help="Optimizer steps \\[default: 6000; on --resume, the saved value]."
    ),
    batch: int = typer.Option(64, min=1, max=65_536, help="Global batch size (split across processes)."),
    lr: float = number(2e-4, min=1e-9, max=1.0, help="Peak AdamW learning rate (linear warm-up, cosine decay)."),
    guidance_min: float = number(0.0, min=0.0, max=10.0, help="Smallest guidance weight w the student learns."),
    guidance_max: float = number(4.0, min=0.0, max=10.0, help="Largest guidance weight w the student learns."),
    sampler_steps: int = typer.Option(
        6, min=1, max=1000, help="DPM-Solver++ and UniPC steps recorded as the student's default for sampling."
    ),
    checkpoint_every: int = typer.Option(500, min=1, max=1_000_000, help="Save a resumable checkpoint every N steps."),
    sample_every: int = typer.Option(1000, min=0, max=1_000_000, help="Write a sample grid every N steps (0: never)."),
    seed: int = seed_option(None, "Random seed [default: the seed setting]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
) -> None:
    """Guidance distillation (Meng et al. 2023): a student that takes w and matches the guided teacher in one pass.

    The student starts as the teacher and learns (1+w)·ε(c) − w·ε(∅) of the teacher for w drawn
    per image from [--guidance-min, --guidance-max], on noised training images; sampling it costs
    one network evaluation per step instead of two. Ctrl-C saves; --resume continues bit-exactly;
    torchrun / accelerate launch as for train.

    Examples:
      hw2 ddpm distill --data hw2_data/digits --out runs/student
      hw2 ddpm generate out --checkpoint runs/student
    """
    from hw2cli import runtime, settings
    from hw2cli.errors import UsageError
    from hw2cli.io.atomic import check_output_folder
    from hw2cli.io.checkpoints import default_checkpoint
    from hw2cli.tasks.train_ddpm import TrainOptions

    if guidance_min > guidance_max:
        raise UsageError(f"--guidance-min {guidance_min:g} is above --guidance-max {guidance_max:g}.")
    if teacher is None:
        teacher = default_checkpoint("digit_ddpm_teacher.safetensors")
        if not teacher.exists():
            teacher = default_checkpoint()
    check_output_folder(out, "run folder")
    check_output_folder(out / "samples", "samples folder", within=out)
    device, _ = runtime.setup()
    current = settings.get()
    opts = TrainOptions(
        data=str(data or current.data_root / "digits"),
        out=str(out),
        steps=6000,
        batch=batch,
        lr=lr,
        warmup=200,
        drop_prob=0.0,
        checkpoint_every=checkpoint_every,
        sample_every=sample_every,
        seed=current.seed if seed is None else seed,
        teacher=str(teacher),
        guidance_range=(guidance_min, guidance_max),
        sampler_steps=sampler_steps,
    )
    ui.info(f"distilling {teacher} on {device}; run folder {out}")
    _warn_ignored_on_resume(ctx, resume, out)
    _run_training(opts, "distill", device, resume, steps, loss_digits=6)


@app.command("sample")
def sample_command(
    digit: int = typer.Option(..., "--digit", "-d", min=0, max=9, help="The digit, 0-9."),
    dataset: DatasetChoice = typer.Option("both", help="mnistm, svhn or both."),
    n: int = typer.Option(10, "-n", min=1, max=10_000, help="Images per data set."),
    guidance: float = number(2.0, min=-1.0, max=100.0, help=GUIDANCE_HELP),
    sampler: Sampler = typer.Option("dpm", help=SAMPLER_HELP),
    steps: int = typer.Option(None, min=1, max=1000, help="Sampler steps \\[default: per sampler]."),
    seed: int = seed_option(None, "Random seed [default: the seed setting]."),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    out: Path = typer.Option(None, help="Output folder \\[default: the samples folder of OUTPUT_ROOT]."),
    data_range: DataRange = data_range_option(),
    cond_layout: CondLayout = cond_layout_option(),
    n_t: int = n_t_option(),
    clip_x0: bool = typer.Option(True, "--clip-x0/--no-clip-x0", help=CLIP_HELP),
) -> None:
    """Sample one digit: PNG files plus one grid image.

    Examples:
      hw2 ddpm sample --digit 3
      hw2 ddpm sample -d 7 --dataset svhn -n 25 --sampler ddim --steps 100 --guidance 3
    """
    from hw2cli import settings
    from hw2cli.io.atomic import check_output_folder, listed
    from hw2cli.tasks.ddpm import earlier_samples, sample_folder

    names = ["mnistm", "svhn"] if dataset == "both" else [dataset]
    current = settings.get()
    out = check_output_folder(out or current.output_root / "samples")
    earlier = earlier_samples(out, digit, names, n)
    if earlier:
        ui.warn(
            f"{out} keeps {ui.plural(len(earlier), 'image')} of an earlier, larger sample of {digit} "
            f"({listed([p.name for p in earlier])}); they are not part of this one (use another --out, or delete them)."
        )
    model, dtype = _model(checkpoint, data_range, cond_layout, guidance, n_t)
    with ui.progress(f"sample {digit}", n * len(names)) as bar:
        files, grid = sample_folder(
            model, digit, names, n, out, sampler=sampler, steps=steps, guidance=guidance,
            seed=current.seed if seed is None else seed, dtype=dtype, clip_x0=clip_x0, on_batch=bar.update,
        )  # fmt: skip
    ui.result(f"wrote {ui.plural(len(files), 'image')} and {grid} ({model.source})")


@app.command()
def generate(
    out: Path = typer.Argument(..., metavar="OUT", help="Output folder; gets mnistm/ and svhn/."),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    sampler: Sampler = typer.Option("dpm", help=SAMPLER_HELP),
    steps: int = typer.Option(None, min=1, max=1000, help="Sampler steps \\[default: per sampler]."),
    guidance: float = number(2.0, min=-1.0, max=100.0, help=GUIDANCE_HELP),
    seed: int = seed_option(2024, "Fixed seed: the same files on every run (the seed setting does not apply)."),
    per_digit: int = typer.Option(50, min=1, max=999, help="Images per digit and data set (the homework: 50)."),
    batch: int = typer.Option(
        None, min=1, max=10_000, help="Images per forward batch \\[default: 100 on CPU, 500 on CUDA]."
    ),
    data_range: DataRange = data_range_option(),
    cond_layout: CondLayout = cond_layout_option(),
    n_t: int = n_t_option(),
    clip_x0: bool = typer.Option(True, "--clip-x0/--no-clip-x0", help=CLIP_HELP),
    resume: bool = keep_finished(),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="CUDA: replay each step from one CUDA graph."),
) -> None:
    """The graded hw2_1.sh contract: OUT/mnistm and OUT/svhn with 0_001.png … 9_050.png each.

    A rerun into the same folder with the same settings keeps the images already there and
    makes only the missing ones, so an interrupted run continues and the result is identical
    to an uninterrupted one ([bold]--no-resume[/] makes everything anew).

    Examples:
      hw2 ddpm generate out/p1 && hw2 ddpm eval out/p1
    """
    from hw2cli import settings
    from hw2cli.io.atomic import check_output_folder
    from hw2cli.tasks.ddpm import generate_graded

    check_output_folder(out)
    from hw2cli.data import DATASETS

    for name in DATASETS:
        check_output_folder(out / name, "data set folder", within=out)
    if len({(out / name).resolve() for name in DATASETS}) < len(DATASETS):
        from hw2cli.errors import UsageError

        raise UsageError(
            f"{' and '.join(str(out / n) for n in DATASETS)} are one folder (a link); each data set needs its own."
        )
    model, dtype = _model(checkpoint, data_range, cond_layout, guidance, n_t)
    if cuda_graph and model.device.type != "cuda":
        from hw2cli.errors import RunError

        raise RunError("--cuda-graph needs a CUDA device; drop it on this machine.")
    ui.on_interrupt(ui.KEPT if resume else None)
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
            cuda_graph=cuda_graph,
            resume=resume,
            state_dir=settings.get().weights_dir,
            on_batch=bar.update,
            note=ui.warn,
        )
    kept = f"; kept {written['reused']} finished by an earlier run" if written["reused"] else ""
    ui.result(f"wrote {written['mnistm']} + {written['svhn']} images under {out}{kept} ({model.source})")


@app.command()
def grid(
    out: Path = typer.Option(
        None, help="Folder for grid_mnistm.png and grid_svhn.png \\[default: the figures folder of OUTPUT_ROOT]."
    ),
    dataset: DatasetChoice = typer.Option("both", help="mnistm, svhn or both."),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    sampler: Sampler = typer.Option("dpm", help=SAMPLER_HELP),
    steps: int = typer.Option(None, min=1, max=1000, help="Sampler steps."),
    guidance: float = number(2.0, min=-1.0, max=100.0, help=GUIDANCE_HELP),
    seed: int = seed_option(None, "Random seed" + SETTING + "."),
    data_range: DataRange = data_range_option(),
    cond_layout: CondLayout = cond_layout_option(),
    n_t: int = n_t_option(),
    clip_x0: bool = typer.Option(True, "--clip-x0/--no-clip-x0", help=CLIP_HELP),
) -> None:
    """The report's 10×10 grid per data set: rows digits, columns different noise.

    Examples:
      hw2 ddpm grid                                   # OUTPUT_ROOT/figures/grid_{mnistm,svhn}.png
      hw2 ddpm grid --dataset svhn --guidance 3 --out report/figures
    """
    from hw2cli.io.atomic import check_output_folder
    from hw2cli.tasks.ddpm import grid_figure

    names = ["mnistm", "svhn"] if dataset == "both" else [dataset]
    out = check_output_folder(under_output_root(out, "figures"))
    model, dtype = _model(checkpoint, data_range, cond_layout, guidance, n_t)
    with ui.progress("grid", 100 * len(names)) as bar:
        for name in names:
            path = grid_figure(
                model,
                name,
                out / f"grid_{name}.png",
                seed=resolve_seed(seed),
                sampler=sampler,
                steps=steps,
                guidance=guidance,
                dtype=dtype,
                clip_x0=clip_x0,
                on_batch=bar.update,
            )
            ui.result(f"wrote {path}")


@app.command()
def trajectory(
    out: Path = typer.Option(None, help="Output PNG \\[default: trajectory.png in the figures folder of OUTPUT_ROOT]."),
    timesteps: str = typer.Option(
        None, help="Comma-separated t to show, in that order \\[default: six, evenly spaced, noise to image]."
    ),
    digit: int = typer.Option(0, min=0, max=9, help="Which digit's reverse process."),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    guidance: float = number(2.0, min=-1.0, max=100.0, help=GUIDANCE_HELP),
    seed: int = seed_option(None, "Random seed" + SETTING + "."),
    data_range: DataRange = data_range_option(),
    cond_layout: CondLayout = cond_layout_option(),
    n_t: int = n_t_option(),
    clip_x0: bool = typer.Option(True, "--clip-x0/--no-clip-x0", help=CLIP_HELP),
) -> None:
    """Six snapshots of the reverse process of the first "0" of each data set (full DDPM: on a
    CPU a few minutes, one network call per timestep of the schedule).

    Examples:
      hw2 ddpm trajectory
      hw2 ddpm trajectory --timesteps 999,600,300,150,50,0 --out report/trajectory.png
      hw2 ddpm trajectory --checkpoint model_39.pth --n-t 750 --timesteps 750,600,450,300,150,1
    """
    from hw2cli.errors import UsageError
    from hw2cli.io.atomic import check_output_file
    from hw2cli.tasks.ddpm import trajectory_figure

    out = check_output_file(under_output_root(out, "figures", "trajectory.png"), "figure", image=True)
    ts = None
    if timesteps is not None:
        parts = [v.strip() for v in timesteps.split(",")]
        if not all(p.lstrip("-").isdigit() for p in parts):
            raise UsageError(f"--timesteps {timesteps!r} must be comma-separated integers, e.g. 0,200,400.")
        ts = [int(v) for v in parts]
        if len(ts) > 50:
            raise UsageError(f"--timesteps lists {len(ts)} values; a figure takes at most 50.")
        from hw2cli.plugins._options import repeated

        repeated(ts, parts, "--timesteps")
    model, _ = _model(checkpoint, data_range, cond_layout, guidance, n_t)
    from hw2cli.data import DATASETS

    with ui.progress("trajectory", len(DATASETS) * model.schedule.max_sampler_steps) as bar:
        path = trajectory_figure(
            model, out, timesteps=ts, digit=digit, guidance=guidance, seed=resolve_seed(seed), clip_x0=clip_x0,
            on_step=bar.update,
        )  # fmt: skip
    ui.result(f"wrote {path}")


@app.command("eval")
def eval_command(
    out: Path = typer.Argument(..., metavar="OUT", help="The generated folder holding mnistm/ and svhn/."),
    mnistm_checkpoint: Path = typer.Option(None, help="MNIST-M classifier (official Classifier.pth loads)."),
    svhn_checkpoint: Path = typer.Option(
        None,
        help="SVHN classifier: a ResNet-34 with the CIFAR stem (3×3 first conv, no max-pool; what "
        "`hw2 classifier train --arch resnet34` writes) or a LeNet, as .safetensors or .pth.",
    ),
    svhn_classifier: Literal["embedded", "detectors"] = typer.Option(
        "embedded",
        help="Without --svhn-checkpoint: the embedded LeNet, or detectors: the homework's own grader "
        "(timm resnet34_svhn, weights downloaded once from the Hub).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Grade a generated folder as the P1 grader does: per data set accuracy and their mean.

    Examples:
      hw2 ddpm eval out/p1
      hw2 ddpm eval out/p1 --mnistm-checkpoint Classifier.pth --svhn-classifier detectors
    """
    from hw2cli import runtime, settings
    from hw2cli.errors import UsageError
    from hw2cli.tasks.grading import evaluate_generated, official_svhn_checkpoint

    if svhn_classifier == "detectors":
        if svhn_checkpoint is not None:
            raise UsageError("give --svhn-checkpoint or --svhn-classifier detectors, not both.")
        current = settings.get()
        with ui.progress("SVHN grader", None) as bar:

            def report(done: int, total: int | None) -> None:
                if total is not None and bar.total != total:
                    bar.reset(total, done)
                bar.update(done - bar.done)

            svhn_checkpoint = official_svhn_checkpoint(Path(current.weights_dir), current.offline, report)
    device, _ = runtime.setup()
    result = evaluate_generated(out, device, {"mnistm": mnistm_checkpoint, "svhn": svhn_checkpoint})
    scores = result["scores"]
    problems = [p for name, s in scores.items() for p in s.problems(out / name)]
    for problem in problems:
        ui.warn(problem)
    if as_json:
        ui.print_json(
            {
                "mean_accuracy": result["mean_accuracy"],
                "problems": problems,
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
    rows = [[str(d)] + [f"{scores[n].per_digit[d]:.1%}" if d in scores[n].per_digit else "–" for n in scores]
            for d in range(10)]  # fmt: skip
    rows.append(["all"] + [f"{s.accuracy:.2%}" for s in scores.values()])
    ui.print_table(["digit", *scores], rows, title="P1 accuracy")
    ui.info("graded by " + "; ".join(f"{name}: {s.classifier}" for name, s in scores.items()))
    if any("embedded in hw2" in s.classifier for s in scores.values()):
        ui.info("the homework's graders: --mnistm-checkpoint Classifier.pth and --svhn-classifier detectors")
    ui.result(f"mean accuracy {result['mean_accuracy']:.2%}")
