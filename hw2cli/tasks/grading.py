"""The three graders, one idea: the homework's scoring rules, exactly.

- P1 (:func:`evaluate_generated`): per data set, the accuracy of a digit classifier on the
  generated folder, the label being the file name's first character; inputs ``Resize((28, 28))``,
  ``ToTensor``, ``Normalize(0.5, 0.5)``; the score is the mean of the two accuracies.
- P2 (:func:`mse_eval`): per image, ``mean((gen − gt)²)`` on the 0–255 scale (both opened as RGB),
  and the mean over the images.
- P3 (:func:`grade`): CLIP image score (mean 100·cos to the concept's references) and text score
  (``logits_per_image`` against ``prompt_4_clip_eval``) of the best 5 of 25 by
  ``image + 2.5·text``, with the homework grader's own image preprocessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hw2cli.data import DATASETS, IMAGE_SUFFIXES
from hw2cli.data.prompts import read_input_json
from hw2cli.errors import RunError, UsageError
from hw2cli.io.atomic import listed
from hw2cli.io.checkpoints import load_error, load_state_into, torch_load
from hw2cli.io.images import load_rgb
from hw2cli.models.classifiers import ARCHITECTURES, build_classifier

# ------------------------------------------------------------------------------------ P1


def default_classifier_path(dataset: str) -> Path:
    return Path(str(resources.files("hw2cli.assets").joinpath(f"classifier_{dataset}.safetensors")))


# The homework's SVHN grader: timm's ResNet-34 with a CIFAR stem, the `resnet34_svhn` of the
# `detectors` package, whose weights live on the Hub (the URL `detectors` itself downloads).
OFFICIAL_SVHN = ("edadaltocg/resnet34_svhn", "pytorch_model.bin")


def official_svhn_checkpoint(cache: Path, offline: bool = False, on_progress: Any = None) -> Path:
    """The official SVHN grader's weights, downloaded once into ``cache`` (read later with
    ``weights_only=True``; ``detectors`` itself would load them with ``weights_only=False``)."""
    from hw2cli.data.download import fetch
    from hw2cli.pretrained.hub import endpoint, ensure_offline_if_unreachable, unreachable_hint

    repo, name = OFFICIAL_SVHN
    target = cache / "graders" / repo.replace("/", "--") / name
    if target.is_file():
        return target
    if offline or ensure_offline_if_unreachable(offline):
        reason = "offline mode is on" if offline else unreachable_hint()
        raise RunError(
            f"the official SVHN grader ({repo}) is not in the cache and {reason}; pass {{opt:svhn_checkpoint}} "
            "PATH to a local ResNet-34 state dict instead."
        )
    return fetch(f"{endpoint()}/{repo}/resolve/main/{name}", target, on_progress=on_progress,
                 what=f"the SVHN grader {repo}")  # fmt: skip


def _downloaded(path: Path) -> bool:
    from hw2cli import settings

    try:
        return path.resolve().is_relative_to(settings.get().weights_dir.resolve())
    except Exception:  # settings that do not load: the path as given
        return False


def load_classifier(path: str | Path | None, dataset: str, arch: str | None = None) -> tuple[torch.nn.Module, str]:
    """A classifier from a file (ours: safetensors with metadata; official: ``{"state_dict": ...}``
    ``.pth``), or the embedded default for ``dataset``. Returns ``(model, description)``; the
    description of the embedded default says it is not the homework's grader."""
    from safetensors import safe_open

    embedded = path is None
    if path is None:
        path = default_classifier_path(dataset)
        if not path.exists():
            raise RunError(
                f"this install has no embedded {dataset} classifier; pass {{opt:{dataset}_checkpoint}} "
                "or train one with `hw2 classifier train`."
            )
    path = Path(path)
    if not path.exists():
        raise UsageError(f"the classifier checkpoint {path} does not exist.")
    if path.is_dir():
        raise UsageError(f"the classifier checkpoint {path} is a folder; pass the .safetensors or .pth file.")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except Exception as exc:
            raise load_error(path, "a classifier checkpoint", exc) from None
        arch = arch or meta.get("arch")
    else:
        obj = torch_load(path)
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
        if not isinstance(state, dict):
            raise UsageError(f"{path} holds no state dict.")
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if arch is None:
        arch = "lenet" if "conv1.weight" in state and state["conv1.weight"].shape[0] == 6 else "resnet34"
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown classifier architecture {arch!r}; expected {' or '.join(ARCHITECTURES)}.")
    model = build_classifier(arch)
    load_state_into(model, {k: v.float() for k, v in state.items()}, str(path))
    shown = path.name if embedded or _downloaded(path) else str(path)  # a user's file as given: it may share
    # the embedded one's name; a file hw2 downloaded into its weights folder is named by its own name
    return model.eval(), f"{arch} ({shown}{', embedded in hw2, not the homework grader' if embedded else ''})"


