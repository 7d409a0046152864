"""`hw2 classifier`: the digit classifiers that grade P1."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from hw2cli import ui
from hw2cli.plugins._options import number
from hw2cli.plugins._options import seed as seed_option

app = typer.Typer(help="Train the digit classifiers that grade P1.", no_args_is_help=True)


@app.command()
def train(
    data: Path = typer.Option(None, help="Digits folder holding mnistm/ and svhn/ (default: DATA_ROOT/digits)."),
    dataset: Literal["mnistm", "svhn"] = typer.Option(..., help="mnistm or svhn."),
    arch: Literal["lenet", "resnet34"] = typer.Option(
        "lenet", help="lenet (the official MNIST-M layout) or resnet34 (timm, CIFAR stem)."
    ),
    out: Path = typer.Option(None, help="Output .safetensors \\[default: runs/classifier_DATASET, with .safetensors]."),
    epochs: int = typer.Option(10, min=1, max=1000, help="Epochs."),
    batch: int = typer.Option(128, min=1, max=65_536, help="Batch size."),
    lr: float = number(2e-3, min=1e-9, max=10.0, help="Peak learning rate (one-cycle)."),
    seed: int = seed_option(None, "Random seed [default: the seed setting]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run for --out where it stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Train a digit classifier on one data set and report its validation accuracy.

    Ctrl-C or SIGTERM saves the run (beside --out, as NAME.run/) after the running step, as
    does the end of every epoch; --resume continues it bit for bit.

    Examples:
      hw2 classifier train --data hw2_data/digits --dataset mnistm --arch lenet
      hw2 classifier train --data hw2_data/digits --dataset mnistm --arch lenet --resume
    """
    from hw2cli import runtime, settings
    from hw2cli.errors import UsageError
    from hw2cli.io.atomic import check_output_file
    from hw2cli.tasks.classify import train_classifier

    out = out or Path("runs") / f"classifier_{dataset}.safetensors"
    if out.suffix != ".safetensors":
        raise UsageError(f"--out {out} must end in .safetensors (the classifier is saved in that format).")
    check_output_file(out, "classifier file")
    if out.exists() and not (resume or overwrite):
        raise UsageError(
            f"{out} already holds a trained classifier; pass --overwrite to replace it, or choose another --out."
        )
    device, _ = runtime.setup()
    current = settings.get()
    with ui.progress(f"train {arch}", None) as bar:
        result = train_classifier(
            data or current.data_root / "digits",
            dataset,
            out,
            arch=arch,
            epochs=epochs,
            batch=batch,
            lr=lr,
            seed=current.seed if seed is None else seed,
            device=device,
            resume=resume,
            on_start=lambda done, total: bar.reset(total, done),
            on_step=lambda step, m: bar.update(1, **m),
            note=ui.warn,
        )
    import math

    val = (
        "val accuracy not measured (no val.csv images)"
        if math.isnan(result.val_accuracy)
        else f"val accuracy {result.val_accuracy:.2%}"
    )
    ui.result(f"{val} (train {result.train_accuracy:.2%}); wrote {result.path}")
