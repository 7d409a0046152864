"""P3a core: CLIP zero-shot classification of a labelled image set, with prompt ensembles and a
disk cache of the class text features.

Data layouts (:func:`load_dataset`): the homework's folder of ``<classid>_<idx>.png`` with an
``id2label.json``, an ImageFolder tree (one sub-folder per class), or a CSV of ``path,label``.
The classifier (:func:`ensemble_text_features`): for every class and template the prompt
``template.replace("{}", name)`` (``_`` in a name read as a space), each prompt's text feature
L2-normalised, averaged over the templates of a class, and renormalised. The prediction is the
argmax of ``logit_scale · cos``; the confidence its softmax probability.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hw2cli.errors import UsageError
from hw2cli.io.atomic import atomic_path, save_safetensors, write_json, write_text
from hw2cli.pretrained.clip import ClipModel

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
LABELS_FILE = "id2label.json"
SINGLE_TEMPLATE = "a photo of a {}."
# open_clip ships the ImageNet templates (open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES)
# but no CIFAR ones: these are the 18 CIFAR-10/100 templates of the CLIP paper's prompt notebook
# (github.com/openai/CLIP, data/prompts.md), kept here as data.
CIFAR_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
)
TEMPLATE_SETS = ("single", "cifar", "imagenet")
TEXT_CACHE_DIR = "clip_text_cache"
_CACHE_VERSION = 1
_PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "image_name", "img")
_LABEL_COLUMNS = ("label", "class", "class_name", "classname", "target", "id", "class_id")


# --------------------------------------------------------------------------- data


@dataclass
class LabelledImages:
    """Image files, each with the index of its class in ``classnames`` (the zero-shot label set)."""

    files: list[Path]
    labels: list[int]
    classnames: list[str]
    root: Path
    layout: str  # homework | imagefolder | csv
    labels_file: Path | None = None

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
    if not path.is_file():
        raise UsageError(f"--labels {path} does not exist; pass the homework's {LABELS_FILE}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not readable JSON: {exc}.") from exc
    if not isinstance(data, dict) or not data:
        raise UsageError(f'{path} must be a JSON object mapping class ids to names, e.g. {{"0": "apple"}}.')
    for key, value in data.items():
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"{path}: class {key!r} maps to {value!r}; expected a class name.")
    items = [(str(k).strip(), v.strip()) for k, v in data.items()]
    if all(_is_int(k) for k, _ in items):
        items.sort(key=lambda kv: int(kv[0]))
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


def load_dataset(data: str | Path, labels: str | Path | None = None) -> LabelledImages:
    """The labelled images of ``data`` (homework folder, ImageFolder tree or CSV), see the module doc.

    ``labels``: an ``id2label.json``; by default the one beside or inside ``data``. Every class of
    the JSON is a candidate label, whether or not it has images.
    """
    data = Path(data)
    if not data.exists():
        raise UsageError(f"--data {data} does not exist; pass the folder of validation images (or a CSV).")
    labels_path = Path(labels) if labels is not None else find_labels_file(data)
    id2label = read_id2label(labels_path) if labels_path is not None else None
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise UsageError(f"--data {data} is a file but not a .csv; pass a folder of images or a CSV of path,label.")
        return _load_csv(data, id2label, labels_path)
    files = _images_in(data)
    subfolders = sorted(p for p in data.iterdir() if p.is_dir() and _images_in(p))
    if not files and len(subfolders) == 1:
        raise UsageError(
            f"{data} holds no images and one sub-folder, {subfolders[0].name}; pass --data {subfolders[0]} "
            "(an ImageFolder tree needs a sub-folder per class)."
        )
    if not files and subfolders:
        return _load_imagefolder(data, subfolders, id2label, labels_path, explicit=labels is not None)
    if not files:
        raise UsageError(
            f"{data} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); pass the folder of <classid>_<idx>.png "
            "files, an ImageFolder tree or a CSV of path,label."
        )
    if id2label is None:
        raise UsageError(
            f"no {LABELS_FILE} beside or inside {data}; pass --labels with the file mapping class ids to names."
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
    return LabelledImages(files, out_labels, list(id2label.values()), data, "homework", labels_path)


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
        raise UsageError(f"the sub-folders of {data} are class ids; pass --labels with the {LABELS_FILE} naming them.")
    resolve = _Resolver(id2label, labels_path, names)
    files, labels = [], []
    for folder in subfolders:
        cls = resolve(folder.name, f"folder {folder}")
        for f in _images_in(folder):
            files.append(f)
            labels.append(cls)
    return LabelledImages(files, labels, resolve.classnames, data, "imagefolder", labels_path)


def _load_csv(path: Path, id2label: dict[str, str] | None, labels_path: Path | None) -> LabelledImages:
    try:
        rows = [r for r in csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read {path} as a CSV: {exc}.") from exc
    start, path_col, label_col = 0, 0, 1
    if rows:
        header = [c.strip().lower() for c in rows[0]]
        if header and header[0] in _PATH_COLUMNS or any(h in _LABEL_COLUMNS for h in header[1:]):
            path_col = next((i for i, h in enumerate(header) if h in _PATH_COLUMNS), 0)
            label_col = next((i for i, h in enumerate(header) if h in _LABEL_COLUMNS and i != path_col), 1)
            start = 1
    entries = []
    for line, row in enumerate(rows[start:], start=start + 1):
        if len(row) <= max(path_col, label_col):
            raise UsageError(f"{path} line {line} has {len(row)} column(s); expected path,label.")
        entries.append((line, row[path_col].strip(), row[label_col].strip()))
    if not entries:
        raise UsageError(f"{path} lists no images; expected rows of path,label.")
    if id2label is None and all(_is_int(label) for _, _, label in entries):
        raise UsageError(f"the labels in {path} are class ids; pass --labels with the {LABELS_FILE} naming them.")
    resolve = _Resolver(id2label, labels_path, [label for _, _, label in entries])
    files, labels = [], []
    for line, rel, label in entries:
        f = Path(rel) if Path(rel).is_absolute() else path.parent / rel
        if not f.is_file():
            raise UsageError(f"{path} line {line}: image {rel} does not exist (paths are relative to the CSV).")
        files.append(f)
        labels.append(resolve(label, f"{path} line {line}"))
    return LabelledImages(files, labels, resolve.classnames, path.parent, "csv", labels_path)


# --------------------------------------------------------------------------- prompts


def resolve_templates(spec: str | Path) -> tuple[str, list[str]]:
    """``single``, ``cifar``, ``imagenet`` or a file of one template per line, each with ``{}``.

    Returns (a name for reports, the templates). Blank lines and lines starting with ``#`` are skipped.
    """
    spec = str(spec)
    if spec == "single":
        return "single", [SINGLE_TEMPLATE]
    if spec == "cifar":
        return "cifar", list(CIFAR_TEMPLATES)
    if spec == "imagenet":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return "imagenet", [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--templates {spec!r} is not single, cifar, imagenet or a file of templates (one per line).")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --templates {path}: {exc}.") from exc
    templates = []
    for n, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "{}" not in line:
            raise UsageError(f"{path} line {n}: template {line!r} has no {{}} where the class name goes.")
        templates.append(line)
    if not templates:
        raise UsageError(f"{path} holds no templates; write one per line, e.g. 'a photo of a {{}}.'.")
    return path.name, templates


def prompt_name(classname: str) -> str:
    """What a class is called in a prompt: ``pine_tree`` → ``pine tree``."""
    return " ".join(classname.replace("_", " ").split())


def make_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Class-major: the templates of class 0, then of class 1, …"""
    return [t.replace("{}", prompt_name(c)) for c in classnames for t in templates]


