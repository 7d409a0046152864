"""Embeddings an input.json needs but no one gave: trained on the spot from its reference images.

The graded ``hw2_3.sh INPUT_JSON OUT SD_CKPT`` takes no embeddings argument ("the learned
embeddings travel with the tool"). Where this install ships none for a token the prompts use,
``hw2 personalize generate --train-missing`` (what ``hw2_3.sh`` runs) trains them first with
:func:`~hw2cli.tasks.personalize.train.train_personalization`, from the concept's reference
folder (``REFS/<key>`` or ``REFS/<src_image>``, REFS defaulting to the input.json's folder, as the
grader looks for them). What the input.json tells about a concept is used:

- the initialiser is the phrase ``prompt_4_clip_eval`` puts where ``prompt`` has the token
  ("A <new1> shepherd …" / "A dog shepherd …" gives "dog"; "David Revoy" starts as the mean of its
  tokens' rows);
- the concept is a style when a prompt says "in the style of <token>", else an object.

The run lives in ``WEIGHTS_DIR/personalize/auto-<key>``, the key hashing the model file, every
reference image's bytes and the recipe, so a rerun reuses finished embeddings, an interrupted run
continues where it stopped, and other images or another model train anew.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hw2cli.errors import UsageError
from hw2cli.tasks.personalize.concepts import TOKEN_RE, file_digests, model_identity

STEPS_PER_CONCEPT = 2000
STYLE_RE = r"\bstyle\s+of\s+(?:the\s+)?{}"


@dataclass(frozen=True)
class PlannedConcept:
    key: str
    token: str
    folder: Path
    init: str
    kind: str  # "object" or "style"

    def spec(self) -> str:
        """The ``--concept`` form ``train_personalization`` parses."""
        return f"{self.token}={self.folder}:{self.init}:{self.kind}"


@dataclass(frozen=True)
class TrainingPlan:
    concepts: list[PlannedConcept]
    out: Path
    opts: Any  # PersonalizeOptions (imported lazily: it pulls in torch)
    weights_dir: Path
    notes: list[str] = field(default_factory=list)  # what the CLI should say about where it is kept

    def describe(self) -> str:
        return ", ".join(f"{c.token} ({c.kind}, from {c.folder}, starting as {c.init!r})" for c in self.concepts)


def provided_by(sources: Sequence[str | Path]) -> dict[str, Path]:
    """Each token a list of ``--embeds`` sources provides, with the source, read from their names
    and headers only (no model needed): a run folder's ``embeddings.json``, a token folder, a
    safetensors file. Two tokens CLIP's tokenizer reads as one (``<new1>``, ``<NEW1>``) are
    refused, since whichever loaded last would stand for both."""
    from safetensors import safe_open

    from hw2cli.data.prompts import clip_token_key, same_to_clip_sentence

    tokens: dict[str, Path] = {}
    for source in sources:
        path = Path(source)
        found: list[str]
        if path.is_dir() and (path / "embeddings.json").is_file():
            from hw2cli.tasks.personalize.concepts import run_listing

            found = run_listing(path)[0]
        else:
            file = path / "learned_embeds.safetensors" if path.is_dir() else path
            try:
                with safe_open(str(file), framework="pt") as fh:
                    found = list(fh.keys())
            except Exception as exc:  # a missing or foreign file: one sentence
                raise UsageError(f"cannot read {file} as safetensors embeddings: {exc}.") from None
        for token in found:
            twin = next((t for t in tokens if t != token and clip_token_key(t) == clip_token_key(token)), None)
            if twin is not None:
                raise UsageError(
                    f"{same_to_clip_sentence(twin, token).removesuffix('; name them differently')}: {twin} comes "
                    f"from {tokens[twin]} and {token} from {path}; give only one of them."
                )
            tokens.setdefault(token, path)
    return tokens


def init_phrase(token: str, entry: dict[str, Any]) -> str | None:
    """What ``prompt_4_clip_eval`` says where ``prompt`` says ``token`` (the most common answer
    over the prompt pairs), or None when the twins do not line up."""
    found: Counter[str] = Counter()
    for prompt, twin in zip(entry.get("prompt") or [], entry.get("prompt_4_clip_eval") or [], strict=False):
        if prompt.count(token) != 1:
            continue
        before, after = prompt.split(token)
        if twin.startswith(before) and twin.endswith(after) and len(twin) > len(before) + len(after):
            phrase = " ".join(twin[len(before) : len(twin) - len(after)].split())
            if phrase and not TOKEN_RE.search(phrase) and ":" not in phrase:
                found[phrase] += 1
    return found.most_common(1)[0][0] if found else None


def concept_kind(token: str, entry: dict[str, Any]) -> str:
    pattern = re.compile(STYLE_RE.format(re.escape(token)), re.IGNORECASE)
    return "style" if any(pattern.search(p) for p in entry.get("prompt") or []) else "object"


def plan_concepts(entries: dict[str, dict[str, Any]], missing: Sequence[str], refs: Path) -> list[PlannedConcept]:
    """One concept per missing token, from the entry whose ``token_name`` it is; every reference
    folder is checked here, before any model loads."""
    from hw2cli.tasks.grading import list_images, reference_folder

    planned = []
    for token in missing:
        owners = [key for key, entry in entries.items() if entry["token_name"] == token]
        if not owners:
            raise UsageError(
                f"the prompts use {token}, but no concept of the input.json has it as its token_name, so there are "
                "no reference images to learn it from; give {opt:embeds} with its learned_embeds.safetensors."
            )
        key = owners[0]
        entry = entries[key]
        folder = reference_folder(refs, key, entry)
        if not list_images(folder):
            raise UsageError(f"the reference folder {folder} of concept {key!r} holds no images to learn {token} from.")
        kind = concept_kind(token, entry)
        init = init_phrase(token, entry) or ("painting" if kind == "style" else "object")
        planned.append(PlannedConcept(key, token, folder, init, kind))
    return planned


def _images_identity(folder: Path) -> list[str]:
    from hw2cli.tasks.grading import list_images

    return file_digests(list_images(folder), "reference image")


def plan_training(
    model: str | Path,
    entries: dict[str, dict[str, Any]],
    missing: Sequence[str],
    refs: Path,
    *,
    weights_dir: Path,
    steps_per_concept: int = STEPS_PER_CONCEPT,
    resolution: int | None = None,
    seed: int = 0,
) -> TrainingPlan:
    """The textual-inversion run that would learn ``missing`` (the trainer's defaults otherwise)
    and its folder under ``weights_dir``."""
    from hw2cli.tasks.personalize.train import PersonalizeOptions

    concepts = plan_concepts(entries, missing, refs)
    opts = PersonalizeOptions(
        model=str(model),
        concepts=[c.spec() for c in concepts],
        out="",
        steps=steps_per_concept * len(concepts),
        seed=seed,
        **({"resolution": resolution} if resolution else {}),
    )
    recipe = {k: v for k, v in asdict(opts).items() if k not in ("model", "concepts", "out")}
    identity = {
        "model": model_identity(model),
        "concepts": [[c.token, c.init, c.kind, _images_identity(c.folder)] for c in concepts],
        "recipe": recipe,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    out = weights_dir / "personalize" / f"auto-{key}"
    opts.out = str(out)
    return TrainingPlan(concepts, out, opts, weights_dir)


def plan_from_first(
    model: str | Path,
    entries: dict[str, dict[str, Any]],
    missing: Sequence[str],
    refs: Sequence[Path],
    **kwargs: Any,
) -> TrainingPlan:
    """:func:`plan_training` with the first of ``refs`` that holds every concept's folder (only a
    missing folder moves on to the next; any other problem is final), its run folder made (so an
    unwritable weights folder is said before any model loads). ``kwargs``: plan_training's."""
    from hw2cli.tasks.grading import MissingReferences

    failures: list[UsageError] = []
    folders = list({Path(folder).resolve(): Path(folder) for folder in refs}.values())  # one folder named two ways
    for folder in folders:
        try:
            plan = plan_training(model, entries, missing, folder, **kwargs)
            break
        except MissingReferences as exc:
            failures.append(exc)
    else:
        if len(failures) == 1:
            raise failures[0]
        first = str(failures[0].args[0]).rstrip(".")
        others = " or ".join(str(folder) for folder in folders[1:])
        raise UsageError(
            f"{first}; {others} does not hold them either (pass {{opt:refs}} with the folder, or set HW2_DATA_ROOT "
            "to the hw2_data folder whose textual_inversion/ holds them)."
        )
    if finished(plan):
        return plan
    try:
        plan.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only home (a grading container): the graded run goes on
        reason = exc.strerror or str(exc)
        spare = _spare_folder(plan.out)
        if finished(replace(plan, out=spare)):  # an earlier run here kept them there
            return _moved(plan, spare, f"cannot create {plan.out} ({reason}); using the embeddings an earlier run "
                                       f"learned and kept in {spare}.")  # fmt: skip
        try:
            spare.mkdir(parents=True, exist_ok=True)
        except OSError:
            raise UsageError(
                f"cannot create {plan.out} to keep the learned embeddings ({reason}), nor {spare}; set "
                "HW2_WEIGHTS_DIR (or --weights-dir) to a writable folder."
            ) from None
        return _moved(plan, spare, f"cannot create {plan.out} ({reason}); the learned embeddings are kept in {spare} "
                                   "instead, which this machine may clear (set HW2_WEIGHTS_DIR to a writable folder to "
                                   "keep them for good).")  # fmt: skip
    return plan


