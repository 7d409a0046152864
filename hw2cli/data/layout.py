"""Writing a digits folder in the homework layout: ``data/*.png``, ``train.csv``, ``val.csv``.

Every maker of digit data (synthetic look-alikes, MNIST-M by its recipe, SVHN) hands this module
its images batch by batch (``make_batch(b)`` for batch ``b``, each batch from its own seeded
generator). The new images go to a folder beside ``data/`` and are swapped in when complete, so
an interrupted run leaves the old set whole; the CSVs follow. One writer thread encodes and
writes batch b while the caller computes batch b + 1 (PNG encoding and file writes release the
GIL); what each file holds does not depend on the timing.

Resuming. The folder the images go to is named after a hash of everything that decides their
bytes (the maker's settings, its sources' contents, the labels and splits, hw2's version):
``.data.hw2-resume-<hash>``. It outlives an interruption (Ctrl-C, SIGTERM, ``kill -9``), and each
batch leaves a marker there once all its files are written; the same command run again finds it
and makes only the batches without a marker. Other settings mean another name, and a folder of
other settings is deleted when a run starts. Where a weights folder is given, a finished data set
is recorded there (under a hash of the data set folder's path, as the generating commands record
their outputs), so the same command run again after it finished keeps the data set as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from hw2cli.errors import HW2Error, RunError, UsageError
from hw2cli.io.atomic import make_staging_folder, remove_stale_temporaries, write_json, write_text

RESUME_PREFIX = ".data.hw2-resume-"
_DONE = ".done-"  # batch markers inside the resume folder; removed before it becomes data/
_RECORD_PART = "digit data set"


def make_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create the folder {path}: {exc.strerror or exc}.") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunError(f"cannot write to the folder {path}: permission denied.")


def image_names(total: int) -> list[str]:
    digits = max(5, len(str(total - 1)))
    return [f"{i:0{digits}d}.png" for i in range(total)]


def val_mask(labels: np.ndarray, n_val: int, rng: np.random.Generator) -> np.ndarray:
    """``n_val`` random members of each class marked for ``val.csv``."""
    is_val = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        is_val[rng.permutation(members)[:n_val]] = True
    return is_val


class Written(dict):
    """``{"train": n, "val": n}`` of a data set, and whether it was ``kept`` as a finished earlier run left it."""

    kept = False


def content_digest(arrays: Sequence[np.ndarray]) -> str:
    """A hash of the arrays' shapes, types and bytes (a maker's sources, for the resume key)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def recipe_key(recipe: Mapping[str, Any], labels: np.ndarray, is_val: np.ndarray, batch_size: int) -> str:
    """Everything that decides the bytes of a data set, hashed: two runs with one key write the same files."""
    from hw2cli import __version__

    digest = hashlib.blake2b(digest_size=10)
    settings = {**recipe, "batch_size": batch_size, "hw2": __version__}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(is_val, dtype=bool).tobytes())
    return digest.hexdigest()


def record_path(folder: Path, state_dir: Path) -> Path:
    """Where a finished data set in ``folder`` is recorded (beside the generating commands' records)."""
    from hw2cli.io.manifest import manifest_path

    return manifest_path(folder, state_dir, _RECORD_PART)