def ensemble_text_features(
    clip: ClipModel, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """``[C, D]``: per class, the mean of its templates' normalised text features, renormalised."""
    feats = clip.encode_texts(make_prompts(classnames, templates), batch_size=batch_size)
    feats = feats.view(len(classnames), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(feats, dim=-1)


def text_cache_key(clip: ClipModel, classnames: Sequence[str], templates: Sequence[str]) -> str:
    """Hash of what the class features depend on: model and weights (path, size, mtime for files),
    backend, precision, templates and class names."""
    payload = {
        "version": _CACHE_VERSION,
        "backend": clip.backend,
        "model": clip.name,
        "weights": clip.weights_id,
        "precision": clip.precision,
        "templates": list(templates),
        "classnames": [prompt_name(c) for c in classnames],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:40]


def class_text_features(
    clip: ClipModel,
    classnames: Sequence[str],
    templates: Sequence[str],
    cache_dir: Path | None,
    batch_size: int = 256,
) -> tuple[torch.Tensor, str, Path | None]:
    """The ``[C, D]`` classifier, from ``cache_dir`` when computed before.

    Returns (features on the model's device, ``"hit"``/``"miss"``/``"off"``, the cache file).
    """
    if cache_dir is None:
        return ensemble_text_features(clip, classnames, templates, batch_size), "off", None
    path = Path(cache_dir) / f"{text_cache_key(clip, classnames, templates)}.safetensors"
    if path.is_file():
        try:
            from safetensors.torch import load_file

            feats = load_file(str(path))["text_features"]
            if feats.ndim == 2 and feats.shape[0] == len(classnames):
                return feats.to(clip.device), "hit", path
        except Exception:  # a damaged cache entry is recomputed and rewritten
            pass
    feats = ensemble_text_features(clip, classnames, templates, batch_size)
    meta = {
        "model": clip.name,
        "backend": clip.backend,
        "classes": str(len(classnames)),
        "templates": str(len(templates)),
    }
    try:
        save_safetensors({"text_features": feats}, path, metadata=meta)
    except Exception:  # an unwritable cache only costs the next run the text tower
        return feats, "miss", None
    return feats, "miss", path


# --------------------------------------------------------------------------- images


class ImageFiles(torch.utils.data.Dataset):
    """Decodes and preprocesses one file per item (in DataLoader workers); a failure is returned,
    not raised, so the main process can name the file."""

    def __init__(self, files: Sequence[Path], preprocess: Callable[[Any], torch.Tensor]) -> None:
        self.files = list(files)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str]:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                return self.preprocess(im.convert("RGB")), i, ""
        except Exception as exc:
            return None, i, f"{type(exc).__name__}: {exc}"


def _collate(items: list[tuple[torch.Tensor | None, int, str]]) -> tuple[torch.Tensor | None, list[int], list[str]]:
    index = [i for _, i, _ in items]
    errors = [e for _, _, e in items]
    if any(errors):
        return None, index, errors
    return torch.stack([x for x, _, _ in items if x is not None]), index, errors


def encode_image_files(
    clip: ClipModel,
    files: Sequence[Path],
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    on_batch: Callable[[int], Any] | None = None,
) -> torch.Tensor:
    """``[N, D]`` normalised features of the files (decoded by ``num_workers`` DataLoader workers).

    An unreadable file is a :class:`UsageError` naming it.
    """
    loader = torch.utils.data.DataLoader(
        ImageFiles(files, clip.preprocess),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=clip.device.type == "cuda",
        prefetch_factor=4 if num_workers > 0 else None,
    )
    chunks = []
    for x, index, errors in loader:
        if x is None:
            bad = next(k for k, e in enumerate(errors) if e)
            raise UsageError(f"cannot read image {files[index[bad]]} ({errors[bad]}); remove or replace the file.")
        chunks.append(clip.encode_images(x))
        if on_batch is not None:
            on_batch(len(index))
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


# --------------------------------------------------------------------------- evaluation


@dataclass
class ZeroShotReport:
    """Predictions and scores of one zero-shot run."""

    data: LabelledImages
    topk_index: torch.Tensor  # [N, k] class indices, best first
    topk_prob: torch.Tensor  # [N, k] softmax probabilities
    k: int
    model: str
    backend: str
    templates_name: str
    templates: list[str]
    text_cache: str  # hit | miss | off
    text_cache_file: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor(self.data.labels)

    @property
    def predicted(self) -> torch.Tensor:
        return self.topk_index[:, 0]

    @property
    def correct(self) -> torch.Tensor:
        return self.predicted == self.labels

    @property
    def top1(self) -> float:
        return float(self.correct.double().mean())

    @property
    def top5(self) -> float:
        return float((self.topk_index == self.labels[:, None]).any(dim=1).double().mean())

    def per_class(self) -> list[dict[str, Any]]:
        """Accuracy of every class with images, worst first (ties by name)."""
        rows = []
        correct = self.correct
        labels = self.labels
        for c, name in enumerate(self.data.classnames):
            mask = labels == c
            n = int(mask.sum())
            if n:
                hits = int(correct[mask].sum())
                rows.append({"class": name, "accuracy": hits / n, "correct": hits, "count": n})
        return sorted(rows, key=lambda r: (r["accuracy"], r["class"]))

    def confused_pairs(self, n: int = 10) -> list[dict[str, Any]]:
        """The most frequent (true, predicted) mistakes."""
        pairs = Counter(
            (int(t), int(p)) for t, p in zip(self.labels.tolist(), self.predicted.tolist(), strict=True) if t != p
        )
        names = self.data.classnames
        ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], names[kv[0][0]], names[kv[0][1]]))
        return [{"true": names[t], "predicted": names[p], "count": c} for (t, p), c in ranked[:n]]

    def metrics(self) -> dict[str, Any]:
        n = len(self.data.files)
        image_s = self.seconds.get("images", 0.0)
        return {
            "top1": self.top1,
            "top5": self.top5,
            "k": self.k,
            "images": n,
            "classes": len(self.data.classnames),
            "model": self.model,
            "backend": self.backend,
            "templates": {"name": self.templates_name, "count": len(self.templates)},
            "layout": self.data.layout,
            "text_cache": self.text_cache,
            "text_cache_file": str(self.text_cache_file) if self.text_cache_file else None,
            "images_per_s": n / image_s if image_s > 0 else None,
            "seconds": dict(self.seconds),
            "per_class": self.per_class(),
            "confused_pairs": self.confused_pairs(),
        }


