"""Labelled image sets for CLIP zero-shot classification, in the three layouts people have.

:func:`load_dataset` reads the homework's folder of ``<classid>_<idx>.png`` with an
``id2label.json`` (beside or inside the folder), an ImageFolder tree (one sub-folder per class),
or a CSV of ``path,label``; every problem is one sentence naming the file or entry.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hw2cli.data import IMAGE_SUFFIXES
from hw2cli.errors import UsageError

LABELS_FILE = "id2label.json"
_PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "image_name", "img")
_LABEL_COLUMNS = ("label", "class", "class_name", "classname", "target", "id", "class_id")


@dataclass
class LabelledImages:
    """Image files, each with the index of its class in ``classnames`` (the zero-shot label set)."""

    files: list[Path]
    labels: list[int]
    classnames: list[str]
    root: Path
    layout: str  # homework | imagefolder | csv
    labels_file: Path | None = None
    skipped: list[Path] = field(default_factory=list)  # named like images, but broken links or folders

    def display_name(self, i: int) -> str:
        try:
            return self.files[i].relative_to(self.root).as_posix()
        except ValueError:
            return str(self.files[i])


def find_labels_file(data: Path) -> Path | None:
    """``id2label.json`` beside the data (the homework's ``clip_zeroshot/id2label.json`` next to
    ``val/``) or inside it; for a CSV, beside the CSV or one folder up."""
    if data.is_file():
        candidates = [data.parent / LABELS_FILE, data.parent.parent / LABELS_FILE]
    else:
        candidates = [data.parent / LABELS_FILE, data / LABELS_FILE]
    return next((c for c in candidates if c.is_file()), None)


def read_id2label(path: Path) -> dict[str, str]:
    """``{"<classid>": "<class name>"}``, in class-id order when the ids are whole numbers."""
    if path.is_dir():
        raise UsageError(f"{{opt:labels}} {path} is a folder; pass the homework's {LABELS_FILE} file.")
    if not path.is_file():
        raise UsageError(f"{{opt:labels}} {path} does not exist; pass the homework's {LABELS_FILE}.")
    repeated: list[str] = []

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:  # JSON allows a key twice; the last wins
        counts = Counter(k for k, _ in pairs)
        repeated.extend(k for k, _ in pairs if counts[k] > 1)
        return dict(pairs)

    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=no_repeats)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not readable JSON: {exc}.") from exc
    if isinstance(data, dict) and repeated and repeated[-1] in data:  # the outermost object is built last
        raise UsageError(f"{path}: class id {repeated[-1]!r} appears more than once; keep one entry per class id.")
    if not isinstance(data, dict) or not data:
        raise UsageError(f'{path} must be a JSON object mapping class ids to names, e.g. {{"0": "apple"}}.')
    for key, value in data.items():
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"{path}: class {key!r} maps to {value!r}; expected a class name.")
    items = [(str(k).strip(), v.strip()) for k, v in data.items()]
    if all(_is_int(k) for k, _ in items):
        items.sort(key=lambda kv: int(kv[0]))
        spelled = Counter(int(k) for k, _ in items)
        same = next((k for k, _ in items if spelled[int(k)] > 1), None)
        if same is not None:
            raise UsageError(f"{path}: class id {int(same)} appears more than once ('0' and '00' are one id).")
        items = [(str(int(k)), v) for k, v in items]
    names = [v for _, v in items]
    dupes = [n for n, c in Counter(names).items() if c > 1]
    if dupes:
        raise UsageError(f"{path}: class name {dupes[0]!r} appears more than once; each class needs its own name.")
    return dict(items)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _natural_key(path: Path) -> list[Any]:
    """``3_2.png`` before ``3_10.png``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)


def _not_images(folder: Path) -> list[Path]:
    """Entries of ``folder`` named like images that are not files: broken links, folders."""
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_file()), key=_natural_key
    )


def load_dataset(data: str | Path, labels: str | Path | None = None) -> LabelledImages:
    """The labelled images of ``data`` (homework folder, ImageFolder tree or CSV), see the module doc.

    ``labels``: an ``id2label.json``; by default the one beside or inside ``data``. Every class of
    the JSON is a candidate label, whether or not it has images.
    """
    data = Path(data)
    if not data.exists():
        raise UsageError(f"{{opt:data}} {data} does not exist; pass the folder of validation images (or a CSV).")
    labels_path = Path(labels) if labels is not None else find_labels_file(data)
    id2label = read_id2label(labels_path) if labels_path is not None else None
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise UsageError(
                f"{{opt:data}} {data} is a file but not a .csv; pass a folder of images or a CSV of path,label."
            )
        return _load_csv(data, id2label, labels_path)
    files = _images_in(data)
    subfolders = sorted(p for p in data.iterdir() if p.is_dir() and _images_in(p))
    if not files and len(subfolders) == 1:
        raise UsageError(
            f"{data} holds no images and one sub-folder, {subfolders[0].name}; pass {{opt:data}} {subfolders[0]} "
            "(an ImageFolder tree needs a sub-folder per class)."
        )
    if not files and subfolders:
        dataset = _load_imagefolder(data, subfolders, id2label, labels_path, explicit=labels is not None)
        dataset.skipped = [p for folder in subfolders for p in _not_images(folder)]
        return dataset
    if not files:
        raise UsageError(
            f"{data} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); pass the folder of <classid>_<idx>.png "
            "files, an ImageFolder tree or a CSV of path,label."
        )
    if id2label is None:
        raise UsageError(
            f"no {LABELS_FILE} beside or inside {data}; pass {{opt:labels}} with the file mapping class ids to names."
        )
    ids = list(id2label)
    index = {k: i for i, k in enumerate(ids)}
    out_labels = []
    for f in files:
        prefix = f.name.split("_", 1)[0]
        if "_" not in f.stem or not _is_int(prefix):
            raise UsageError(f"{f} is not named <classid>_<idx>{f.suffix} (the class id before the first '_').")
        key = str(int(prefix))
        if key not in index:
            raise UsageError(f"class id {key} of {f.name} is not in {labels_path}; expected one of {_few(ids)}.")
        out_labels.append(index[key])
    return LabelledImages(files, out_labels, list(id2label.values()), data, "homework", labels_path, _not_images(data))


