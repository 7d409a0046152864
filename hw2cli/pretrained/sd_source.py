"""What a Stable Diffusion ``--model`` names, told apart without importing torch or diffusers,
so a mistyped path is one sentence in a fraction of a second, before any plan is announced."""

from __future__ import annotations

import re
from pathlib import Path

from hw2cli.errors import UsageError

SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")
# owner/name on the Hub: one slash, neither part a path step ("/abs", "./x", "a/../b" are paths)
HUB_ID_RE = re.compile(r"(?!\.)[\w.-]+/(?!\.)[\w.-]+")


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