def grader_tensor(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, 28, 28]`` → the grader's input: ``ToTensor`` then ``Normalize(0.5, 0.5)``."""
    return images_uint8.float() / 255.0 * 2.0 - 1.0


def read_folder(folder: Path) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Every image in ``folder`` (sorted), resized to 28×28 RGB as the grader does; labels from names."""
    from PIL import Image

    if not folder.is_dir():
        hint = ""
        if folder.parent.name in DATASETS:  # `hw2 ddpm eval out/mnistm`: one level too deep
            hint = f"; pass the folder that holds mnistm/ and svhn/ ({folder.parent.parent})"
        raise UsageError(f"{folder} is not a folder of generated images{hint}.")
    names, images, labels = [], [], []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not path.name[0].isdigit():
            raise UsageError(f"{path.name} in {folder} does not start with its digit (expected e.g. 3_001.png).")
        try:
            with Image.open(path) as im:
                image = im.convert("RGB").resize((28, 28), Image.BILINEAR)
        except Exception as exc:
            raise UsageError(f"cannot open {path} as an image: {exc}.") from exc
        names.append(path.name)
        images.append(np.asarray(image, dtype=np.uint8))
        labels.append(int(path.name[0]))
    if not names:
        raise UsageError(f"{folder} holds no images.")
    return names, torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), torch.tensor(labels)


@torch.inference_mode()
def predict(model: torch.nn.Module, images_uint8: torch.Tensor, device: torch.device, batch: int = 500) -> torch.Tensor:
    model = model.to(device).eval()
    out = []
    for i in range(0, images_uint8.shape[0], batch):
        out.append(model(grader_tensor(images_uint8[i : i + batch].to(device))).argmax(1).cpu())
    return torch.cat(out)


@dataclass
class FolderScore:
    dataset: str
    accuracy: float
    per_digit: dict[int, float]
    count: int
    classifier: str
    per_digit_count: dict[int, int] = field(default_factory=dict)
    not_images: list[str] = field(default_factory=list)  # files the homework's grader would also try to open

    def problems(self, folder: Path, per_digit: int = 50) -> list[str]:
        """What the homework's grader would trip on or count differently, one sentence each."""
        found = []
        if self.not_images:
            found.append(
                f"{folder} also holds {listed(self.not_images)}, not images: the homework's grader opens every file "
                "there, so it would fail."
            )
        counts = {d: self.per_digit_count.get(d, 0) for d in range(10)}
        off = [f"{d}: {n}" for d, n in counts.items() if n != per_digit]
        if off:
            found.append(f"{folder} should hold {per_digit} images of each digit; it has {', '.join(off)}.")
        return found


def score_folder(
    folder: Path, dataset: str, model: torch.nn.Module, description: str, device: torch.device
) -> FolderScore:
    _, images, labels = read_folder(folder)
    pred = predict(model, images, device)
    correct = pred == labels
    per_digit = {d: float(correct[labels == d].float().mean()) for d in range(10) if (labels == d).any()}
    counts = {d: int((labels == d).sum()) for d in range(10)}
    strays = sorted(p.name for p in folder.iterdir() if p.suffix.lower() not in IMAGE_SUFFIXES)
    accuracy = float(correct.float().mean())
    return FolderScore(dataset, accuracy, per_digit, int(labels.numel()), description, counts, strays)


def evaluate_generated(
    out: Path,
    device: torch.device,
    checkpoints: dict[str, str | Path | None],
) -> dict[str, Any]:
    """The P1 score of ``out/mnistm`` and ``out/svhn``: per data set accuracy and their mean."""
    scores = {}
    for dataset, ckpt in checkpoints.items():
        model, description = load_classifier(ckpt, dataset)
        scores[dataset] = score_folder(out / dataset, dataset, model, description, device)
    mean = sum(s.accuracy for s in scores.values()) / len(scores)
    return {"scores": scores, "mean_accuracy": mean}


