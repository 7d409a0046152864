"""The homework's digit folders, as a PyTorch dataset.

A dataset folder (``hw2_data/digits/mnistm``, ``hw2_data/digits/svhn``) holds ``data/*.png`` and
one CSV per split (``train.csv``, ``val.csv``) with the header ``image_name,label``, where
``image_name`` is relative to ``data/`` and ``label`` is a digit 0-9.

Typical use::

    ds = DigitsDataset(root / "mnistm", "train")               # items (image, label)
    both = DigitsDataset.from_many([root / "mnistm", root / "svhn"], "train")
    image, label, dataset_id = both[0]                         # dataset_id: 0 mnistm, 1 svhn
    condition = dataset_id * 10 + label                        # P1's 20 classes

Every problem with the folder is found when the dataset is built (missing or malformed CSV,
bad label, missing image) and raised as :class:`hw2cli.errors.UsageError` naming the file and
line; an unreadable image is reported when it is loaded, or up front by :meth:`DigitsDataset.verify`.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from hw2cli.errors import UsageError

HEADER = ("image_name", "label")
SPLITS = ("train", "val")
NUM_CLASSES = 10
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def load_image(path: str | os.PathLike[str]) -> Any:
    """Open an image file as a fully loaded PIL RGB image.

    Raises :class:`UsageError` naming the file when it is missing or not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as exc:
        raise UsageError(f"the image {path} does not exist.") from exc
    except UnidentifiedImageError as exc:
        raise UsageError(f"{path} is not an image file Pillow can read.") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise UsageError(f"the image {path} is corrupt or truncated ({exc}).") from exc


def to_tensor(image: Any) -> torch.Tensor:
    """A PIL RGB image as a float tensor [3, H, W] in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def _csv_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("*.csv") if p.is_file())


def read_split(root: Path, split: str, problems: list[str] | None = None) -> tuple[list[str], list[int], list[int]]:
    """Parse and check ``root/<split>.csv``; return image names, labels and their CSV line numbers.

    A bad row raises a :class:`UsageError`; with ``problems``, each bad row's sentence is appended
    there instead and the row skipped, so ``hw2 data check`` can list them all at once."""
    csv_path = root / f"{split}.csv"
    if not csv_path.is_file():
        found = _csv_files(root)
        has = f"it has {', '.join(found)}" if found else "it has no split CSV files"
        raise UsageError(f"{root} has no {split}.csv ({has}).")
    names: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            while header is not None and not header:  # leading blank lines
                header = next(reader, None)
            if header is None:
                raise UsageError(f"{csv_path} is empty; expected the header {','.join(HEADER)}.")
            if tuple(h.strip() for h in header) != HEADER:
                raise UsageError(
                    f"{csv_path}, line {reader.line_num}: expected the header {','.join(HEADER)}, "
                    f"got {','.join(header)!r}."
                )
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                problem, entry = _parse_row(row)
                if problem is not None:
                    message = f"{csv_path}, line {line}: {problem}."
                    if problems is None:
                        raise UsageError(message)
                    problems.append(message)
                    continue
                assert entry is not None
                names.append(entry[0])
                labels.append(entry[1])
                lines.append(line)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read {csv_path}: {exc}.") from exc
    return names, labels, lines


def _parse_row(row: list[str]) -> tuple[str | None, tuple[str, int] | None]:
    """``(problem, None)`` for a bad row, else ``(None, (image name, label))``."""
    if len(row) != 2:
        return f"expected 2 columns (image_name,label), got {len(row)}", None
    name, raw_label = row[0].strip(), row[1].strip()
    if not name:
        return "the image name is empty", None
    if Path(name).is_absolute() or ".." in Path(name).parts:  # names are relative to data/
        return f"the image name {name!r} leads outside data/; expected a name such as 00000.png", None
    try:
        label = int(raw_label)
    except ValueError:
        return f"the label {raw_label!r} is not a whole number", None
    if not 0 <= label < NUM_CLASSES:
        return f"the label {label} is outside 0-9", None
    return None, (name, label)


class DigitsDataset(Dataset):
    """One split of one digits folder.

    ``DigitsDataset(root, split="train", transform=None, dataset_id=None)``:

    * ``root``: the dataset folder (holding ``data/`` and ``<split>.csv``).
    * ``split``: the CSV's stem, ``"train"`` or ``"val"`` (any other CSV beside them works too).
    * ``transform``: called on the PIL RGB image; without one an item's image is a float tensor
      ``[3, H, W]`` in ``[0, 1]`` (``[3, 28, 28]`` for the homework data).
    * ``dataset_id``: ``None`` gives items ``(image, label)``; an int gives items
      ``(image, label, dataset_id)``, for training on several datasets at once
      (see :meth:`from_many`).

    Attributes: ``names`` (file names relative to ``data/``), ``labels`` (ints 0-9), ``paths``,
    ``root``, ``split``, ``csv_path``, ``dataset_id``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        dataset_id: int | None = None,
    ) -> None:
        root = Path(root)
        if not _SPLIT_RE.match(split):
            raise UsageError(f"the split must be a plain name such as train or val, got {split!r}.")
        if not root.exists():
            raise UsageError(f"the dataset folder {root} does not exist.")
        if not root.is_dir():
            raise UsageError(f"the dataset folder {root} is a file, not a folder.")
        names, labels, lines = read_split(root, split)
        data = root / "data"
        if not data.is_dir():
            raise UsageError(f"{root} has no data/ folder holding the images listed in {split}.csv.")
        self.root = root
        self.split = split
        self.csv_path = root / f"{split}.csv"
        self.transform = transform
        self.dataset_id = dataset_id
        self.names = names
        self.labels = labels
        self.paths = [data / name for name in names]
        self._lines = lines
        self._check_files_exist(data)

    def _check_files_exist(self, data: Path) -> None:
        try:
            present = set(os.listdir(data))
        except OSError as exc:
            raise UsageError(f"cannot list {data}: {exc.strerror or exc}.") from exc
        for name, path, line in zip(self.names, self.paths, self._lines, strict=True):
            nested = "/" in name or "\\" in name
            if path.is_file() if nested else name in present:
                continue
            raise UsageError(f"{self.csv_path}, line {line}: the image {path} does not exist.")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        image = load_image(self.paths[index])
        x = self.transform(image) if self.transform is not None else to_tensor(image)
        if self.dataset_id is None:
            return x, self.labels[index]
        return x, self.labels[index], self.dataset_id

    def class_counts(self) -> list[int]:
        """Number of images of each digit 0-9."""
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=NUM_CLASSES).tolist()

    def verify(self, on_progress: Callable[[int], None] | None = None) -> int:
        """Open and decode every image; raise :class:`UsageError` at the first bad one.

        Images that decode but are not the homework's 28×28 RGB are listed in ``off_spec`` as
        ``(name, "WxH MODE")`` (training and grading resize and convert them, so they are not an
        error, but they are a sign of the wrong data). Returns the number of images checked;
        ``on_progress(1)`` is called after each.
        """
        from PIL import Image

        self.off_spec: list[tuple[str, str]] = []
        for name, path, line in zip(self.names, self.paths, self._lines, strict=True):
            try:
                with Image.open(path) as im:
                    size, mode = im.size, im.mode
                    im.load()
            except FileNotFoundError:
                raise UsageError(f"{self.csv_path}, line {line}: the image {path} does not exist.") from None
            except Exception as exc:  # not an image, truncated, corrupt
                raise UsageError(f"{self.csv_path}, line {line}: {path} is not a readable image ({exc}).") from None
            if size != (28, 28) or mode != "RGB":
                self.off_spec.append((name, f"{size[0]}x{size[1]} {mode}"))
            if on_progress is not None:
                on_progress(1)
        return len(self.paths)

    @classmethod
    def from_many(
        cls,
        roots: Sequence[str | os.PathLike[str]],
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
    ) -> DigitsConcat:
        """Several dataset folders as one dataset with items ``(image, label, dataset_id)``,
        ``dataset_id`` being the folder's position in ``roots``."""
        if not roots:
            raise UsageError("give at least one digits dataset folder.")
        return DigitsConcat([cls(root, split, transform, dataset_id=i) for i, root in enumerate(roots)])

    def __repr__(self) -> str:
        return f"DigitsDataset({str(self.root)!r}, split={self.split!r}, n={len(self)})"


