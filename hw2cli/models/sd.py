"""Stable Diffusion v1.x through diffusers: a diffusers folder, a Hub id, or the original
single-file checkpoint (``sd-v1-4.ckpt``) — the last one fully offline.

``from_single_file`` needs the pipeline's configs; diffusers would fetch them from the Hub.
The package ships them (``hw2cli/assets/sd_v1``: UNet, VAE, the CLIP ViT-L/14 text encoder,
the PNDM scheduler, the tokenizer's settings), and the tokenizer's ``vocab.json`` /
``merges.txt`` are derived from the BPE file open_clip bundles (the same CLIP BPE), so nothing
is downloaded.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from hw2cli.errors import RunError, UsageError

SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


def shipped_config_dir() -> Path:
    return Path(str(resources.files("hw2cli.assets").joinpath("sd_v1")))


def sd_config_dir(cache: Path) -> Path:
    """A complete diffusers config folder for SD v1 (shipped JSON + derived tokenizer files)."""
    from hw2cli.models.clip import write_clip_tokenizer_files

    target = cache / "sd_v1_config"
    marker = target / "tokenizer" / "merges.txt"
    if marker.exists():
        return target
    tmp = cache / "sd_v1_config.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(shipped_config_dir(), tmp)
    write_clip_tokenizer_files(tmp / "tokenizer")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def load_pipeline(
    model: str | Path,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    cache: Path,
    offline: bool = False,
) -> Any:
    """A ``StableDiffusionPipeline`` (no safety checker) from a folder, a single file or a Hub id."""
    from diffusers import StableDiffusionPipeline

    quiet_libraries()
    path = Path(model)
    common: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False, **_dtype_kwarg(dtype)}
    try:
        if path.is_dir():
            if not (path / "model_index.json").exists():
                raise UsageError(
                    f"--model {path} is a folder without model_index.json; pass a diffusers Stable Diffusion "
                    "folder or the sd-v1-4.ckpt file."
                )
            pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, **common)
        elif path.suffix in SINGLE_FILE_SUFFIXES:
            if not path.is_file():
                raise UsageError(f"--model {path} does not exist; pass the homework's sd-v1-4.ckpt.")
            pipe = StableDiffusionPipeline.from_single_file(
                str(path),
                config=str(sd_config_dir(cache)),
                local_files_only=True,
                load_safety_checker=False,
                **common,
            )
        elif "/" in str(model) and not path.exists():
            pipe = StableDiffusionPipeline.from_pretrained(
                str(model), local_files_only=offline, cache_dir=str(cache / "hub"), **common
            )
        else:
            raise UsageError(
                f"--model {model} is neither a diffusers folder, a .ckpt/.safetensors file nor a Hub id "
                "(like CompVis/stable-diffusion-v1-4)."
            )
    except (UsageError, RunError):
        raise
    except OSError as exc:
        raise RunError(
            f"cannot load Stable Diffusion from {model}: {exc}. Offline, pass a local sd-v1-4.ckpt or a "
            "diffusers folder; online, a Hub id downloads once into the weights cache."
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (and warns about the old name); older ones know only it."""
    from diffusers.utils import deprecation_utils

    return (
        {"dtype": dtype} if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else {"torch_dtype": dtype}
    )


def quiet_libraries() -> None:
    """diffusers/transformers progress bars and advice would interleave with ours; hw2 reports itself."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from hw2cli import ui

    for lib in (diffusers_logging, transformers_logging):
        lib.disable_progress_bar()
        if not ui.is_debug():
            lib.set_verbosity_error()