def _few(items: Sequence[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (", …" if len(items) > n else "")


class _Resolver:
    """Maps a label (class id or class name) to its class index."""

    def __init__(self, id2label: dict[str, str] | None, labels_path: Path | None, found: Sequence[str]) -> None:
        self.labels_path = labels_path
        if id2label is not None:
            self.classnames = list(id2label.values())
            self.index = {name: i for i, name in enumerate(self.classnames)}
            self.index.update({k: i for i, k in enumerate(id2label)})
        else:
            self.classnames = sorted(set(found))
            self.index = {name: i for i, name in enumerate(self.classnames)}

    def __call__(self, label: str, where: str) -> int:
        key = label.strip()
        if key in self.index:
            return self.index[key]
        if _is_int(key) and str(int(key)) in self.index:
            return self.index[str(int(key))]
        source = self.labels_path or "the labels found"
        raise UsageError(f"label {key!r} of {where} is not a class id or name in {source}.")


def _load_imagefolder(
    data: Path, subfolders: list[Path], id2label: dict[str, str] | None, labels_path: Path | None, explicit: bool
) -> LabelledImages:
    names = [p.name for p in subfolders]
    if id2label is not None and not explicit:
        known = set(id2label) | set(id2label.values())
        if not all(n in known or (_is_int(n) and str(int(n)) in known) for n in names):
            id2label, labels_path = None, None  # a JSON found nearby that is not about these folders
    if id2label is None and all(_is_int(n) for n in names):
        raise UsageError(
            f"the sub-folders of {data} are class ids; pass {{opt:labels}} with the {LABELS_FILE} naming them."
        )
    resolve = _Resolver(id2label, labels_path, names)
    files, labels = [], []
    for folder in subfolders:
        cls = resolve(folder.name, f"folder {folder}")
        for f in _images_in(folder):
            files.append(f)
            labels.append(cls)
    return LabelledImages(files, labels, resolve.classnames, data, "imagefolder", labels_path)


def _load_csv(path: Path, id2label: dict[str, str] | None, labels_path: Path | None) -> LabelledImages:
    try:  # each row with its line in the file (blank lines are skipped, not renumbered)
        reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig")))
        numbered = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read {path} as a CSV: {exc}.") from exc
    rows = [r for _, r in numbered]
    start, path_col, label_col = 0, 0, 1
    if rows:
        header = [c.strip().lower() for c in rows[0]]
        if header and header[0] in _PATH_COLUMNS or any(h in _LABEL_COLUMNS for h in header[1:]):
            path_col = next((i for i, h in enumerate(header) if h in _PATH_COLUMNS), 0)
            label_col = next((i for i, h in enumerate(header) if h in _LABEL_COLUMNS and i != path_col), 1)
            start = 1
    entries = []
    for line, row in numbered[start:]:
        if len(row) <= max(path_col, label_col):
            raise UsageError(f"{path} line {line} has {len(row)} column(s); expected path,label.")
        entries.append((line, row[path_col].strip(), row[label_col].strip()))
    if not entries:
        raise UsageError(f"{path} lists no images; expected rows of path,label.")
    if id2label is None and all(_is_int(label) for _, _, label in entries):
        raise UsageError(f"the labels in {path} are class ids; pass {{opt:labels}} with the {LABELS_FILE} naming them.")
    resolve = _Resolver(id2label, labels_path, [label for _, _, label in entries])
    files, labels = [], []
    first: dict[Path, int] = {}
    for line, rel, label in entries:
        f = Path(rel) if Path(rel).is_absolute() else path.parent / rel
        if f.is_dir():
            raise UsageError(f"{path} line {line}: {rel} is a folder, not an image; list image files.")
        if not f.is_file():
            raise UsageError(f"{path} line {line}: image {rel} does not exist (paths are relative to the CSV).")
        if f.resolve() in first:
            raise UsageError(f"{path} lines {first[f.resolve()]} and {line} both list the image {rel}; list each once.")
        first[f.resolve()] = line
        files.append(f)
        labels.append(resolve(label, f"{path} line {line}"))
    return LabelledImages(files, labels, resolve.classnames, path.parent, "csv", labels_path)