class DigitsConcat(ConcatDataset):
    """Concatenated :class:`DigitsDataset` s (items ``(image, label, dataset_id)``), with the
    ``labels`` and ``dataset_ids`` of all items in order (for samplers and class counts)."""

    datasets: list[DigitsDataset]

    @property
    def labels(self) -> list[int]:
        return [label for ds in self.datasets for label in ds.labels]

    @property
    def dataset_ids(self) -> list[int]:
        return [int(ds.dataset_id or 0) for ds in self.datasets for _ in ds.labels]

    @property
    def roots(self) -> list[Path]:
        return [ds.root for ds in self.datasets]


def _is_dataset_folder(path: Path) -> bool:
    return (path / "data").is_dir() or any((path / f"{s}.csv").is_file() for s in SPLITS)


def find_dataset_roots(path: str | os.PathLike[str]) -> list[Path]:
    """The dataset folders under ``path``: ``path`` itself when it is one (``.../digits/mnistm``),
    else its sub-folders that are (``.../digits``), also looking inside ``path/digits``
    (``hw2_data``). Raises :class:`UsageError` when there are none."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"the folder {path} does not exist.")
    if not path.is_dir():
        raise UsageError(f"{path} is a file; give a digits folder.")
    if _is_dataset_folder(path):
        return [path]
    base = path / "digits" if (path / "digits").is_dir() else path
    found = sorted(p for p in base.iterdir() if p.is_dir() and _is_dataset_folder(p))
    if not found:
        raise UsageError(
            f"{path} holds no digits dataset: expected data/ with train.csv and val.csv, "
            "or folders such as mnistm/ and svhn/ holding them."
        )
    return found
