"""Synthetic MNIST-M / SVHN look-alikes: layout, determinism, validation, and the two looks."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hw2cli.data.digits import DigitsDataset
from hw2cli.data.synth import synthesize
from hw2cli.errors import RunError, UsageError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _load_all(folder: Path) -> np.ndarray:
    return (
        np.stack([np.asarray(Image.open(p)) for p in sorted((folder / "data").glob("*.png"))]).astype(np.float32)
        / 255.0
    )


def test_layout_csv_header_and_balanced_counts(tmp_path):
    counts = synthesize(tmp_path / "out", per_class=4, seed=0, val_fraction=0.25)
    assert counts == {"mnistm": {"train": 30, "val": 10}, "svhn": {"train": 30, "val": 10}}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["digits"]
    assert sorted(p.name for p in (tmp_path / "out" / "digits").iterdir()) == ["mnistm", "svhn"]
    for name in ("mnistm", "svhn"):
        folder = tmp_path / "out" / "digits" / name
        assert sorted(p.name for p in folder.iterdir()) == ["data", "train.csv", "val.csv"]
        listed = []
        for split, per_class in (("train", 3), ("val", 1)):
            text = (folder / f"{split}.csv").read_text()
            assert text.startswith("image_name,label\n")
            rows = _csv_rows(folder / f"{split}.csv")
            assert rows[0] == ["image_name", "label"]
            body = rows[1:]
            assert all(len(r) == 2 for r in body)
            assert all(len(r[0]) == 9 and r[0].endswith(".png") and "/" not in r[0] for r in body)
            labels = [int(r[1]) for r in body]
            assert sorted(labels) == sorted(list(range(10)) * per_class)
            listed += [r[0] for r in body]
        assert len(listed) == len(set(listed)) == 40
        assert sorted(listed) == sorted(p.name for p in (folder / "data").iterdir())


def test_images_are_28x28_rgb_png_and_open_in_pillow(tmp_path):
    synthesize(tmp_path, per_class=2, seed=3)
    paths = sorted((tmp_path / "digits").rglob("*.png"))
    assert len(paths) == 40
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.mode == "RGB"
            assert image.size == (28, 28)
            image.load()


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    synthesize(tmp_path / "a", per_class=6, seed=7)
    synthesize(tmp_path / "b", per_class=6, seed=7)
    synthesize(tmp_path / "c", per_class=6, seed=8)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 2 * (60 + 2)
    assert a == b
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != c[k] for k in pngs) > 0.9 * len(pngs)


def test_output_loads_in_digits_dataset(tmp_path):
    synthesize(tmp_path, per_class=3, seed=0, val_fraction=0.34)
    root = tmp_path / "digits" / "mnistm"
    train = DigitsDataset(root, "train")
    val = DigitsDataset(root, "val")
    assert (len(train), len(val)) == (20, 10)
    image, label = train[0]
    assert image.shape == (3, 28, 28) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert label == train.labels[0] and 0 <= label <= 9
    assert train.class_counts() == [2] * 10
    assert train.verify() == 20
    both = DigitsDataset.from_many([tmp_path / "digits" / "mnistm", tmp_path / "digits" / "svhn"], "val")
    assert len(both) == 20
    assert both[15][2] == 1 and both[0][2] == 0


def test_rerun_overwrites_cleanly(tmp_path):
    synthesize(tmp_path, per_class=5, seed=0, datasets=["svhn"])
    (tmp_path / "digits" / "svhn" / "data" / "stale.png").write_bytes(b"old")
    (tmp_path / "digits" / "svhn" / "notes.txt").write_text("kept")
    counts = synthesize(tmp_path, per_class=2, seed=1, datasets=["svhn"])
    folder = tmp_path / "digits" / "svhn"
    assert counts == {"svhn": {"train": 10, "val": 10}}  # at least one val image per class
    assert len(list((folder / "data").iterdir())) == 20
    assert not (folder / "data" / "stale.png").exists()
    assert (folder / "notes.txt").read_text() == "kept"
    assert sorted(p.name for p in folder.iterdir()) == ["data", "notes.txt", "train.csv", "val.csv"]
    assert not (tmp_path / "digits" / "mnistm").exists()
    assert DigitsDataset(folder, "train").verify() == 10


def _resume_folders(root: Path) -> list[Path]:
    return sorted(root.glob("digits/*/.data.hw2-resume-*"))


def _stop_after(batches: int):
    """An ``on_progress`` that interrupts the run (as a Ctrl-C would) once ``batches`` batches are written."""
    calls = []

    def progress(n: int) -> None:
        calls.append(n)
        if len(calls) == batches:
            raise KeyboardInterrupt

    return progress


def test_interrupted_run_leaves_the_old_set_whole(tmp_path):
    synthesize(tmp_path, per_class=2, seed=0, datasets=["mnistm"])
    before = _files(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path, per_class=3, seed=5, datasets=["mnistm"], on_progress=_stop_after(1))
    (resume,) = _resume_folders(tmp_path)  # what the same call continues from
    assert {k: v for k, v in _files(tmp_path).items() if not k.startswith(str(resume.relative_to(tmp_path)))} == before
    assert sorted(p.name for p in (tmp_path / "digits" / "mnistm").iterdir()) == [
        resume.name,
        "data",
        "train.csv",
        "val.csv",
    ]


def test_an_interrupted_run_continues_where_it_stopped(tmp_path):
    """`hw2 data mnistm` on the full MNIST composes for minutes; an interruption made it start over."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    synthesize(straight, per_class=120, seed=3, datasets=["svhn"])  # 1,200 images: batches of 500, 500, 200
    with pytest.raises(KeyboardInterrupt):
        synthesize(resumed, per_class=120, seed=3, datasets=["svhn"], on_progress=_stop_after(1))
    (resume,) = _resume_folders(resumed)
    assert not (resumed / "digits" / "svhn" / "data").exists()
    first = resume / "00000.png"
    stamp = (first.stat().st_ino, first.stat().st_mtime_ns)
    # batch 0 is written; batch 1 too if the writer thread had started it when the stop came
    sizes = [500, 500, 200]
    finished = [b for b in range(3) if (resume / f".done-{b:06d}").exists()]
    assert finished in ([0], [0, 1])
    kept = sum(sizes[b] for b in finished)
    notes, progress = [], []
    synthesize(resumed, per_class=120, seed=3, datasets=["svhn"], note=notes.append, on_progress=progress.append)
    assert notes == [f"svhn: kept {kept:,} of 1,200 images an interrupted run had written."]
    assert progress == [kept, *sizes[len(finished) :]]  # what was kept first, then only the batches not written
    kept = resumed / "digits" / "svhn" / "data" / "00000.png"
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == stamp  # not made again
    assert _files(resumed) == _files(straight) and not _resume_folders(resumed)


