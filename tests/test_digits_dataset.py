"""DigitsDataset on hand-made folders: a correct one loads; every problem names file and line."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hw2cli.data.digits import DigitsDataset, find_dataset_roots, load_image
from hw2cli.errors import UsageError


def _png(path: Path, value: int = 0, mode: str = "RGB", size: int = 28) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((size, size, 3), value, dtype=np.uint8)
    array[4:20, 10:14] = 255 - value
    image = Image.fromarray(array, "RGB")
    image.convert(mode).save(path)


def _folder(root: Path, csvs: dict[str, str], images: dict[str, int] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    for name, value in (images or {}).items():
        _png(root / "data" / name, value)
    for split, text in csvs.items():
        (root / f"{split}.csv").write_text(text)
    return root


GOOD_TRAIN = "image_name,label\n00000.png,3\n00001.png,7\n00002.png,0\n"
GOOD_VAL = "image_name,label\n00003.png,9\n"
GOOD_IMAGES = {"00000.png": 10, "00001.png": 50, "00002.png": 90, "00003.png": 130}


def _good(root: Path) -> Path:
    return _folder(root, {"train": GOOD_TRAIN, "val": GOOD_VAL}, GOOD_IMAGES)


def test_correct_folder_loads(tmp_path):
    root = _good(tmp_path / "mnistm")
    ds = DigitsDataset(root, "train")
    assert len(ds) == 3
    assert ds.names == ["00000.png", "00001.png", "00002.png"]
    assert ds.labels == [3, 7, 0]
    assert ds.class_counts() == [1, 0, 0, 1, 0, 0, 0, 1, 0, 0]
    image, label = ds[1]
    assert isinstance(label, int) and label == 7
    assert image.shape == (3, 28, 28) and image.dtype == torch.float32
    assert abs(float(image[0, 0, 0]) - 50 / 255) < 1e-6
    assert float(image.max()) <= 1.0 and float(image.min()) >= 0.0
    assert ds.verify() == 3
    assert len(DigitsDataset(root, "val")) == 1


def test_transform_and_dataset_id(tmp_path):
    root = _good(tmp_path / "svhn")
    ds = DigitsDataset(root, "val", transform=lambda im: im.size, dataset_id=1)
    assert ds[0] == ((28, 28), 9, 1)


def test_from_many_tags_each_item_with_its_dataset(tmp_path):
    a = _good(tmp_path / "mnistm")
    b = _good(tmp_path / "svhn")
    both = DigitsDataset.from_many([a, b], "train")
    assert len(both) == 6
    assert [both[i][2] for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert both.labels == [3, 7, 0, 3, 7, 0]
    assert both.dataset_ids == [0, 0, 0, 1, 1, 1]
    assert both.roots == [a, b]
    with pytest.raises(UsageError, match="at least one"):
        DigitsDataset.from_many([])


def test_greyscale_and_palette_images_load_as_rgb(tmp_path):
    _png(tmp_path / "g.png", 40, mode="L")
    _png(tmp_path / "p.png", 40, mode="P")
    for name in ("g.png", "p.png"):
        image = load_image(tmp_path / name)
        assert image.mode == "RGB" and image.size == (28, 28)


def test_missing_split_csv_says_which_exist(tmp_path):
    root = _folder(tmp_path / "mnistm", {"train": GOOD_TRAIN}, GOOD_IMAGES)
    with pytest.raises(UsageError) as info:
        DigitsDataset(root, "val")
    message = str(info.value)
    assert "val.csv" in message and "train.csv" in message and str(root) in message


def test_no_csv_at_all(tmp_path):
    root = _folder(tmp_path / "mnistm", {}, GOOD_IMAGES)
    with pytest.raises(UsageError, match="no split CSV files"):
        DigitsDataset(root, "train")


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("", ["is empty", "image_name,label"]),
        ("name,label\n00000.png,1\n", ["line 1", "image_name,label", "'name,label'"]),
        ("image_name,label,extra\n00000.png,1,2\n", ["line 1", "image_name,label"]),
        ("image_name,label\n00000.png,1\n00001.png,2,9\n", ["line 3", "2 columns", "got 3"]),
        ("image_name,label\n00000.png\n", ["line 2", "2 columns", "got 1"]),
        ("image_name,label\n00000.png,seven\n", ["line 2", "'seven'", "not a whole number"]),
        ("image_name,label\n00000.png,1.5\n", ["line 2", "'1.5'"]),
        ("image_name,label\n00000.png,1\n00001.png,10\n", ["line 3", "label 10", "0-9"]),
        ("image_name,label\n00000.png,-1\n", ["line 2", "label -1", "0-9"]),
        ("image_name,label\n,4\n", ["line 2", "image name is empty"]),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path, text, needles):
    root = _folder(tmp_path / "mnistm", {"train": text}, GOOD_IMAGES)
    with pytest.raises(UsageError) as info:
        DigitsDataset(root, "train")
    message = str(info.value)
    assert str(root / "train.csv") in message
    for needle in needles:
        assert needle in message, message


def test_blank_lines_and_spaces_are_tolerated(tmp_path):
    root = _folder(tmp_path / "m", {"train": "image_name, label\n00000.png, 3\n\n00001.png,7\n\n"}, GOOD_IMAGES)
    assert DigitsDataset(root, "train").labels == [3, 7]


def test_listed_image_missing_on_disk(tmp_path):
    text = "image_name,label\n00000.png,3\n00001.png,7\n04242.png,1\n"
    root = _folder(tmp_path / "svhn", {"train": text}, GOOD_IMAGES)
    with pytest.raises(UsageError) as info:
        DigitsDataset(root, "train")
    message = str(info.value)
    assert str(root / "train.csv") in message and "line 4" in message
    assert str(root / "data" / "04242.png") in message and "does not exist" in message


def test_missing_root_or_data_folder(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        DigitsDataset(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        DigitsDataset(tmp_path / "file")
    root = tmp_path / "nodata"
    root.mkdir()
    (root / "train.csv").write_text(GOOD_TRAIN)
    with pytest.raises(UsageError, match="data/"):
        DigitsDataset(root)
    with pytest.raises(UsageError, match="split"):
        DigitsDataset(_good(tmp_path / "ok"), "../train")


def _corrupt_folder(root: Path) -> Path:
    root = _good(root)
    (root / "data" / "00001.png").write_bytes(b"this is not a png at all")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(buf, "PNG")
    (root / "data" / "00002.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return root


def test_corrupt_image_is_reported_on_load_with_its_name(tmp_path):
    root = _corrupt_folder(tmp_path / "mnistm")
    ds = DigitsDataset(root, "train")  # existence is checked up front, decoding on load
    ds[0]
    with pytest.raises(UsageError) as info:
        ds[1]
    assert str(root / "data" / "00001.png") in str(info.value)
    with pytest.raises(UsageError) as info:
        ds[2]
    assert str(root / "data" / "00002.png") in str(info.value)


def test_verify_reports_the_first_bad_image_with_its_line(tmp_path):
    root = _corrupt_folder(tmp_path / "mnistm")
    seen: list[int] = []
    with pytest.raises(UsageError) as info:
        DigitsDataset(root, "train").verify(on_progress=seen.append)
    message = str(info.value)
    assert str(root / "train.csv") in message and "line 3" in message
    assert "00001.png" in message and "00002.png" not in message
    assert seen == [1]


def test_load_image_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UsageError, match="bad.png"):
        load_image(tmp_path / "bad.png")


def test_find_dataset_roots(tmp_path):
    hw2_data = tmp_path / "hw2_data"
    a = _good(hw2_data / "digits" / "mnistm")
    b = _good(hw2_data / "digits" / "svhn")
    (hw2_data / "digits" / "other").mkdir()
    assert find_dataset_roots(a) == [a]
    assert find_dataset_roots(hw2_data / "digits") == [a, b]
    assert find_dataset_roots(hw2_data) == [a, b]
    with pytest.raises(UsageError, match="holds no digits dataset"):
        find_dataset_roots(hw2_data / "digits" / "other")
    with pytest.raises(UsageError, match="does not exist"):
        find_dataset_roots(tmp_path / "nope")


def test_check_command(tmp_path):
    from hw2cli.plugins.data import app

    root = _good(tmp_path / "digits" / "mnistm")
    result = CliRunner().invoke(app, ["check", str(root)])
    assert result.exit_code == 0, result.output
    assert "mnistm" in result.output and "train" in result.output and "val" in result.output
    assert "4 images in 2 splits" in result.output

    bad = _corrupt_folder(tmp_path / "bad" / "svhn")
    result = CliRunner().invoke(app, ["check", str(tmp_path / "bad")])
    assert isinstance(result.exception, UsageError)
    assert str(bad / "data" / "00001.png") in str(result.exception)