def classify(
    image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: float, k: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` (probabilities, class indices) of ``softmax(logit_scale · image @ textᵀ)``, on the CPU."""
    logits = logit_scale * image_feats.float() @ text_feats.float().T
    probs = logits.softmax(dim=-1)
    values, index = probs.topk(min(k, text_feats.shape[0]), dim=-1)
    return values.cpu(), index.cpu()


def zero_shot(
    clip: ClipModel,
    data: LabelledImages,
    templates: Sequence[str],
    *,
    templates_name: str = "custom",
    batch_size: int = 256,
    num_workers: int = 0,
    cache_dir: Path | None = None,
    on_batch: Callable[[int], Any] | None = None,
) -> ZeroShotReport:
    """Classify every image of ``data`` among ``data.classnames``."""
    start = time.perf_counter()
    text_feats, cache_state, cache_file = class_text_features(clip, data.classnames, templates, cache_dir)
    text_s = time.perf_counter() - start
    start = time.perf_counter()
    image_feats = encode_image_files(
        clip, data.files, batch_size=batch_size, num_workers=num_workers, on_batch=on_batch
    )
    image_s = time.perf_counter() - start
    prob, index = classify(image_feats, text_feats, clip.logit_scale)
    return ZeroShotReport(
        data=data,
        topk_index=index,
        topk_prob=prob,
        k=index.shape[1],
        model=clip.name,
        backend=clip.backend,
        templates_name=templates_name,
        templates=list(templates),
        text_cache=cache_state,
        text_cache_file=cache_file,
        seconds={"text": text_s, "images": image_s},
        notes=list(clip.notes),
    )


# --------------------------------------------------------------------------- outputs


def pick_examples(report: ZeroShotReport, n: int = 5, seed: int = 0) -> tuple[list[int], list[int]]:
    """``n`` correct and ``n`` incorrect images (fewer when there are fewer), drawn with ``seed``."""
    rng = random.Random(seed)
    correct = report.correct.tolist()
    right = [i for i, ok in enumerate(correct) if ok]
    wrong = [i for i, ok in enumerate(correct) if not ok]
    return sorted(rng.sample(right, min(n, len(right)))), sorted(rng.sample(wrong, min(n, len(wrong))))


def predictions_csv(report: ZeroShotReport) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "true", "predicted", "confidence", "top5"])
    names = report.data.classnames
    for i in range(len(report.data.files)):
        top = report.topk_index[i].tolist()
        writer.writerow(
            [
                report.data.display_name(i),
                names[report.data.labels[i]],
                names[top[0]],
                f"{float(report.topk_prob[i, 0]):.6f}",
                ";".join(names[c] for c in top),
            ]
        )
    return buf.getvalue()


def examples_figure(report: ZeroShotReport, path: Path, n: int = 5, seed: int = 0) -> Path:
    """The report's table as a figure: a row of correct and a row of incorrect predictions, each
    image titled with its true label, the prediction and its confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    right, wrong = pick_examples(report, n, seed)
    cols = max(1, len(right), len(wrong))
    fig, axes = plt.subplots(2, cols, figsize=(2.2 * cols + 0.8, 6.4), squeeze=False)
    names = [prompt_name(c) for c in report.data.classnames]
    for r, (title, picks, colour) in enumerate((("correct", right, "tab:green"), ("incorrect", wrong, "tab:red"))):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(picks):
                ax.axis("off")
                if c == 0:
                    ax.text(0.5, 0.5, f"no {title} predictions", ha="center", va="center", fontsize=8)
                continue
            i = picks[c]
            with Image.open(report.data.files[i]) as im:
                ax.imshow(im.convert("RGB"))
            true, pred, conf = names[report.data.labels[i]], names[int(report.predicted[i])], report.topk_prob[i, 0]
            ax.set_title(
                f"{report.data.display_name(i)}\ntrue: {true}\npred: {pred}\nconf: {float(conf):.2f}",
                fontsize=8,
                color=colour,
            )
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2)
            if c == 0:
                ax.set_ylabel(title, fontsize=9)
    fig.suptitle(
        f"CLIP zero-shot ({report.model}, {report.templates_name} prompts): top-1 {report.top1:.2%}", fontsize=9
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def write_outputs(report: ZeroShotReport, out: Path, *, examples: int = 5, seed: int = 0) -> dict[str, Any]:
    """Write ``predictions.csv``, ``metrics.json`` and ``examples.png`` in ``out``; return the metrics
    (``metrics["files"]`` names the three files)."""
    out = Path(out)
    files = {
        "predictions": out / "predictions.csv",
        "metrics": out / "metrics.json",
        "examples": out / "examples.png",
    }
    write_text(files["predictions"], predictions_csv(report))
    examples_figure(report, files["examples"], examples, seed)
    right, wrong = pick_examples(report, examples, seed)
    metrics = report.metrics()
    metrics["examples"] = {
        kind: [
            {
                "file": report.data.display_name(i),
                "true": report.data.classnames[report.data.labels[i]],
                "predicted": report.data.classnames[int(report.predicted[i])],
                "confidence": float(report.topk_prob[i, 0]),
            }
            for i in picks
        ]
        for kind, picks in (("correct", right), ("incorrect", wrong))
    }
    metrics["files"] = {k: str(v) for k, v in files.items()}
    write_json(files["metrics"], metrics)
    return metrics
