"""``hw2 data``: make synthetic digit datasets in the homework layout, and check a data folder.

torch and numpy are imported inside the commands, so mounting this plugin stays cheap.
"""

from __future__ import annotations

from pathlib import Path

import typer

from hw2cli import ui
from hw2cli.errors import UsageError

app = typer.Typer(
    help="Synthetic MNIST-M / SVHN look-alikes in the homework layout; check a data folder.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def _parse_datasets(value: str) -> list[str]:
    from hw2cli.data.synth import DATASETS

    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    if not names:
        raise UsageError(f"--datasets must list at least one of {', '.join(DATASETS)}, got {value!r}.")
    return names


@app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Output folder; the images go to OUT/digits/<dataset>/."),
    per_class: int = typer.Option(500, "--per-class", help="Images of each digit per dataset."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives byte-identical files."),
    val_fraction: float = typer.Option(
        0.1, "--val-fraction", help="Share of each class listed in val.csv (0 <= F < 1)."
    ),
    datasets: str = typer.Option("mnistm,svhn", "--datasets", help="Comma-separated: mnistm, svhn."),
) -> None:
    """Write synthetic MNIST-M and SVHN look-alikes in the homework layout.

    Makes [bold]OUT/digits/mnistm/[/] and [bold]OUT/digits/svhn/[/], each with
    [bold]data/*.png[/] (28x28 RGB), [bold]train.csv[/] and [bold]val.csv[/]
    (header image_name,label). Font digits are warped at random; MNIST-M
    blends them with colour textures, SVHN draws house-number crops with
    neighbouring digits. An existing dataset folder gets exactly the new
    images.

    [bold]Examples:[/]

      hw2 data synth hw2_data --per-class 200

      hw2 data synth hw2_data --datasets svhn --seed 1 --val-fraction 0.2

      hw2 data check hw2_data
    """
    from hw2cli.data.synth import synthesize

    names = _parse_datasets(datasets)
    total = 10 * per_class * len(dict.fromkeys(names)) if per_class >= 1 else None
    with ui.progress("synth", total) as bar:
        counts = synthesize(
            out,
            per_class=per_class,
            seed=seed,
            val_fraction=val_fraction,
            datasets=names,
            on_progress=lambda n: bar.update(n),
        )
    rows = [[name, c["train"], c["val"], c["train"] + c["val"]] for name, c in counts.items()]
    ui.print_table(["dataset", "train", "val", "total"], rows, title="synthetic digits", justify="lrrr")
    ui.result(f"wrote {out / 'digits'}")


@app.command("check")
def check(
    root: Path = typer.Argument(
        ..., help="A digits folder (holding mnistm/ and svhn/), a single dataset folder, or hw2_data."
    ),
) -> None:
    """Open every image of a digits folder and print per-split, per-class counts.

    [bold]Examples:[/]

      hw2 data check hw2_data/digits

      hw2 data check hw2_data/digits/svhn
    """
    from hw2cli.data.digits import SPLITS, DigitsDataset, find_dataset_roots

    roots = find_dataset_roots(root)
    loaded: list[DigitsDataset] = []
    for folder in roots:
        splits = [s for s in SPLITS if (folder / f"{s}.csv").is_file()]
        if not splits:  # let the dataset class say what is missing
            splits = [SPLITS[0]]
        loaded.extend(DigitsDataset(folder, split) for split in splits)

    with ui.progress("check", sum(len(ds) for ds in loaded)) as bar:
        for ds in loaded:
            ds.verify(on_progress=lambda n: bar.update(n))

    rows = [[ds.root.name, ds.split, len(ds), *ds.class_counts()] for ds in loaded]
    ui.print_table(
        ["dataset", "split", "images", *(str(d) for d in range(10))],
        rows,
        title=f"digits in {root}",
        justify="ll" + "r" * 11,
    )
    ui.result(f"ok: {sum(len(ds) for ds in loaded)} images in {len(loaded)} splits are readable")