# ------------------------------------------------------------------------------------ P2


@dataclass
class MSEReport:
    per_image: dict[str, float]
    mean: float
    extra: list[str]


def mse_eval(out: str | Path, gt: str | Path) -> MSEReport:
    """The P2 grader: per image ``mean((gen − gt)²)`` on the 0–255 scale (both opened as RGB), and the mean."""
    out, gt = Path(out), Path(gt)
    for folder, what in ((out, "generated"), (gt, "ground-truth")):
        if not folder.is_dir():
            raise UsageError(f"{folder} is not a folder of {what} images.")
    gt_files = sorted(p for p in gt.iterdir() if p.suffix.lower() == ".png")
    if not gt_files:
        raise UsageError(f"{gt} holds no .png ground-truth images.")
    missing = [p.name for p in gt_files if not (out / p.name).is_file()]
    if missing:
        raise UsageError(
            f"{out} lacks {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "") + "."
        )
    names = {p.name for p in gt_files}
    extra = sorted(p.name for p in out.iterdir() if p.is_file() and p.name not in names)
    per_image = {}
    for p in gt_files:
        try:
            a = load_rgb(out / p.name).astype(np.float64)
            b = load_rgb(p).astype(np.float64)
        except Exception as exc:
            raise UsageError(f"cannot open {p.name}: {exc}.") from exc
        if a.shape != b.shape:
            raise UsageError(f"{out / p.name} is {a.shape[1]}×{a.shape[0]} but {p} is {b.shape[1]}×{b.shape[0]}.")
        per_image[p.name] = float(np.mean((a - b) ** 2))
    return MSEReport(per_image, float(np.mean(list(per_image.values()))), extra)


# ------------------------------------------------------------------------------------ P3


@dataclass
class PromptScore:
    key: str
    index: int
    prompt: str
    image_score: float
    text_score: float
    baseline: tuple[float, float]
    best: list[tuple[Path, float, float]] = field(default_factory=list)  # (file, image, text) of the kept, best first

    @property
    def passed(self) -> bool:
        return self.image_score >= self.baseline[0] and self.text_score >= self.baseline[1]


class MissingReferences(UsageError):
    """A concept's reference folder is not where it was looked for (another folder may hold it)."""


def reference_folder(refs: Path, key: str, entry: dict[str, Any]) -> Path:
    """``refs/<key>``, or ``refs/<src_image>``: a name under ``refs`` (no ``..``, not absolute); a
    symlinked folder is fine, since it is only read (clusters link their data folders)."""
    if not refs.is_dir():
        raise MissingReferences(f"the reference folder {refs} does not exist; pass hw2_data/textual_inversion.")
    looked = []
    for name in dict.fromkeys((key, str(entry.get("src_image") or ""))):
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts:
            continue
        candidate = refs / name
        looked.append(str(candidate))
        if candidate.is_dir():
            return candidate
    raise MissingReferences(
        f"no reference images for concept {key!r} under {refs} (looked for {' and '.join(looked)})."
    )


def ambiguous_references(refs: Path, entries: dict[str, dict[str, Any]]) -> list[str]:
    """A sentence per concept whose ``refs/<key>`` and ``refs/<src_image>`` are two different
    folders: the homework does not say which one its grader reads; hw2 reads the key's."""
    notes = []
    for key, entry in entries.items():
        src = str(entry.get("src_image") or "")
        if not src or src == key or Path(src).is_absolute() or ".." in Path(src).parts:
            continue
        mine, other = refs / key, refs / src
        if mine.is_dir() and other.is_dir() and mine.resolve() != other.resolve():
            notes.append(
                f"concept {key!r}: {mine} and {other} (its src_image) are both folders; its reference "
                f"images are read from {mine}, the key's (rename one if the src_image's are meant)."
            )
    return notes


