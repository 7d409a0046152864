"""`hw2 classifier`: the digit classifiers that grade P1."""

from __future__ import annotations

from pathlib import Path

import typer

from hw2cli import ui

app = typer.Typer(help="Train the digit classifiers that grade P1.", no_args_is_help=True)


@app.command()
def train(
    data: Path = typer.Option(None, help="Digits folder holding mnistm/ and svhn/ (default: DATA_ROOT/digits)."),
    dataset: str = typer.Option(..., help="mnistm or svhn."),
    arch: str = typer.Option("lenet", help="lenet (the official MNIST-M layout) or resnet34 (timm, CIFAR stem)."),
    out: Path = typer.Option(None, help="Output .safetensors [default: runs/classifier_DATASET.safetensors]."),
    epochs: int = typer.Option(10, help="Epochs."),
    batch: int = typer.Option(128, help="Batch size."),
    lr: float = typer.Option(2e-3, help="Peak learning rate (one-cycle)."),
    seed: int = typer.Option(None, help="Random seed [default: the seed setting]."),
) -> None:
    """Train a digit classifier on one data set and report its validation accuracy.

    Examples:
      hw2 classifier train --data hw2_data/digits --dataset mnistm --arch lenet
    """
    from hw2cli import runtime, settings
    from hw2cli.errors import UsageError
    from hw2cli.tasks.classify import train_classifier

    if dataset not in ("mnistm", "svhn"):
        raise UsageError(f"--dataset {dataset!r} is not known; expected mnistm or svhn.")
    device, _ = runtime.setup()
    current = settings.get()
    out = out or Path("runs") / f"classifier_{dataset}.safetensors"
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
            on_step=lambda step, m: bar.update(1, **m),
        )
    ui.result(f"val accuracy {result.val_accuracy:.2%} (train {result.train_accuracy:.2%}); wrote {result.path}")