def test_a_batch_a_kill_cut_short_is_made_again(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    synthesize(straight, per_class=60, seed=1, datasets=["mnistm"])
    with pytest.raises(KeyboardInterrupt):
        synthesize(resumed, per_class=60, seed=1, datasets=["mnistm"], on_progress=_stop_after(1))
    (resume,) = _resume_folders(resumed)
    # a kill -9 while batch 0 was written: some files whole, one cut short, and no marker yet
    (resume / ".done-000000").unlink()
    (resume / "00007.png").write_bytes((resume / "00007.png").read_bytes()[:40])
    (resume / "00499.png").unlink()
    synthesize(resumed, per_class=60, seed=1, datasets=["mnistm"])
    assert _files(resumed) == _files(straight)


def test_a_rerun_with_other_settings_drops_the_interrupted_images(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    synthesize(straight, per_class=60, seed=2, datasets=["mnistm"])
    with pytest.raises(KeyboardInterrupt):
        synthesize(resumed, per_class=60, seed=1, datasets=["mnistm"], on_progress=_stop_after(1))
    notes = []
    synthesize(resumed, per_class=60, seed=2, datasets=["mnistm"], note=notes.append)
    assert notes == [] and _files(resumed) == _files(straight) and not _resume_folders(resumed)


def test_a_finished_data_set_is_kept_by_the_same_call_and_refused_to_another(tmp_path):
    out, state = tmp_path / "out", tmp_path / "weights"
    synthesize(out, per_class=3, seed=0, datasets=["mnistm"], state_dir=state, replace=False)
    before = _files(out)
    (out / "digits" / "mnistm" / "val.csv").unlink()  # a kill between data/'s swap and the CSVs
    notes = []
    counts = synthesize(
        out, per_class=3, seed=0, datasets=["mnistm"], state_dir=state, replace=False, note=notes.append
    )
    assert _files(out) == before and counts["mnistm"].kept and sum(counts["mnistm"].values()) == 3 * 10
    assert notes == [
        f"{out / 'digits' / 'mnistm'} already holds this data set, made by the same command; kept as it is."
    ]
    with pytest.raises(UsageError, match="already holds a data set .* made with other settings or sources"):
        synthesize(out, per_class=3, seed=1, datasets=["mnistm"], state_dir=state, replace=False)
    assert _files(out) == before
    synthesize(tmp_path / "plain", per_class=3, seed=0, datasets=["mnistm"])
    with pytest.raises(UsageError, match="already holds a data set"):  # not recorded: not known to be this one
        synthesize(tmp_path / "plain", per_class=3, seed=0, datasets=["mnistm"], state_dir=state, replace=False)


def test_a_stop_between_the_record_and_the_swap_does_not_keep_the_old_images(tmp_path, monkeypatch):
    from hw2cli.data import layout

    out, state = tmp_path / "out", tmp_path / "weights"
    synthesize(out, per_class=3, seed=0, datasets=["svhn"], state_dir=state)
    real = layout._swap_in

    def stopped(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(layout, "_swap_in", stopped)
    with pytest.raises(KeyboardInterrupt):  # the new set is recorded, the old data/ (as many images) still there
        synthesize(out, per_class=3, seed=9, datasets=["svhn"], state_dir=state)
    monkeypatch.setattr(layout, "_swap_in", real)
    synthesize(out, per_class=3, seed=9, datasets=["svhn"], state_dir=state, replace=False)
    synthesize(tmp_path / "straight", per_class=3, seed=9, datasets=["svhn"])
    assert _files(out) == _files(tmp_path / "straight")


def test_val_fraction_zero_gives_empty_val_csv(tmp_path):
    counts = synthesize(tmp_path, per_class=2, val_fraction=0.0, datasets=["mnistm"])
    assert counts == {"mnistm": {"train": 20, "val": 0}}
    assert (tmp_path / "digits" / "mnistm" / "val.csv").read_text() == "image_name,label\n"


def test_progress_callback_counts_every_image(tmp_path):
    seen: list[int] = []
    synthesize(tmp_path, per_class=3, on_progress=seen.append)
    assert sum(seen) == 60


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"per_class": 0}, ["--per-class", "0"]),
        ({"per_class": -3}, ["--per-class", "-3"]),
        ({"seed": -1}, ["--seed", "-1"]),
        ({"val_fraction": 1.0}, ["--val-fraction", "1.0"]),
        ({"val_fraction": -0.1}, ["--val-fraction", "-0.1"]),
        ({"datasets": ["mnistm", "usps"]}, ["--datasets", "usps"]),
        ({"datasets": []}, ["--datasets", "mnistm, svhn"]),
    ],
)
def test_bad_arguments_raise_usage_error_naming_the_value(tmp_path, kwargs, needles):
    from hw2cli.errors import as_option

    with pytest.raises(UsageError) as info:
        synthesize(tmp_path / "out", **kwargs)
    message = info.value.render(as_option)  # as the CLI shows it; the API names the parameter instead
    for needle in needles:
        assert needle in message
    assert f"`{needles[0][2:].replace('-', '_')}`" in str(info.value)
    assert message.endswith(".") and message.count(". ") == 0
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_is_a_usage_error(tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    with pytest.raises(UsageError, match="taken"):
        synthesize(target, per_class=1)


def test_unwritable_output_is_a_run_error_naming_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunError) as info:
        synthesize(blocker / "sub", per_class=1)
    assert str(blocker) in str(info.value)