def list_images(folder: Path) -> list[Path]:
    """The image files of ``folder`` (a folder or a broken link named ``x.png`` is not one)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# The homework's grader runs under transformers 4.19.2, whose CLIPFeatureExtractor for
# openai/clip-vit-base-patch32 does exactly this (HW2_SPEC.md, "The P3 grader exactly").
CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESS = ("homework", "model")


def homework_clip_preprocess(image: Any, size: int = CLIP_SIZE) -> torch.Tensor:
    """transformers 4.19's CLIP preprocessing as a float32 ``[3, size, size]`` tensor: RGB; if the
    short side is not ``size``, PIL bicubic to short = ``size``, long = ``int(size·long/short)``;
    centre crop at ``int((side − size + 1)·0.5)``; scale to [0, 1]; normalise with CLIP's mean/std.
    (transformers 5 rounds the resize differently and crops at ``(side − size) // 2``.)"""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short != size:
        new_long = int(size * long / short)
        image = image.resize((size, new_long) if w <= h else (new_long, size), Image.BICUBIC)
    w, h = image.size
    top, left = int((h - size + 1) * 0.5), int((w - size + 1) * 0.5)
    image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()) / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)
    std = torch.tensor(CLIP_STD, dtype=torch.float32)
    return ((x - mean) / std).permute(2, 0, 1).contiguous()


def _open_rgb(path: Path) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as exc:
        raise UsageError(f"{path} is not a readable image ({exc}).") from None


@dataclass
class GradingJob:
    key: str
    index: int
    prompt: str
    eval_prompt: str
    files: list[Path]
    references: list[Path]
    baseline: tuple[float, float]
    ignored: list[Path] = field(default_factory=list)  # non-image files in the reference folder


