"""Generating with learned tokens: the graded ``hw2_3.sh`` layout and free prompts.

Image ``i`` of a prompt always comes from the generator seeded ``(seed, i)`` and batches always
cover the same images, so a rerun after an interruption keeps finished batches and the result is
byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hw2cli.errors import UsageError
from hw2cli.io.atomic import confine, inside, listed, remove_stale_temporaries, save_image
from hw2cli.io.manifest import prepare_outputs
from hw2cli.tasks.personalize.concepts import check_prompt_tokens


def set_sampler(pipe: Any, sampler: str) -> None:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if sampler == "dpm":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
    elif sampler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    else:
        raise UsageError(f"{{opt:sampler}} {sampler!r} is not known; expected dpm or ddim.")


def _generator_seed(seed: int, index: int) -> int:
    return seed * 10_007 + index


def iter_images(
    pipe: Any,
    prompt: str,
    n: int,
    *,
    steps: int,
    guidance: float,
    seed: int,
    batch: int,
    resolution: int | None = None,
    skip: Callable[[int, int], bool] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, list[Any]]]:
    """Yield ``(start, PIL images)`` per batch of one prompt; image ``i`` always comes from the
    generator seeded ``(seed, i)`` and batches always cover the same images, so a batch that
    ``skip(start, stop)`` leaves out changes nothing in the others."""
    if not math.isfinite(guidance):
        raise UsageError(f"the guidance scale must be a finite number, got {guidance}.")
    for start in range(0, n, batch):
        count = min(batch, n - start)
        if skip is not None and skip(start, start + count):
            if on_batch is not None:
                on_batch(count)
            continue
        gens = [torch.Generator(pipe.device).manual_seed(_generator_seed(seed, start + i)) for i in range(count)]
        kwargs = {"height": resolution, "width": resolution} if resolution else {}
        result = pipe([prompt] * count, num_inference_steps=steps, guidance_scale=guidance, generator=gens, **kwargs)
        yield start, list(result.images)
        if on_batch is not None:
            on_batch(count)


def generate_images(pipe: Any, prompt: str, n: int, **kwargs: Any) -> list[Any]:
    """``n`` PIL images of one prompt (see :func:`iter_images` for the keyword arguments)."""
    return [image for _, images in iter_images(pipe, prompt, n, **kwargs) for image in images]


HASHED_STEM = re.compile(r"-[0-9a-f]{8}$")


def prompt_file_stem(prompt: str) -> str:
    """The prompt's words as a file name, one per prompt: the words alone (``A_new1_on_a_hill``)
    where the prompt is their plain sentence (:func:`plain_sentence`: words, ``<tokens>`` like
    ``<new1>``, one final '.'), else with a hash of the whole prompt (``A_dog-1a2b3c4d`` for
    ``A dog!``; ``prompt-…`` where no word is left): two prompts never share a name, so one never
    replaces the other's images. A long prompt is cut, with the hash too."""
    import hashlib

    stem = re.sub(r"[^A-Za-z0-9_-]+", "", prompt.replace(" ", "_"))
    if stem and len(stem) <= 60 and prompt == plain_sentence(stem) and not HASHED_STEM.search(stem):
        return stem
    return f"{stem[:51] or 'prompt'}-{hashlib.sha256(prompt.encode()).hexdigest()[:8]}"


def plain_sentence(stem: str) -> str:
    """The one prompt whose name is ``stem`` without a hash: its words joined by spaces, those that
    look like learned tokens (letters then digits: ``new1``) in angle brackets, ending in '.'."""
    words = (f"<{w}>" if re.fullmatch(r"[A-Za-z]+[0-9]+", w) else w for w in stem.split("_"))
    return " ".join(words) + "."