def test_the_two_looks_differ(tmp_path):
    """SVHN crops have neighbouring digits cut by the left/right edges (more variation in the
    side strips than in the top/bottom strips); MNIST-M backgrounds are busy colour textures
    (more variation in the top/bottom strips, where the digit rarely reaches)."""
    synthesize(tmp_path, per_class=10, seed=0)
    stats = {}
    for name in ("mnistm", "svhn"):
        x = _load_all(tmp_path / "digits" / name)  # [n, 28, 28, 3]
        sides = np.concatenate([x[:, :, :3], x[:, :, -3:]], axis=2).reshape(len(x), -1).std(axis=1)
        ends = np.concatenate([x[:, :3], x[:, -3:]], axis=1).reshape(len(x), -1).std(axis=1)
        stats[name] = {
            "side_heavy": float(np.mean(sides > 1.2 * ends)),
            "background_std": float(np.median(ends)),
        }
    assert stats["svhn"]["side_heavy"] > stats["mnistm"]["side_heavy"] + 0.15, stats
    assert stats["mnistm"]["background_std"] > 1.2 * stats["svhn"]["background_std"], stats


# --------------------------------------------------------------------------- the CLI commands


def test_cli_synth_then_check(tmp_path):
    from hw2cli.plugins.data import app

    runner = CliRunner()
    result = runner.invoke(app, ["synth", str(tmp_path / "d"), "--per-class", "2", "--datasets", "svhn"])
    assert result.exit_code == 0, result.output
    assert "svhn" in result.output and "wrote" in result.output
    assert not (tmp_path / "d" / "digits" / "mnistm").exists()
    result = runner.invoke(app, ["check", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "svhn" in result.output and "readable" in result.output


def test_cli_synth_bad_value_raises_usage_error(tmp_path):
    from hw2cli.plugins.data import app

    result = CliRunner().invoke(app, ["synth", str(tmp_path), "--per-class", "0"])
    assert result.exit_code == 2  # Typer's own bound: a usage error before the command runs
    assert "--per-class" in result.output and "greater than or equal to 1" in result.output
    result = CliRunner().invoke(app, ["synth", str(tmp_path), "--datasets", "mnist"])
    assert isinstance(result.exception, UsageError)
    assert "'mnist'" in str(result.exception)


def test_synth_help_has_examples():
    from hw2cli.plugins.data import app

    result = CliRunner().invoke(app, ["synth", "--help"])
    assert result.exit_code == 0
    assert "hw2 data synth hw2_data --per-class 200" in result.output