def recorded(folder: Path, state_dir: Path | None) -> dict[str, Any] | None:
    """The record of the data set hw2 last finished in ``folder`` (``None`` without one)."""
    if state_dir is None:
        return None
    try:
        record = json.loads(record_path(folder, state_dir).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("folder") != str(Path(folder).resolve()):
        return None
    return record


def held_files(folder: Path) -> list[str]:
    """The parts of a data set ``folder`` already holds (``data``, ``train.csv``, ``val.csv``)."""
    return [p.name for p in (folder / "data", folder / "train.csv", folder / "val.csv") if p.exists()]


def held_message(folder: Path, held: list[str], why: str = "") -> str:
    return (
        f"{folder} already holds a data set ({', '.join(held)}){why}; pass {{opt:replace}} to swap in the new "
        "images, or choose another OUT."
    )


def write_digit_folder(
    folder: Path,
    labels: np.ndarray,
    is_val: np.ndarray,
    make_batch: Callable[[int], np.ndarray],
    *,
    batch_size: int,
    what: str,
    recipe: Mapping[str, Any],
    state_dir: Path | None = None,
    replace: bool = True,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> Written:
    """Write ``folder/data/NNNNN.png`` from ``make_batch(b)`` (uint8 ``[b, 28, 28, 3]``, images
    ``b * batch_size`` on) and the two split CSVs from ``labels`` / ``is_val``; return
    ``{"train": n, "val": n}``.

    ``recipe`` names everything else that decides the pixels (settings and a digest of the
    sources); batches an interrupted run with the same recipe finished are not made again.
    ``on_start(done, total)`` is called once the number already done is known. Without
    ``replace``, a data set the folder holds is kept if ``state_dir`` records it as made with this
    very recipe (its CSVs are rewritten if they differ), and refused otherwise."""
    make_folder(folder)
    remove_stale_temporaries(folder)
    names = image_names(len(labels))
    key = recipe_key(recipe, labels, is_val, batch_size)
    csvs = {
        f"{split}.csv": "image_name,label\n" + "".join(f"{names[i]},{int(labels[i])}\n" for i in np.flatnonzero(mask))
        for split, mask in (("train", ~is_val), ("val", is_val))
    }
    counts = Written(train=int((~is_val).sum()), val=int(is_val.sum()))
    held = held_files(folder)
    staging = folder / f"{RESUME_PREFIX}{key}"
    if held and not replace:
        record = recorded(folder, state_dir)
        if record is None or record.get("key") != key:
            raise UsageError(held_message(folder, held, " made with other settings or sources"))
        # with this run's resume folder still there, the record was written but data/ not yet swapped in
        if not staging.exists() and _complete(folder / "data", names):
            _write_csvs(folder, csvs)
            if on_start is not None:
                on_start(len(labels), len(labels))
            elif on_progress is not None:
                on_progress(len(labels))
            if note is not None:
                note(f"{folder} already holds this data set, made by the same command; kept as it is.")
            counts.kept = True
            return counts

    _resume_folder(staging)
    n_batches = -(-len(labels) // batch_size)
    finished = [b for b in range(n_batches) if (staging / f"{_DONE}{b:06d}").exists()]
    done = sum(min(batch_size, len(labels) - b * batch_size) for b in finished)
    if on_start is not None:
        on_start(done, len(labels))
    elif on_progress is not None and done:
        on_progress(done)
    if done and note is not None:
        note(f"{what}: kept {done:,} of {len(labels):,} images an interrupted run had written.")

    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hw2-digits-writer")
    pending: list[Future[int]] = []
    try:
        try:
            for b in sorted(set(range(n_batches)) - set(finished)):
                start = b * batch_size
                pixels = make_batch(b)
                expected = min(batch_size, len(labels) - start)
                if len(pixels) != expected:
                    raise RuntimeError(f"{what}: batch {b} holds {len(pixels)} images, not {expected}")
                pending.append(writer.submit(_write_batch, staging, b, names[start : start + len(pixels)], pixels))
                while len(pending) > 1 or (pending and pending[0].done()):
                    written = pending.pop(0).result()
                    if on_progress is not None:
                        on_progress(written)
            while pending:
                written = pending.pop(0).result()
                if on_progress is not None:
                    on_progress(written)
        finally:  # stop the writer before anything removes its folder
            for future in pending:
                future.cancel()
            writer.shutdown(wait=True)
        if not _complete(staging, names):
            raise RuntimeError(f"{what}: the images in {staging} are not the {len(names)} expected")
        for marker in staging.glob(f"{_DONE}*"):
            marker.unlink()
        if state_dir is not None:  # recorded before the swap: a kill after it finds the record and the new data/
            _record(folder, state_dir, key, note)
        _swap_in(staging, folder / "data")
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise RunError(f"cannot write the {what} images under {folder}: {exc.strerror or exc}.") from exc
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # an interruption (Ctrl-C, SIGTERM) keeps the resume folder: the same command continues from it
    _write_csvs(folder, csvs)
    return counts


def _resume_folder(staging: Path) -> None:
    """Keep ``staging`` (``folder/.data.hw2-resume-<key>``) from an interrupted run or make it; the
    resume folders of other settings are deleted (their data set is not the one being made)."""
    from hw2cli.io.atomic import _check_confined

    folder = staging.parent
    _check_confined(staging)
    for entry in folder.glob(f"{RESUME_PREFIX}*"):
        if entry != staging and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
    if staging.is_symlink() or (staging.exists() and not staging.is_dir()):
        staging.unlink()
    try:
        staging.mkdir(exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot write to the folder {folder}: {exc.strerror or exc}.") from exc


def _complete(data: Path, names: Sequence[str]) -> bool:
    """``data`` holds exactly the PNGs ``names`` (and nothing else but batch markers)."""
    try:
        present = {entry.name for entry in os.scandir(data) if not entry.name.startswith(_DONE)}
    except OSError:
        return False
    return present == set(names)


def _record(folder: Path, state_dir: Path, key: str, note: Callable[[str], None] | None) -> None:
    path = record_path(folder, state_dir)
    try:
        write_json(path, {"folder": str(folder.resolve()), "key": key})
    except (OSError, HW2Error) as exc:
        with contextlib.suppress(OSError):
            path.unlink()  # an old record must not vouch for a folder it no longer describes
        if note is not None:
            note(f"cannot record the data set in {path.parent} ({exc}); a rerun will ask for --replace.")


def _write_csvs(folder: Path, csvs: Mapping[str, str]) -> None:
    for name, text in csvs.items():
        path = folder / name
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                continue
        write_text(path, text)


def _write_batch(folder: Path, batch: int, names: Sequence[str], pixels: np.ndarray) -> int:
    from PIL import Image

    for file_name, array in zip(names, pixels, strict=True):
        buf = io.BytesIO()
        Image.fromarray(array, "RGB").save(buf, format="PNG", compress_level=6)
        with open(folder / file_name, "wb") as fh:
            fh.write(buf.getvalue())
    (folder / f"{_DONE}{batch:06d}").touch()  # only once every file of the batch is whole
    return len(names)


def _swap_in(staging: Path, data: Path) -> None:
    """Replace the folder ``data`` with ``staging`` (renames within one folder, then cleanup)."""
    old: Path | None = None
    if data.is_symlink() or data.is_file():
        data.unlink()
    elif data.exists():
        old = make_staging_folder(data)
        os.replace(data, old / "data")
    os.replace(staging, data)
    if old is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)
