"""Stable Diffusion v1.x through diffusers: a diffusers folder, a Hub id, or the original single
file (the homework's ``sd-v1-4.ckpt``) — the last one fully offline, safely and fast.

The original ``sd-v1-4.ckpt`` is a PyTorch Lightning 1.4 checkpoint: a pickled dict whose
``callbacks`` are keyed by the class ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``
(some v1 files also pickle numpy scalars). ``torch.load(weights_only=True)`` refuses such a file,
and diffusers' own single-file loader then falls back to reading the whole 4 GB file as text
(35 s and 9 GB of memory before a bare ``OSError``). Here:

1. the file's first bytes say what it is (a PyTorch zip, a legacy pickle, safetensors); anything
   else, or a truncated archive, is one sentence in well under a second;
2. a ``.ckpt`` is read with ``weights_only=True`` (memory-mapped where the format allows) under
   ``torch.serialization.safe_globals``, which allow-lists an inert stand-in for the Lightning
   class (only its module path and name matter; Lightning itself is never imported) and the
   numpy scalar/dtype globals; ``state_dict`` is taken and checked to be SD v1 (UNet, VAE and
   CLIP ViT-L/14 text encoder keys in the original CompVis layout);
3. it is converted once to a safetensors file in the weights cache, keyed by the source's size,
   mtime and a hash of its first and last MiB, so later runs memory-map that file in seconds;
4. diffusers gets the safetensors file with the configs shipped in ``hw2cli/assets/sd_v1``
   (UNet, VAE, text encoder, scheduler, tokenizer settings; the tokenizer's vocabulary is derived
   from the CLIP BPE that open_clip ships) and ``safety_checker=None``: no Hub access at all.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from hw2cli.errors import RunError, UsageError
from hw2cli.io.manifest import hash_edges
from hw2cli.pretrained.sd_source import file_kind, model_kind

LIGHTNING_CALLBACK = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
# What an SD v1 state dict in the original layout holds (counted on sd-v1-4.ckpt)
V1_PREFIXES = {
    "model.diffusion_model.": 686,
    "first_stage_model.": 248,
    "cond_stage_model.transformer.text_model.": 196,
}

Note = Callable[[str], None]


def shipped_config_dir() -> Path:
    return Path(str(resources.files("hw2cli.assets").joinpath("sd_v1")))


def sd_config_dir(cache: Path) -> Path:
    """A complete diffusers config folder for SD v1 (shipped JSON + derived tokenizer files)."""
    from hw2cli.pretrained.tokenizer import write_clip_tokenizer_files

    target = cache / "sd_v1_config"
    marker = target / "tokenizer" / "merges.txt"
    if marker.exists():
        return target
    tmp = cache / f"sd_v1_config.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(shipped_config_dir(), tmp)
    write_clip_tokenizer_files(tmp / "tokenizer")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


# --------------------------------------------------------------------------- reading a single file safely


class ModelCheckpoint:
    """An inert stand-in for Lightning's ``ModelCheckpoint``: the unpickler may build it (or use the
    class as a dict key, as ``sd-v1-4.ckpt`` does); it has no behaviour at all."""


ModelCheckpoint.__module__ = LIGHTNING_CALLBACK.rsplit(".", 1)[0]


def _safe_globals() -> list[Any]:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    allowed: list[Any] = [ModelCheckpoint, scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
    allowed.append((np.dtype, "numpy.core.multiarray.dtype"))
    dtype_classes = {type(np.dtype(code)) for code in ("f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2",
                                                        "u1", "b1")}  # fmt: skip
    allowed += sorted(dtype_classes, key=lambda c: c.__name__)
    return allowed


def read_checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a ``.ckpt``/``.pt`` (Lightning envelope or a bare dict), read with
    ``weights_only=True``; never runs code from the file."""
    from hw2cli.io.checkpoints import load_error

    path = Path(path)
    kind = file_kind(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise load_error(path, "a safetensors checkpoint", exc) from None
    what = "a Stable Diffusion checkpoint"
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except Exception as exc:
        raise load_error(path, what, exc) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise UsageError(f"{path} holds no state dict (expected a dict with 'state_dict', as sd-v1-4.ckpt has).")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def check_sd_v1(keys: Iterable[str], path: Path) -> None:
    """A clear sentence when ``keys`` are not an SD v1 state dict in the original layout."""
    keys = list(keys)
    counts = {prefix: sum(k.startswith(prefix) for k in keys) for prefix in V1_PREFIXES}
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise UsageError(f"{path} is a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder); hw2 needs v1.x.")
    if any(k.startswith("conditioner.embedders.") for k in keys):
        raise UsageError(f"{path} is a Stable Diffusion XL checkpoint; hw2 needs v1.x (sd-v1-4.ckpt).")
    missing = [prefix for prefix, n in counts.items() if n == 0]
    if missing:
        raise UsageError(
            f"{path} is not a Stable Diffusion v1 checkpoint: it has no {missing[0]}* weights "
            f"({len(keys)} tensors in all; sd-v1-4.ckpt has {sum(V1_PREFIXES.values())} in those three parts)."
        )
    short = [f"{prefix}* {counts[prefix]} of {n}" for prefix, n in V1_PREFIXES.items() if counts[prefix] < n]
    if short:
        raise UsageError(f"{path} is an incomplete Stable Diffusion v1 checkpoint ({'; '.join(short)} tensors).")


def _source_key(path: Path) -> str:
    st = path.stat()
    digest = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
    hash_edges(digest, path, st.st_size)
    return digest.hexdigest()[:16]


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share storage; give every later sharer its own copy."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[key] = tensor.clone() if ident in seen else tensor
        seen.add(ident)
    return out


def cached_single_file(path: Path, cache: Path, note: Note | None = None) -> Path:
    """``path`` itself if it is safetensors; else its one-time safetensors conversion in the cache."""
    if file_kind(path) == "safetensors":
        from safetensors import safe_open

        from hw2cli.io.checkpoints import load_error

        try:
            with safe_open(str(path), framework="pt") as fh:
                check_sd_v1(fh.keys(), path)
        except UsageError:
            raise
        except Exception as exc:
            raise load_error(path, "a safetensors checkpoint", exc) from None
        return path
    target = cache / "sd_single_file" / f"{path.stem}-{_source_key(path)}.safetensors"
    if target.is_file():
        return target
    state = read_checkpoint_state(path)
    check_sd_v1(state, path)
    if note is not None:
        note(f"converting {path.name} to safetensors once ({target}); later runs load that in seconds")
    from hw2cli.io.atomic import save_safetensors

    target.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(_unshared(state), target, metadata={"source": str(path.resolve()), "format": "ldm-v1"})
    return target


# --------------------------------------------------------------------------- the pipeline


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (and warns about the old name); older ones know only it."""
    from diffusers.utils import deprecation_utils

    renamed = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    return {"dtype": dtype} if renamed else {"torch_dtype": dtype}


def pipeline_arguments(dtype: torch.dtype) -> dict[str, Any]:
    """What every pipeline load passes: no safety checker (``safety_checker=None`` is what turns it
    off; ``load_safety_checker=False`` would still fetch it from the Hub), and the dtype."""
    return {"safety_checker": None, "requires_safety_checker": False, **_dtype_kwarg(dtype)}


def load_pipeline(
    model: str | Path,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    cache: Path,
    offline: bool = False,
    note: Note | None = None,
) -> Any:
    """A ``StableDiffusionPipeline`` (no safety checker) from a folder, a single file or a Hub id."""
    from diffusers import StableDiffusionPipeline

    from hw2cli.pretrained.hub import ensure_offline_if_unreachable, unreachable_hint

    path = Path(model)
    common = pipeline_arguments(dtype)
    kind = model_kind(model)
    try:
        if kind == "folder":
            pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, **common)
        elif kind == "file":
            weights = cached_single_file(path, cache, note)
            pipe = StableDiffusionPipeline.from_single_file(
                str(weights), config=str(sd_config_dir(cache)), local_files_only=True, **common
            )
        else:
            offline = ensure_offline_if_unreachable(offline)
            try:
                pipe = StableDiffusionPipeline.from_pretrained(
                    str(model), local_files_only=offline, cache_dir=str(cache / "hub"), **common
                )
            except OSError as exc:
                reason = "offline mode is on" if offline else f"it could not be downloaded ({exc})"
                if offline and not os.environ.get("HW2_OFFLINE"):
                    reason = unreachable_hint()
                raise RunError(
                    f"{model} is no folder here, and as a Hub id it is not in the weights cache and {reason}; pass "
                    "a local sd-v1-4.ckpt or a diffusers folder instead."
                ) from None
    except (UsageError, RunError):
        raise
    except OSError as exc:
        raise RunError(f"cannot load Stable Diffusion from {model}: {exc}.") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
