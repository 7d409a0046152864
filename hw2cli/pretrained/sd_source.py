"""What a Stable Diffusion ``--model`` names, told apart without importing torch or diffusers,
so a mistyped path is one sentence in a fraction of a second, before any plan is announced."""

from __future__ import annotations

import re
import struct
from pathlib import Path

from hw2cli.errors import UsageError

SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")
# owner/name on the Hub: one slash, neither part a path step ("/abs", "./x", "a/../b" are paths)
HUB_ID_RE = re.compile(r"(?!\.)[\w.-]+/(?!\.)[\w.-]+")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOLS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def model_kind(model: str | Path) -> str:
    """``folder``, ``file`` (a single checkpoint) or ``hub`` (an id to fetch); a
    :class:`UsageError` naming ``model`` when it can be none of them."""
    path = Path(model)
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise UsageError(
                f"the model folder {path} has no model_index.json; pass a diffusers Stable Diffusion "
                "folder or the sd-v1-4.ckpt file."
            )
        return "folder"
    if path.suffix in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise UsageError(f"the model {path} does not exist; pass the homework's sd-v1-4.ckpt.")
        file_kind(path)  # 16 bytes read: a file that is no checkpoint at all is said now
        return "file"
    if not path.exists() and not HUB_ID_RE.fullmatch(str(model)):
        raise UsageError(
            f"the model {model} does not exist; pass the homework's sd-v1-4.ckpt, a diffusers folder or a Hub "
            "id (like CompVis/stable-diffusion-v1-4)."
        )
    if not path.exists():
        return "hub"
    raise UsageError(
        f"the model {model} is neither a diffusers folder, a .ckpt/.safetensors file nor a Hub id "
        "(like CompVis/stable-diffusion-v1-4)."
    )


def file_kind(path: Path) -> str:
    """``zip`` (PyTorch's format since 1.6), ``pickle`` (legacy torch.save) or ``safetensors``,
    from the first bytes; a :class:`UsageError` for anything else."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}.") from None
    if size < 64:
        raise UsageError(f"{path} has {size} bytes; it is not a Stable Diffusion checkpoint (sd-v1-4.ckpt is 4.3 GB).")
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head[:2] in _PICKLE_PROTOCOLS:
        return "pickle"
    header_len = struct.unpack("<Q", head[:8])[0]
    if 0 < header_len < size and head[8:9] == b"{":
        return "safetensors"
    raise UsageError(
        f"{path} is neither a PyTorch checkpoint nor a safetensors file (its first bytes are {head[:8]!r})."
    )
