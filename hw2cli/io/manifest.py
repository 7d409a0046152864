"""Reusing finished outputs after an interruption, and only when they are what this run would make.

A generating command records every setting that decides the bytes of its files (model identity,
sampler, steps, guidance, seed, ...) before it writes any of them, in a small JSON file kept in
the weights/cache folder under a hash of the output folder's path (so the graded folder itself
holds nothing but images).
A rerun into the same folder with the same settings keeps the files already there (each one was
written atomically, so it is complete) and makes only the missing ones; a rerun with other
settings first deletes the old files it would overwrite, so a folder never mixes two runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

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


def manifest_path(folder: Path, state_dir: Path) -> Path:
    key = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:24]
    return Path(state_dir) / "outputs" / f"{key}.json"


def prepare_outputs(
    folder: Path, settings: Mapping[str, Any], files: Iterable[Path], *, state_dir: Path, resume: bool = True
) -> set[Path]:
    """Record ``settings`` for ``folder``; return those of ``files`` that a previous run with the same
    settings finished (empty without ``resume`` or when the settings differ, after deleting them)."""
    files = list(files)
    wanted = {"folder": str(Path(folder).resolve()), **_normalise(settings)}
    manifest = manifest_path(folder, state_dir)
    previous = None
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
    if resume and previous == wanted:
        return {f for f in files if f.is_file() and f.stat().st_size > 0}
    for f in files:
        if f.is_file():
            f.unlink()
    write_json(manifest, wanted)
    return set()
