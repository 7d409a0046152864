"""P3a core: CLIP zero-shot classification of a labelled image set, with prompt ensembles and a
disk cache of the class text features.

The data layouts are :mod:`hw2cli.data.labelled`'s. The classifier (:func:`ensemble_text_features`):
for every class and template the prompt
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
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hw2cli.data.labelled import LabelledImages
from hw2cli.errors import UsageError
from hw2cli.io.atomic import files_together, save_safetensors, write_json, write_text
from hw2cli.pretrained.clip import ClipModel

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


# --------------------------------------------------------------------------- prompts


def resolve_templates(spec: str | Path) -> tuple[str, list[str]]:
    """``single``, ``cifar``, ``imagenet`` or a file of one template per line, each with ``{}``.

    Returns (a name for reports, the templates). Blank lines and lines starting with ``#`` are skipped.
    """
    name, templates, _ = read_templates(spec)
    return name, templates


def read_templates(spec: str | Path) -> tuple[str, list[str], list[str]]:
    """:func:`resolve_templates`, and where each template comes from, for messages
    (``t.txt line 3``, ``the cifar template 'a photo of a {}.'``). A file's line repeated is refused."""
    spec = str(spec)
    if spec in TEMPLATE_SETS:
        if spec == "single":
            templates = [SINGLE_TEMPLATE]
        elif spec == "cifar":
            templates = list(CIFAR_TEMPLATES)
        else:
            from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

            templates = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
        return spec, templates, [f"the {spec} template {t!r}" for t in templates]
    path = Path(spec)
    if not path.is_file():
        raise UsageError(
            f"{{opt:templates}} {spec!r} is not single, cifar, imagenet or a file of templates (one per line)."
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {{opt:templates}} {path}: {exc}.") from exc
    templates: list[str] = []
    where: list[str] = []
    first_line: dict[str, int] = {}
    for n, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "{}" not in line:
            raise UsageError(f"{path} line {n}: template {line!r} has no {{}} where the class name goes.")
        if line in first_line:
            raise UsageError(
                f"{path} lines {first_line[line]} and {n} hold the same template {line!r}; keep one "
                "(a repeat counts twice in the ensemble)."
            )
        first_line[line] = n
        templates.append(line)
        where.append(f"{path} line {n}")
    if not templates:
        raise UsageError(f"{path} holds no templates; write one per line, e.g. 'a photo of a {{}}.'.")
    return path.name, templates, where


@dataclass(frozen=True)
class PromptTokenizer:
    """How the loaded model tokenises a prompt: ``encode`` gives each text's tokens without the
    start/end tokens and untruncated; the model keeps the first ``context_length - specials``."""

    encode: Callable[[list[str]], list[list[int]]]
    context_length: int
    specials: int = 2

    @property
    def room(self) -> int:
        return self.context_length - self.specials


def prompt_tokenizer(clip: ClipModel) -> PromptTokenizer | None:
    """How ``clip`` tokenises its prompts, or ``None`` where its loader does not say."""
    if clip.token_ids is None or not isinstance(clip.context_length, int) or clip.context_length <= 2:
        return None
    return PromptTokenizer(clip.token_ids, clip.context_length, clip.special_tokens)


def check_prompts(
    tokenizer: PromptTokenizer,
    classnames: Sequence[str],
    templates: Sequence[str],
    where: Sequence[str],
    *,
    from_file: bool = False,
) -> None:
    """Refuse a template whose prompt cuts off a class name at the model's context length, or that
    gives two classes the same tokens: CLIP could not tell those classes apart, and the accuracy
    would mean nothing. ``where`` names each template for the message."""
    names = [prompt_name(c) for c in classnames]
    room = tokenizer.room
    for template, source in zip(templates, where, strict=True):
        prompts = [template.replace("{}", n) for n in names]
        tokens = tokenizer.encode(prompts)
        for c, name, toks in zip(classnames, names, tokens, strict=True):
            if len(toks) <= room:
                continue
            (upto,) = tokenizer.encode([_through_name(template, name)])
            if len(upto) <= room:
                continue  # only text after the class name is cut off
            (alone,) = tokenizer.encode([name])
            cure = "shorten it" if from_file and len(toks) - len(alone) >= len(alone) else "shorten the class name"
            raise UsageError(
                f"{source}: with the class name {c!r} the prompt is {len(toks) + tokenizer.specials} tokens, "
                f"more than CLIP's {tokenizer.context_length}; {cure}."
            )
        seen: dict[tuple[int, ...], int] = {}
        for i, toks in enumerate(tokens):
            key = tuple(toks[:room])
            if key in seen:
                raise UsageError(
                    f"{source}: the classes {classnames[seen[key]]!r} and {classnames[i]!r} give the same tokens "
                    f"({prompts[i]!r}), so CLIP cannot tell them apart; give them different names."
                )
            seen[key] = i


def _through_name(template: str, name: str) -> str:
    """The prompt up to the end of its last class name and the word it is part of (``{}s``)."""
    cut = template.rindex("{}") + 2
    rest = template[cut:]
    word = 0 if not rest or rest[0].isspace() else len(rest.split(maxsplit=1)[0])
    return template[: cut + word].replace("{}", name)


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


def check_images(files: Sequence[Path]) -> None:
    """Open every file and check its structure (Pillow's ``verify``: a PNG's chunks and checksums,
    other formats' headers) without decoding it, so a bad file is named before a model loads."""
    from PIL import Image

    for f in files:
        try:
            with Image.open(f) as im:
                im.verify()
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise UsageError(f"cannot read image {f} ({reason}); remove or replace the file.") from exc


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
    from hw2cli.io.images import captioned_rows

    names = [prompt_name(c) for c in report.data.classnames]

    def caption(i: int) -> tuple[Path, str]:
        true, pred = names[report.data.labels[i]], names[int(report.predicted[i])]
        conf = float(report.topk_prob[i, 0])
        return report.data.files[i], f"{report.data.display_name(i)}\ntrue: {true}\npred: {pred}\nconf: {conf:.2f}"

    right, wrong = pick_examples(report, n, seed)
    rows = [
        ("correct", "tab:green", [caption(i) for i in right]),
        ("incorrect", "tab:red", [caption(i) for i in wrong]),
    ]
    title = (
        f"CLIP zero-shot ({report.model}, {report.templates_name} prompts): top-1 {report.top1:.2%}, "
        f"top-5 {report.top5:.2%} of {len(report.data.files)} images"
    )
    return captioned_rows(rows, path, title=title)


def write_outputs(report: ZeroShotReport, out: Path, *, examples: int = 5, seed: int = 0) -> dict[str, Any]:
    """Write ``predictions.csv``, ``metrics.json`` and ``examples.png`` in ``out``; return the metrics
    (``metrics["files"]`` names the three files)."""
    out = Path(out)
    names = {"predictions": "predictions.csv", "metrics": "metrics.json", "examples": "examples.png"}
    metrics = _metrics(report, {k: out / name for k, name in names.items()}, examples, seed)
    with files_together(out, list(names.values())) as staging:
        write_text(staging / names["predictions"], predictions_csv(report))
        examples_figure(report, staging / names["examples"], examples, seed)
        write_json(staging / names["metrics"], metrics)
    return metrics


def _metrics(report: ZeroShotReport, files: dict[str, Path], examples: int, seed: int) -> dict[str, Any]:
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
    metrics["left_out"] = [str(p) for p in report.data.skipped]
    metrics["files"] = {k: str(v) for k, v in files.items()}
    return metrics


# --------------------------------------------------------------------------- the command


OPEN_CLIP_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


def check_out_outside_data(out: str | Path, data: str | Path) -> None:
    """Refuse a report folder that is the data folder or lies inside it: the report's files would
    be read as data by every later run (links resolved)."""
    from hw2cli.io.atomic import input_holding

    out, data = Path(out), Path(data)
    if not data.is_dir():
        return
    try:
        held = input_holding(out, [(data, "the data folder")])
    except (OSError, RuntimeError):  # a loop of links: the output-folder check words it
        return
    if held is not None:
        raise UsageError(f"{{opt:out}} {out} is inside the {{opt:data}} folder {data}; choose another folder.")


def check_model_arguments(model: str | None, pretrained: str | None, backend: str) -> None:
    """What the loader would word wrongly: a folder as open_clip weights, a JSON file that is not an
    open_clip model config."""
    if backend != "open_clip":
        return
    if pretrained is not None and Path(pretrained).is_dir():
        import open_clip

        if str(pretrained) not in {tag for _, tag in open_clip.list_pretrained()}:
            raise UsageError(
                f"{{opt:pretrained}} {pretrained} is a folder; pass a checkpoint file (.pt, .bin or .safetensors) "
                "or a pretrained tag."
            )
    if model is None or not str(model).endswith(".json") or not Path(model).is_file():
        return
    try:
        config = json.loads(Path(model).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the loader words an unreadable file
    if not isinstance(config, dict):
        raise UsageError(
            f"{{opt:model}} {model} is not an open_clip model config: it holds a JSON {type(config).__name__}, "
            "not an object with embed_dim, vision_cfg and text_cfg."
        )
    missing = [k for k in OPEN_CLIP_CONFIG_KEYS if k not in config]
    if missing:
        keys = ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1]
        raise UsageError(f"{{opt:model}} {model} is not an open_clip model config: it lacks {keys}.")


PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def autocast_dtype(precision: str, device: torch.device, dtype: torch.dtype) -> tuple[torch.dtype | None, str]:
    """The autocast dtype for ``precision`` on ``device`` (``None``: fp32), and a note when the
    request does not apply there. ``auto``: fp16 on CUDA (bf16 if the settings' dtype is bf16)."""
    if precision not in PRECISIONS:
        raise UsageError(f"the precision {precision!r} is not known; expected {', '.join(PRECISIONS)}.")
    if precision == "auto":
        if device.type != "cuda":
            return None, ""
        return (torch.bfloat16 if dtype == torch.bfloat16 else torch.float16), ""
    if precision != "fp32" and device.type != "cuda":
        return None, f"{precision} applies on CUDA; {device} runs in fp32"
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision], ""


