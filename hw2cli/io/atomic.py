"""Atomic writes: every file is written under a temporary name in its folder and renamed.

A crash or Ctrl-C therefore never leaves a half-written image, checkpoint or report behind:
the destination either holds the old content or the complete new one (``os.replace`` is
atomic on POSIX and Windows when both names are on one file system, which a sibling
temporary file guarantees).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hw2cli.errors import RunError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    ``fsync=True`` flushes the data to disk before the rename (use it for checkpoints, where
    a power loss must not leave an empty file under the final name).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise RunError(f"cannot write to {path.parent}: {exc.strerror or exc}.") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file gets the usual permissions
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> Path:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_image(image: Any, path: str | os.PathLike[str], **save_kwargs: Any) -> Path:
    """Save a PIL image, an ``HxWxC`` / ``HxW`` uint8 array, or a ``CxHxW`` uint8 tensor.

    The format comes from the file's extension (the temporary name has none, so it is passed).
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        array = image
        if hasattr(array, "detach"):  # torch tensor, CxHxW
            array = array.detach().cpu()
            if array.ndim == 3:
                array = array.permute(1, 2, 0)
            array = array.numpy()
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        image = Image.fromarray(array)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise RunError(f"cannot tell the image format of {path}: use a .png or .jpg name.")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **save_kwargs)
    return Path(path)


def save_safetensors(
    tensors: Mapping[str, Any], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a safetensors file atomically and durably (it is usually a checkpoint)."""
    from safetensors.torch import save_file

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path, fsync=True) as tmp:
        save_file(contiguous, str(tmp), metadata=dict(metadata) if metadata else None)
    return Path(path)


def torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` atomically and durably (optimizer state, RNG state, legacy .pt files)."""
    import torch

    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)
    return Path(path)
