"""Reusing finished outputs after an interruption, and only when they are what this run would make.

A generating command records every setting that decides the bytes of its files (model identity,
sampler, steps, guidance, seed, ...) before it writes any of them, in a small JSON file kept in
the weights/cache folder under a hash of the output folder's path (so the graded folder itself
holds nothing but images).
A rerun into the same folder with the same settings keeps the files already there (each one was
written atomically; an image is kept only if it still opens and passes Pillow's check, since
someone else may have damaged it) and makes only the missing ones; a rerun with other settings
first deletes the old files it would overwrite, so a folder never mixes two runs. The record is a
convenience: where the weights folder cannot be written, the run goes on without it (an
interruption then starts over); the records of folders since deleted are dropped when a new one
is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from hw2cli.errors import HW2Error, RunError
from hw2cli.io.atomic import write_json

_EDGE = 1 << 20


def fingerprint(path: str | os.PathLike[str]) -> str:
    """Identify a file (or every file of a folder) cheaply: size, mtime and a hash of the first and
    last MiB; enough to notice another checkpoint without reading gigabytes."""
    root = Path(path)
    files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(root) if root.is_dir() else f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        hash_edges(digest, f, st.st_size)
    return digest.hexdigest()[:32]


def hash_edges(digest: Any, path: Path, size: int) -> None:
    """Feed the first and the last MiB of ``path`` (``size`` bytes) to ``digest``."""
    with open(path, "rb") as fh:
        digest.update(fh.read(_EDGE))
        if size > 2 * _EDGE:
            fh.seek(-_EDGE, os.SEEK_END)
            digest.update(fh.read(_EDGE))


def _normalise(settings: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(settings), sort_keys=True, default=str))


def manifest_path(folder: Path, state_dir: Path, part: str | None = None) -> Path:
    """Where the record of ``folder`` lives; ``part`` names one of several sets of files a folder
    holds side by side (the free prompts of ``personalize generate``), each with its own record."""
    name = str(Path(folder).resolve()) + ("" if part is None else f"\0{part}")
    key = hashlib.sha256(name.encode()).hexdigest()[:24]
    return Path(state_dir) / "outputs" / f"{key}.json"


def forget_removed_folders(state_dir: Path, keep: Path | None = None, min_age_s: float = 3600.0) -> int:
    """Delete the records of output folders that no longer exist (so records do not pile up);
    returns how many. Only records older than ``min_age_s`` go (a run records its folder before
    it makes it), never ``keep``; a record that cannot be read is left alone."""
    import time

    removed, now = 0, time.time()
    for record in (Path(state_dir) / "outputs").glob("*.json"):
        try:
            if record == keep or now - record.stat().st_mtime < min_age_s:
                continue
            folder = json.loads(record.read_text()).get("folder")
            if isinstance(folder, str) and not Path(folder).exists():
                record.unlink()
                removed += 1
        except (OSError, ValueError, AttributeError):
            continue
    return removed


def finished_file(path: Path) -> bool:
    """``path`` is a complete file: not empty and, for an image, one Pillow opens and verifies
    (a truncated or damaged PNG fails its chunk CRCs)."""
    from hw2cli.data import IMAGE_SUFFIXES

    if not path.is_file() or path.stat().st_size == 0:
        return False
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return True
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception:  # any failure to parse means: make it again
        return False
    return True


def prepare_outputs(
    folder: Path,
    settings: Mapping[str, Any],
    files: Iterable[Path],
    *,
    state_dir: Path,
    resume: bool = True,
    note: Callable[[str], None] | None = None,
    part: str | None = None,
) -> set[Path]:
    """Record ``settings`` for ``folder`` (or for its ``part``, see :func:`manifest_path`); return
    those of ``files`` that a previous run with the same settings finished (empty without
    ``resume`` or when the settings differ, after deleting them). Where the record cannot be
    written, ``note`` says so and the run goes on without it."""
    from hw2cli.io.locks import claim

    claim(folder, part=part)  # before the record is read: a second writer is refused, not mixed in
    files = list(files)
    wanted = {"folder": str(Path(folder).resolve()), **_normalise(settings)}
    manifest = manifest_path(folder, state_dir, part)
    previous = None
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
    if resume and previous == wanted:
        return {f for f in files if finished_file(f)}
    for f in files:
        if f.is_file():
            f.unlink()
    try:
        write_json(manifest, wanted)
        forget_removed_folders(Path(state_dir), keep=manifest)
    except (OSError, HW2Error) as exc:
        if previous is not None:  # an old record left in place would vouch for these new files later
            try:
                manifest.unlink()
            except OSError:
                raise RunError(f"cannot update {manifest} ({exc}); make it writable or remove it.") from None
        if note is not None:
            note(
                f"cannot record this run's settings in {manifest.parent} ({exc}); the images are made all the same, "
                "but an interrupted run will start over (set HW2_WEIGHTS_DIR to a writable folder to keep them)."
            )
    return set()