def _spare_folder(out: Path) -> Path:
    """Where a run goes when the weights folder cannot be written: the temporary folder."""
    import tempfile

    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"hw2-{uid}" / "personalize" / out.name


def _moved(plan: TrainingPlan, spare: Path, note: str) -> TrainingPlan:
    return replace(plan, out=spare, opts=replace(plan.opts, out=str(spare)), notes=[*plan.notes, note])


def finished(plan: TrainingPlan) -> bool:
    """The run has published embeddings of its last step."""
    try:
        config = json.loads((plan.out / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("step") == plan.opts.steps and (plan.out / "embeddings.json").is_file()


def train_planned(
    plan: TrainingPlan,
    *,
    device: Any,
    offline: bool = False,
    note: Callable[[str], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Run (or continue) the planned training unless it has finished; return its run folder."""
    from hw2cli.tasks.personalize.train import train_personalization
    from hw2cli.tasks.training import state_folders

    if not finished(plan):
        import gc

        import torch

        try:
            train_personalization(
                plan.opts,
                device=device,
                cache=plan.weights_dir,
                offline=offline,
                resume=bool(state_folders(plan.out)),
                note=note,
                on_start=on_start,
                on_step=on_step,
            )
        except BaseException:
            # stopped or failed before it saved anything: the folder plan_from_first made goes
            # (rmdir removes only an empty folder; a saved state stays for the next run)
            with contextlib.suppress(OSError):
                plan.out.rmdir()
            raise
        gc.collect()  # the training pipeline is gone; give its memory back before generation loads one
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return plan.out