@dataclass
class ZeroShotRun:
    """What :func:`evaluate` did: the model and data it used, the report, and the written metrics."""

    clip: ClipModel
    data: LabelledImages
    templates_name: str
    templates: list[str]
    report: ZeroShotReport
    metrics: dict[str, Any]
    notes: list[str]


def evaluate(
    data: str | Path,
    out: str | Path,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    labels: str | Path | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    backend: str = "open_clip",
    templates: str | Path = "single",
    precision: str = "auto",
    quick_gelu: bool | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    text_cache_root: Path | None = None,
    weights_dir: Path,
    offline: bool = False,
    examples: int = 5,
    seed: int = 0,
    on_loaded: Callable[[ClipModel, LabelledImages, str, list[str], list[str]], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ZeroShotRun:
    """The whole of ``hw2 clip eval``: read the data set and templates, load CLIP at the asked
    precision, classify every image, write ``predictions.csv``, ``metrics.json`` and
    ``examples.png`` in ``out``. ``on_loaded`` hears what was loaded before the images are read.

    Checked before the model loads: the templates, ``out`` outside ``data``, the model arguments,
    the data set (every image opened); after it, before any image is classified, the prompts
    against the model's own tokenizer."""
    from hw2cli.data.labelled import load_dataset
    from hw2cli.pretrained.clip import load_clip

    templates_name, template_list, template_where = read_templates(templates)
    check_out_outside_data(out, data)
    check_model_arguments(model, pretrained, backend)
    dataset = load_dataset(data, labels)
    check_images(dataset.files)
    clip = load_clip(model, pretrained, backend, device, weights_dir, offline=offline, quick_gelu=quick_gelu)
    tokenizer = prompt_tokenizer(clip)
    if tokenizer is not None:
        from_file = str(templates) not in TEMPLATE_SETS
        check_prompts(tokenizer, dataset.classnames, template_list, template_where, from_file=from_file)
    autocast, note = autocast_dtype(precision, device, dtype)
    clip.set_precision(autocast)
    notes = list(clip.notes) + ([note] if note else [])
    if on_loaded is not None:
        on_loaded(clip, dataset, templates_name, template_list, notes)
    report = zero_shot(
        clip,
        dataset,
        template_list,
        templates_name=templates_name,
        batch_size=batch_size,
        num_workers=num_workers,
        cache_dir=text_cache_root / TEXT_CACHE_DIR if text_cache_root is not None else None,
        on_batch=on_batch,
    )
    metrics = write_outputs(report, Path(out), examples=examples, seed=seed)
    return ZeroShotRun(clip, dataset, templates_name, template_list, report, metrics, notes)