def grading_plan(
    out: str | Path, entries: dict[str, dict[str, Any]], refs: str | Path, *, per_prompt: int = 25
) -> list[GradingJob]:
    """Every folder the grader reads, checked before any model loads: the references of each
    concept and exactly ``per_prompt`` images per prompt, each one an image Pillow verifies."""
    from hw2cli.io.manifest import finished_file

    out, refs = Path(out), Path(refs)
    if not out.is_dir():
        raise UsageError(f"the generated folder {out} does not exist.")
    jobs = []
    for key, entry in entries.items():
        ref_folder = reference_folder(refs, key, entry)
        references = list_images(ref_folder)
        ignored = sorted(p for p in ref_folder.iterdir() if p.is_file() and p not in set(references))
        if not references:
            raise UsageError(f"{ref_folder} holds no reference images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        if not (out / key).is_dir():
            raise UsageError(f"{out / key} does not exist: the grader reads the images of concept {key!r} there.")
        for idx, prompt in enumerate(entry["prompt_4_clip_eval"]):
            folder = out / key / str(idx)
            if not folder.is_dir():
                raise UsageError(
                    f"{folder} does not exist: the grader reads the {per_prompt} images of prompt {idx} there."
                )
            files = list_images(folder)
            if len(files) != per_prompt:
                raise UsageError(f"{folder} holds {len(files)} images; the grader needs exactly {per_prompt}.")
            for path in files if idx else [*references, *files]:
                if not finished_file(path):
                    raise UsageError(f"cannot open {path} as an image (empty, truncated or not an image).")
            baseline = tuple(entry["baseline"][idx])
            jobs.append(GradingJob(key, idx, entry["prompt"][idx], prompt, files, references, baseline, ignored))  # type: ignore[arg-type]
    return jobs


def layout_notes(out: str | Path, entries: dict[str, dict[str, Any]]) -> list[str]:
    """What in a graded P3 folder the homework's layout does not have, in words: files that are
    not images, images not named ``source<key>_prompt<idx>_<n>.png``, folders of concepts or
    prompts the input.json does not list, and an evaluation prompt that still holds a token."""
    out = Path(out)
    notes = []
    for entry_dir in sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []:
        if entry_dir.name not in entries:
            notes.append(f"{entry_dir} is not a concept of the input.json; the grader does not read it.")
            continue
        entry = entries[entry_dir.name]
        for prompt_dir in sorted(p for p in entry_dir.iterdir() if p.is_dir()):
            if not (prompt_dir.name.isdigit() and int(prompt_dir.name) < len(entry["prompt_4_clip_eval"])):
                notes.append(
                    f"{prompt_dir} is not a prompt of concept {entry_dir.name!r}; the grader does not read it."
                )
                continue
            images = set(list_images(prompt_dir))
            others = sorted(p.name for p in prompt_dir.iterdir() if p.is_file() and p not in images)
            if others:
                notes.append(f"{prompt_dir} also holds {', '.join(others[:3])}{' …' if len(others) > 3 else ''}, "
                             "which is not an image; a grader that opens every file there would fail.")  # fmt: skip
            pattern = re.compile(rf"^source{re.escape(entry_dir.name)}_prompt{prompt_dir.name}_\d+\.png$")
            misnamed = sorted(p.name for p in images if not pattern.match(p.name))
            if misnamed:
                notes.append(f"{prompt_dir}: {', '.join(misnamed[:3])}{' …' if len(misnamed) > 3 else ''} "
                             f"{'is' if len(misnamed) == 1 else 'are'} not named source{entry_dir.name}_prompt"
                             f"{prompt_dir.name}_<n>.png, as the homework's layout names them.")  # fmt: skip
    for key, entry in entries.items():
        for idx, prompt in enumerate(entry.get("prompt_4_clip_eval") or []):
            token = re.search(r"<[^<>\s]+>", prompt)
            if token:
                notes.append(f"the evaluation prompt {idx} of concept {key!r} still holds {token.group(0)} "
                             f"({prompt!r}); CLIP reads it as text, not as the learned concept.")  # fmt: skip
    return notes


@torch.inference_mode()
def grade(
    out: str | Path,
    input_json: str | Path,
    refs: str | Path,
    clip: Any,
    *,
    per_prompt: int = 25,
    keep: int = 5,
    preprocess: str = "homework",
) -> list[PromptScore]:
    """The P3 rule: image score = mean over references of 100·cos; text score = CLIP's
    ``logits_per_image`` against ``prompt_4_clip_eval``; keep the ``keep`` best of ``per_prompt`` by
    ``image + 2.5·text``; average each score; pass when both reach the baseline.

    ``preprocess``: ``homework`` (the grader's transformers 4.19 arithmetic, the default) or
    ``model`` (the CLIP model's own processor, e.g. transformers 5's)."""
    if preprocess not in PREPROCESS:
        raise UsageError(f"the preprocessing {preprocess!r} is not known; expected homework or model.")

    def encode(paths: list[Path]) -> torch.Tensor:
        images = [_open_rgb(p) for p in paths]
        if preprocess == "homework":
            size = int(getattr(clip, "image_size", None) or CLIP_SIZE)  # 224 for the grader's ViT-B/32
            return clip.encode_images(torch.stack([homework_clip_preprocess(im, size) for im in images]))
        return clip.encode_images(images)

    jobs = grading_plan(out, read_input_json(input_json, need_eval=True), refs, per_prompt=per_prompt)
    scores = []
    ref_cache: dict[tuple[Path, ...], torch.Tensor] = {}
    for job in jobs:
        refs_key = tuple(job.references)
        if refs_key not in ref_cache:
            ref_cache[refs_key] = encode(job.references)
        ref_feats = ref_cache[refs_key]
        feats = encode(job.files)
        text = clip.encode_texts([job.eval_prompt])
        image_score = 100.0 * (feats @ ref_feats.T).mean(dim=1)
        text_score = clip.logit_scale * (feats @ text.T)[:, 0]
        best = torch.topk(image_score + 2.5 * text_score, keep).indices
        scores.append(
            PromptScore(
                job.key,
                job.index,
                job.prompt,
                float(image_score[best].mean()),
                float(text_score[best].mean()),
                job.baseline,
                [(job.files[i], float(image_score[i]), float(text_score[i])) for i in best.tolist()],
            )
        )
    return scores


def best_sheet(scores: list[PromptScore], path: str | Path, *, clip_name: str = "CLIP") -> Path:
    """A figure of what the grader kept: one row per prompt (its key/index, green where it
    passes), the best images by ``image + 2.5·text``, each captioned with its two scores."""
    from hw2cli.io.images import captioned_rows

    rows = [
        (
            f"{s.key}/{s.index}: {'passes' if s.passed else 'below baseline'}",
            "tab:green" if s.passed else "tab:red",
            [(file, f"image {image:.1f}\ntext {text:.1f}") for file, image, text in s.best],
        )
        for s in scores
    ]
    kept = len(scores[0].best) if scores else 5
    title = f"The {kept} images the P3 grader keeps per prompt (best image + 2.5·text; {clip_name})"
    return captioned_rows(rows, path, title=title)