def generate_prompt(
    pipe: Any,
    prompt: str,
    n: int,
    out: Path,
    *,
    identity: dict[str, Any] | None = None,
    state_dir: Path | None = None,
    resume: bool = True,
    note: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> tuple[list[Path], int]:
    """A free prompt: ``out/<prompt words>_<i>.png`` for ``i`` in ``0..n-1``; returns the paths and
    how many of them an earlier run with the same settings had finished (kept, as in the graded
    layout; image ``i`` does not depend on ``n``, so a larger ``-n`` adds to a smaller one's).
    Keyword arguments: :func:`iter_images`'s."""
    stem = prompt_file_stem(prompt)
    paths = [out / f"{stem}_{i}.png" for i in range(n)]
    settings = {
        "command": "personalize generate --prompt",
        **(identity or {}),
        "prompt": prompt,
        **{k: v for k, v in kwargs.items() if k in ("steps", "guidance", "seed", "batch", "resolution")},
        "scheduler": type(pipe.scheduler).__name__,
        "device": str(pipe.device.type),
    }
    done = prepare_outputs(out, settings, paths, state_dir=state_dir or out.parent, resume=resume, note=note, part=stem)
    with confine(out):
        skip = lambda a, b: all(p in done for p in paths[a:b])  # noqa: E731
        for start, images in iter_images(pipe, prompt, n, skip=skip, **kwargs):
            for i, img in enumerate(images):
                save_image(img, paths[start + i])
    return paths, len(done)


def prompt_sheet(paths: Sequence[Path], path: Path, title: str, *, side: int = 256, per_row: int = 5) -> Path:
    """The images of a free prompt side by side (a report's figure, e.g. the multi-concept
    results): each whose longer side exceeds ``side`` pixels shrunk to it with Lanczos (keeping
    its shape), ``per_row`` a row."""
    from PIL import Image

    from hw2cli.io.images import in_rows, labelled_grid

    tiles = []
    for file in paths:
        with Image.open(file) as im:
            im = im.convert("RGB")
            w, h = im.size
            if max(w, h) > side:
                im = im.resize((round(w * side / max(w, h)), round(h * side / max(w, h))), Image.Resampling.LANCZOS)
            tiles.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
    tiles, labels = in_rows(tiles, min(per_row, len(tiles)))
    return labelled_grid(torch.stack(tiles), path, rows=labels if len(labels) > 1 else [""], title=title, scale=1)


def graded_paths(
    entries: dict[str, dict[str, Any]], out: Path, per_prompt: int = 25
) -> dict[tuple[str, int], list[Path]]:
    """``out/<key>/<idx>/source<key>_prompt<idx>_<n>.png`` for every prompt of every concept."""
    return {
        (key, idx): [inside(out, key, str(idx), f"source{key}_prompt{idx}_{n}.png") for n in range(per_prompt)]
        for key, entry in entries.items()
        for idx in range(len(entry["prompt"]))
    }


def generate_graded(
    pipe: Any,
    entries: dict[str, dict[str, Any]],
    out: Path,
    *,
    per_prompt: int = 25,
    steps: int = 50,
    guidance: float = 7.5,
    seed: int = 0,
    batch: int = 5,
    resolution: int | None = None,
    identity: dict[str, Any] | None = None,
    state_dir: Path | None = None,
    resume: bool = True,
    on_batch: Callable[[int], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """The ``hw2_3.sh`` layout: ``out/<key>/<idx>/source<key>_prompt<idx>_<n>.png``, 25 per prompt.

    ``identity`` names the model and embeddings (what the plugin knows of them); with ``resume`` a
    rerun with the same identity and settings keeps finished images and makes only missing
    batches. Returns ``{"written": n, "reused": n}``.
    """
    check_prompt_tokens(pipe, [p for entry in entries.values() for p in entry["prompt"]])
    layout = graded_paths(entries, out, per_prompt)
    for paths in layout.values():
        folder = paths[0].parent
        if folder.is_dir():
            remove_stale_temporaries(folder)
            stray = sorted(p.name for p in folder.iterdir() if p not in set(paths))
            if stray:
                raise UsageError(
                    f"{folder} already holds {listed(stray)}; the grader needs exactly "
                    f"{per_prompt} images there, so use an empty output folder."
                )
    settings = {
        "command": "personalize generate",
        **(identity or {}),
        "prompts": {key: entry["prompt"] for key, entry in entries.items()},
        "per_prompt": per_prompt,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "batch": batch,
        "resolution": resolution,
        "scheduler": type(pipe.scheduler).__name__,
        "device": str(pipe.device.type),
    }
    files = [p for paths in layout.values() for p in paths]
    done = prepare_outputs(out, settings, files, state_dir=state_dir or out.parent, resume=resume, note=note)
    written = 0
    with confine(out):
        for (key, idx), paths in layout.items():
            prompt = entries[key]["prompt"][idx]
            for start, images in iter_images(
                pipe,
                prompt,
                per_prompt,
                steps=steps,
                guidance=guidance,
                seed=seed + 1000 * idx + hash_key(key),
                batch=batch,
                resolution=resolution,
                skip=lambda a, b, paths=paths: all(p in done for p in paths[a:b]),
                on_batch=on_batch,
            ):
                for i, image in enumerate(images):
                    save_image(image, paths[start + i])
                    written += 1
    return {"written": written, "reused": len(done)}


def cut_tokens(pipe: Any, prompts: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The prompts whose learned ``<tokens>`` lie past the text encoder's length (the pipeline cuts
    them off, so the images never see them), with those tokens."""
    from hw2cli.tasks.personalize.concepts import prompt_tokens

    tokenizer = pipe.tokenizer
    limit = min(tokenizer.model_max_length, pipe.text_encoder.config.max_position_embeddings)
    found = []
    for text in prompts:
        wanted = prompt_tokens([text])
        ids = tokenizer(text, truncation=False).input_ids
        kept = set(tokenizer.convert_ids_to_tokens(ids[: limit - 1]))  # the last place is the end token
        lost = [t for t in wanted if t not in kept]
        if lost:
            found.append((text, lost))
    return found


def embedding_sources(prompts: Sequence[str], embeddings: Sequence[str | Path] | None) -> tuple[list[Path], list[str]]:
    """The embeddings to load for ``prompts`` (the given ones, else the shipped ones where the
    prompts use a ``<token>``) and the tokens the prompts use that none of them provides."""
    from hw2cli.data.prompts import same_to_clip
    from hw2cli.tasks.personalize.auto import provided_by
    from hw2cli.tasks.personalize.concepts import default_embeddings, prompt_tokens

    needed = prompt_tokens(prompts)
    sources = [Path(s) for s in embeddings or []]
    for source in sources:
        if not source.exists():
            raise UsageError(f"the embeddings {source} do not exist.")
    if not sources and needed and (default := default_embeddings()) is not None:
        sources = [default]
    provided = provided_by(sources) if needed else {}
    clash = same_to_clip([*needed, *provided])
    if clash is not None:  # CLIP reads both as one: one would stand for the other (or be learned for nothing)
        first, second = clash
        where = {t: f" (from {provided[t]})" if t in provided else " (in a prompt)" for t in clash}
        raise UsageError(
            f"the tokens {first}{where[first]} and {second}{where[second]} are the same to CLIP's tokenizer (it "
            "lower-cases text); write them as one, or name them differently."
        )
    return sources, [t for t in needed if t not in provided]


def hash_key(key: str) -> int:
    """A stable small integer per concept key (Python's hash() is salted per process)."""
    return sum((i + 1) * ord(ch) for i, ch in enumerate(key)) % 997 * 100_000


def generate(
    model: str | Path,
    out: Path,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    weights_dir: Path,
    offline: bool = False,
    entries: dict[str, dict[str, Any]] | None = None,
    prompt: str | None = None,
    embeddings: list[Path] | None = None,
    n: int = 4,
    steps: int = 50,
    guidance: float = 7.5,
    sampler: str = "dpm",
    seed: int = 0,
    batch: int = 5,
    resolution: int | None = None,
    resume: bool = True,
    note: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
    on_start: Callable[[int, list[str]], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The whole of ``hw2 personalize generate``: the graded layout for ``entries`` (an input.json)
    or ``n`` images of ``prompt``. Embeddings are needed only for the ``<tokens>`` the prompts use
    (the shipped ones unless ``embeddings`` are given). Returns ``{"written", "reused", "paths"}``."""
    from hw2cli.pretrained.sd import load_pipeline
    from hw2cli.tasks.personalize.concepts import load_embeddings

    if (entries is None) == (prompt is None):
        raise UsageError("generate either the graded layout of an input.json or one free prompt, not both.")
    if prompt is not None and not prompt.strip():
        raise UsageError(f"{{opt:prompt}} {prompt!r} holds no words; give the text to draw.")
    prompts = [prompt] if prompt is not None else [p for e in entries.values() for p in e["prompt"]]  # type: ignore[union-attr]
    sources, missing = embedding_sources(prompts, embeddings)
    if missing:  # before the model loads
        learn = (
            ", or {opt:train_missing} to learn them now from the reference images beside the input.json"
            if entries is not None
            else ""
        )
        if not sources:
            raise UsageError(
                f"the prompts use {', '.join(missing)}, but this install ships no trained embeddings yet; give "
                f"{{opt:embeds}} (hw2 personalize train makes them){learn}."
            )
        raise UsageError(
            f"the prompts use {', '.join(missing)}, which none of the embeddings given provides; pass "
            f"{{opt:embeds}} once more with the run that learned it (the option repeats){learn}."
        )
    if device.type == "cpu":
        dtype = torch.float32  # half precision on a CPU is slow and lossy
    pipe = load_pipeline(model, device=device, dtype=dtype, cache=weights_dir, offline=offline, note=note)
    tokens = load_embeddings(pipe, sources)
    check_prompt_tokens(pipe, prompts)
    warn = warn or note
    for text, lost in cut_tokens(pipe, prompts):
        if warn is not None:
            warn(
                f"the prompt {text[:60]!r}… is longer than the text encoder's "
                f"{pipe.tokenizer.model_max_length} tokens, so {', '.join(lost)} falls beyond the end and is ignored."
            )
    set_sampler(pipe, sampler)
    total = n if prompt is not None else sum(len(e["prompt"]) for e in entries.values()) * 25  # type: ignore[union-attr]
    if on_start is not None:
        on_start(total, tokens)
    common = {"steps": steps, "guidance": guidance, "seed": seed, "batch": batch, "resolution": resolution}
    from hw2cli.io.manifest import fingerprint

    identity = {
        "model": fingerprint(model) if Path(model).exists() else str(model),
        "embeddings": [fingerprint(s) for s in sources],
    }
    if prompt is not None:
        paths, reused = generate_prompt(pipe, prompt, n, out, identity=identity, state_dir=weights_dir, resume=resume,
                                        note=warn, on_batch=on_batch, **common)  # fmt: skip
        title = f"{prompt} ({n} image{'s' if n != 1 else ''}; {steps} steps, guidance {guidance:g}, seed {seed})"
        with confine(out):
            sheet = prompt_sheet(paths, out / f"{prompt_file_stem(prompt)}_sheet.png", title)
        return {"written": len(paths) - reused, "reused": reused, "paths": paths, "sheet": sheet}
    result = generate_graded(pipe, entries, out, identity=identity, state_dir=weights_dir, resume=resume,  # type: ignore[arg-type]
                             on_batch=on_batch, note=warn, **common)  # fmt: skip
    return {**result, "paths": []}
