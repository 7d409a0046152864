"""Writing a digits folder in the homework layout: ``data/*.png``, ``train.csv``, ``val.csv``.

Every maker of digit data (synthetic look-alikes, MNIST-M by its recipe, SVHN) hands this module
its images batch by batch. The new images go to a staging folder beside ``data/`` and are swapped
in when complete, so an interrupted run leaves the old set whole; the CSVs are written
atomically afterwards. One writer thread encodes and writes batch b while the caller computes
batch b + 1 (PNG encoding and file writes release the GIL); what each file holds does not depend
on the timing.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hw2cli.errors import RunError
from hw2cli.io.atomic import make_staging_folder, remove_stale_temporaries, write_text


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


def write_digit_folder(
    folder: Path,
    labels: np.ndarray,
    is_val: np.ndarray,
    batches: Iterable[np.ndarray],
    *,
    what: str,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Write ``folder/data/NNNNN.png`` from ``batches`` (uint8 ``[b, 28, 28, 3]``, in order) and the
    two split CSVs from ``labels`` / ``is_val``; return ``{"train": n, "val": n}``."""
    make_folder(folder)
    remove_stale_temporaries(folder)
    names = image_names(len(labels))
    staging = make_staging_folder(folder / "data")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hw2-digits-writer")
    pending: list[Future[int]] = []
    start = 0
    try:
        try:
            for pixels in batches:
                pending.append(writer.submit(_write_pngs, staging, names[start : start + len(pixels)], pixels))
                start += len(pixels)
                while len(pending) > 1 or (pending and pending[0].done()):
                    done = pending.pop(0).result()
                    if on_progress is not None:
                        on_progress(done)
            while pending:
                done = pending.pop(0).result()
                if on_progress is not None:
                    on_progress(done)
        finally:  # stop the writer before anything removes its folder
            for future in pending:
                future.cancel()
            writer.shutdown(wait=True)
        if start != len(labels):
            raise RuntimeError(f"{what}: {start} images made for {len(labels)} labels")
        _swap_in(staging, folder / "data")
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise RunError(f"cannot write the {what} images under {folder}: {exc.strerror or exc}.") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    for split, mask in (("train", ~is_val), ("val", is_val)):
        rows = [f"{names[i]},{int(labels[i])}" for i in np.flatnonzero(mask)]
        write_text(folder / f"{split}.csv", "image_name,label\n" + "".join(r + "\n" for r in rows))
    return {"train": int((~is_val).sum()), "val": int(is_val.sum())}


def _write_pngs(folder: Path, names: Sequence[str], pixels: np.ndarray) -> int:
    from PIL import Image

    for file_name, array in zip(names, pixels, strict=True):
        buf = io.BytesIO()
        Image.fromarray(array, "RGB").save(buf, format="PNG", compress_level=6)
        with open(folder / file_name, "wb") as fh:
            fh.write(buf.getvalue())
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
