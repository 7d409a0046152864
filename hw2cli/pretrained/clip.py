"""CLIP behind one small interface, from open_clip or from Hugging Face transformers.

:func:`load_clip` returns a :class:`ClipModel` whichever backend holds the weights:

- ``open_clip``: a model name (``ViT-B-32``, an open_clip ``hf-hub:``/``local-dir:`` name, or a
  model-config JSON file) with a pretrained tag (``openai``, ``laion2b_s34b_b79k``, …, downloaded
  into the cache) or a local checkpoint (``.pt``/``.pth``/``.bin``/``.safetensors``, OpenAI's
  TorchScript release included). OpenAI weights were trained with QuickGELU: tags say so
  themselves, and for a file it is on when the file looks like OpenAI's (a TorchScript archive,
  an OpenAI release file name, or ``openai`` in the name) unless ``quick_gelu`` says otherwise.
- ``transformers``: a Hub id (the P3 grader's ``openai/clip-vit-base-patch32``) or a folder written
  by ``CLIPModel.save_pretrained``. A folder without tokenizer files gets the CLIP BPE tokenizer
  derived from open_clip's bundled vocabulary (:func:`write_clip_tokenizer_files`), one without
  ``preprocessor_config.json`` CLIP's standard preprocessing at the model's image size.

Features come back L2-normalised, in float32; ``logit_scale`` is the model's
``exp(logit_scale)`` (100 for the released models), so ``logit_scale · cos`` is CLIP's
``logits_per_image``. Nothing here prints; heavy imports happen inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hw2cli.errors import RunError, UsageError
from hw2cli.io.checkpoints import is_torchscript, load_error, quiet_pickle_protocol, torchscript_state_dict
from hw2cli.pretrained.hub import ensure_offline_if_unreachable, unreachable_hint
from hw2cli.pretrained.tokenizer import write_clip_tokenizer_files

if TYPE_CHECKING:
    import torch
    from PIL import Image

BACKENDS = ("open_clip", "transformers")
DEFAULT_MODEL = {"open_clip": "ViT-B-32", "transformers": "openai/clip-vit-base-patch32"}
DEFAULT_PRETRAINED = "openai"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class ClipModel:
    """A loaded CLIP: preprocessing, normalised image and text features, and its logit scale.

    ``name`` says which model and weights these are; ``weights_id`` identifies the weights for
    caches (a tag, or a path with its size and modification time); ``notes`` are facts about the
    loading the CLI may show (QuickGELU, a derived tokenizer).
    """

    def __init__(
        self,
        *,
        name: str,
        backend: str,
        module: Any,
        preprocess: Callable[[Image.Image], torch.Tensor],
        image_fn: Callable[[torch.Tensor], torch.Tensor],
        text_fn: Callable[[list[str]], torch.Tensor],
        logit_scale: float,
        device: torch.device,
        weights_id: str,
        image_size: int,
        notes: Sequence[str] = (),
        token_ids: Callable[[list[str]], list[list[int]]] | None = None,
        context_length: int | None = None,
        special_tokens: int = 2,
    ) -> None:
        self.name = name
        self.backend = backend
        self.module = module
        self._preprocess = preprocess
        self._image_fn = image_fn
        self._text_fn = text_fn
        self.logit_scale = float(logit_scale)
        self.device = device
        self.weights_id = weights_id
        self.image_size = image_size
        self.notes = list(notes)
        self.autocast_dtype: torch.dtype | None = None
        # how prompts are tokenised: each text's tokens without the start/end ones and untruncated;
        # the model reads the first ``context_length - special_tokens`` of them
        self.token_ids = token_ids
        self.context_length = context_length
        self.special_tokens = special_tokens

    def __repr__(self) -> str:
        return f"ClipModel({self.name!r}, backend={self.backend!r}, device={str(self.device)!r})"

    def set_precision(self, dtype: torch.dtype | None) -> ClipModel:
        """Run the towers under autocast in ``dtype`` on CUDA (fp16/bf16); ``None`` or fp32: full precision.

        On other devices autocast is not used: features stay float32.
        """
        import torch

        self.autocast_dtype = None if dtype in (None, torch.float32) or self.device.type != "cuda" else dtype
        return self

    @property
    def precision(self) -> str:
        return "fp32" if self.autocast_dtype is None else str(self.autocast_dtype).removeprefix("torch.")

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        import torch

        if self.autocast_dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                yield

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image → the ``[3, S, S]`` float tensor the image tower takes (CPU)."""
        return self._preprocess(image)

    def encode_images(self, images: torch.Tensor | Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """Preprocessed ``[B, 3, S, S]`` tensors or PIL images → ``[B, D]`` unit-norm float32 features."""
        import torch

        if not isinstance(images, torch.Tensor):
            images = list(images)
            chunks = [
                self.encode_images(torch.stack([self.preprocess(im) for im in images[i : i + batch_size]]))
                for i in range(0, len(images), batch_size)
            ]
            return torch.cat(chunks) if chunks else torch.empty(0, 0, device=self.device)
        with torch.inference_mode(), self._autocast():
            x = images.to(self.device, non_blocking=True)
            feats = self._image_fn(x).float()
        return torch.nn.functional.normalize(feats, dim=-1)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Strings → ``[N, D]`` unit-norm float32 features (tokenised with the model's own tokenizer)."""
        import torch

        texts = list(texts)
        out = []
        with torch.inference_mode(), self._autocast():
            for i in range(0, len(texts), batch_size):
                out.append(self._text_fn(texts[i : i + batch_size]).float())
        if not out:
            return torch.empty(0, 0, device=self.device)
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)


# --------------------------------------------------------------------------- loading


def load_clip(
    model: str | os.PathLike[str] | None,
    pretrained: str | os.PathLike[str] | None,
    backend: str,
    device: torch.device | str,
    cache_dir: str | os.PathLike[str],
    *,
    offline: bool = False,
    quick_gelu: bool | None = None,
) -> ClipModel:
    """Load CLIP for inference (eval mode, on ``device``).

    ``model`` ``None`` takes the backend's default (ViT-B-32 / openai/clip-vit-base-patch32).
    ``pretrained`` (open_clip only) is a tag or a checkpoint path; ``None`` means ``openai``.
    ``cache_dir`` is the weights cache (``settings.weights_dir``): downloads go to
    ``cache_dir/open_clip`` and ``cache_dir/hub``. ``offline`` never touches the network (and a Hub
    that cannot be reached is treated as offline at once). ``quick_gelu`` forces QuickGELU on or
    off for a checkpoint file.

    Raises :class:`UsageError` for a bad name, path or checkpoint, and :class:`RunError` (one
    sentence saying how to provide the weights) when weights cannot be downloaded.
    """
    import torch

    if backend not in BACKENDS:
        raise UsageError(f"{{opt:backend}} {backend!r} is not known; expected {' or '.join(BACKENDS)}.")
    device = torch.device(device)
    cache = Path(cache_dir)
    name = str(model) if model is not None else DEFAULT_MODEL[backend]
    if backend == "open_clip":
        return _load_open_clip(name, pretrained, device, cache, offline, quick_gelu)
    if pretrained is not None:
        raise UsageError(
            f"the weights {pretrained} apply to the open_clip backend; with transformers give the Hub id or "
            "folder as the model."
        )
    return _load_transformers(name, device, cache, offline)


def file_identity(path: str | os.PathLike[str]) -> str:
    """``path:size:mtime_ns`` of a file, or of every file in a folder: what a cache keys weights by."""
    p = Path(path).resolve()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    parts = [str(p)]
    for f in files:
        st = f.stat()
        parts.append(f"{f.relative_to(p) if p.is_dir() else f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith(CHECKPOINT_SUFFIXES) or Path(value).exists()


def _openai_release_files() -> set[str]:
    import open_clip

    return {
        os.path.basename(open_clip.get_pretrained_url(m, "openai"))
        for m in open_clip.list_pretrained_models_by_tag("openai")
        if open_clip.get_pretrained_url(m, "openai")
    }


def _cached_tag_file(cfg: dict[str, Any], cache: Path) -> str | None:
    """The already-downloaded checkpoint of a pretrained tag, without touching the network."""
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")) and filename != "pytorch_model.bin":
            candidates.insert(0, filename[:-4] + ".safetensors")
        for candidate in candidates:
            found = try_to_load_from_cache(repo, candidate, cache_dir=str(cache))
            if isinstance(found, str):
                return found
    url = cfg.get("url", "")
    if url:
        target = cache / os.path.basename(url)
        if target.is_file():
            return str(target)
    return None


def _how_to(what: str, cache: Path, hint: str, reason: str | None = None) -> str:
    if reason:
        return f"{what} is not in the weights cache and {reason}: {hint}, or run once online; the cache is {cache}."
    return f"could not download {what} (offline?): {hint}, or run once online; the cache is {cache}."


def _load_open_clip(
    name: str,
    pretrained: str | os.PathLike[str] | None,
    device: torch.device,
    cache_root: Path,
    offline: bool,
    quick_gelu: bool | None,
) -> ClipModel:
    import open_clip

    cache = cache_root / "open_clip"
    notes: list[str] = []
    config_extra = ""
    if name.endswith(".json"):
        config = Path(name)
        if not config.is_file():
            raise UsageError(f"{{opt:model}} {name}: no such open_clip model config file.")
        try:
            json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{{opt:model}} {name} is not a readable JSON model config: {exc}.") from exc
        open_clip.add_model_config(config)
        name = config.stem
    if name.startswith(("hf-hub:", "local-dir:")):
        return _load_open_clip_schema(name, device, cache)
    name = name.replace("/", "-")  # OpenAI's spelling ViT-B/32
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        known = ", ".join(m for m in open_clip.list_models() if m.startswith("ViT-B"))
        raise UsageError(
            f"{{opt:model}} {name!r} is not an open_clip model name; expected e.g. {known} "
            "(all: python -c 'import open_clip; print(open_clip.list_models())') or a model-config .json file."
        )
    config_extra = json.dumps(model_cfg, sort_keys=True)

    tag = str(pretrained) if pretrained is not None else DEFAULT_PRETRAINED
    tags = open_clip.list_pretrained_tags_by_model(name)
    preprocess_cfg: dict[str, Any] = {}
    jit = False
    if tag in tags:
        cfg = open_clip.get_pretrained_cfg(name, tag)
        what = f"{name}/{tag}"
        checkpoint = _cached_tag_file(cfg, cache)
        if checkpoint is None and (offline or ensure_offline_if_unreachable(offline)):
            reason = "offline mode is on" if offline else unreachable_hint()
            raise RunError(
                f"the {what} weights are not in the cache and {reason}; pass {{opt:pretrained}} PATH to a local "
                f"checkpoint (.pt, .bin, .safetensors), or run once online; the cache is {cache}."
            )
        if checkpoint is None:
            try:
                checkpoint = open_clip.download_pretrained(cfg, cache_dir=str(cache))
            except Exception as exc:
                raise RunError(_how_to(what, cache, "pass {opt:pretrained} PATH to a local checkpoint")) from exc
            if not checkpoint:
                raise RunError(_how_to(what, cache, "pass {opt:pretrained} PATH to a local checkpoint"))
        use_quick_gelu = bool(cfg.get("quick_gelu", False)) if quick_gelu is None else quick_gelu
        keys = ("mean", "std", "interpolation", "resize_mode")
        preprocess_cfg = {f"image_{key}": cfg[key] for key in keys if key in cfg}
        weights_id = f"tag:{what}"
    else:
        if not _looks_like_path(tag):
            shown = ", ".join(tags[:6]) + (", …" if len(tags) > 6 else "")
            raise UsageError(
                f"{{opt:pretrained}} {tag!r} is neither a pretrained tag of {name} ({shown or 'none'}) "
                "nor a checkpoint file."
            )
        path = Path(tag)
        if not path.is_file():
            raise UsageError(f"{{opt:pretrained}} {path} does not exist; pass a .pt, .bin or .safetensors checkpoint.")
        checkpoint = str(path)
        what = str(path)
        jit = is_torchscript(path)
        looks_openai = jit or "openai" in path.name.lower() or path.name in _openai_release_files()
        use_quick_gelu = looks_openai if quick_gelu is None else quick_gelu
        weights_id = f"file:{file_identity(path)}"
    if use_quick_gelu and not model_cfg.get("quick_gelu", False):
        notes.append("QuickGELU activations (the OpenAI weights were trained with them)")

    try:
        module, _, preprocess = open_clip.create_model_and_transforms(
            name,
            pretrained=None,
            force_quick_gelu=use_quick_gelu,
            pretrained_image=False,
            pretrained_text=False,
            cache_dir=str(cache),
            **preprocess_cfg,
        )
    except Exception as exc:
        raise RunError(f"could not build open_clip model {name}: {type(exc).__name__}: {exc}.") from exc
    _load_open_clip_weights(module, Path(checkpoint), what, name, jit)
    module = module.to(device).eval()
    tokenizer = open_clip.get_tokenizer(name, cache_dir=str(cache))
    return _open_clip_model(
        module,
        preprocess,
        tokenizer,
        name=f"{name} ({tag if tag in tags else Path(tag).name})",
        device=device,
        weights_id=f"open_clip:{name}:{weights_id}:{use_quick_gelu}:{config_extra}",
        notes=notes,
    )


def _load_open_clip_weights(module: Any, checkpoint: Path, what: str, name: str, jit: bool) -> None:
    import open_clip

    try:
        if jit:
            # read without running it (torch.jit.load would compile and run the archive's code); its
            # tensor attributes include more than the weights (OpenAI's input_resolution, context_length,
            # vocab_size, each block's attn_mask), so only the module's own keys are taken, all of them
            state = torchscript_state_dict(checkpoint, "a CLIP checkpoint")
            expected = set(module.state_dict())
            module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
        else:
            with quiet_pickle_protocol():  # a refused file is one sentence, not torch's protocol warning too
                open_clip.load_checkpoint(module, str(checkpoint), strict=True)
    except UsageError:
        raise
    except RuntimeError as exc:
        text = str(exc).strip()
        if "loading state_dict" in text or "size mismatch" in text:
            detail = " ".join(line.strip() for line in text.splitlines()[:2])[:300]
            raise UsageError(f"{{opt:pretrained}} {what} does not fit {name}: {detail}.") from exc
        raise load_error(what, "a CLIP checkpoint", exc) from None
    except Exception as exc:
        raise load_error(what, "a CLIP checkpoint", exc) from None


def _load_open_clip_schema(name: str, device: torch.device, cache: Path) -> ClipModel:
    import open_clip

    if name.startswith("local-dir:"):
        folder = Path(name.split(":", 1)[1])
        if not folder.is_dir():
            raise UsageError(f"{{opt:model}} {name}: {folder} is not a folder holding open_clip_config.json.")
        weights_id = f"file:{file_identity(folder)}"
    else:
        weights_id = name  # offline: HF_HUB_OFFLINE, which settings.offline sets, keeps the Hub away
    try:
        module, _, preprocess = open_clip.create_model_and_transforms(name, cache_dir=str(cache))
        tokenizer = open_clip.get_tokenizer(name, cache_dir=str(cache))
    except Exception as exc:
        raise RunError(_how_to(name, cache, "pass {opt:pretrained} PATH to a local checkpoint")) from exc
    return _open_clip_model(
        module.to(device).eval(),
        preprocess,
        tokenizer,
        name=name,
        device=device,
        weights_id=f"open_clip:{weights_id}",
        notes=[],
    )


def _open_clip_model(
    module: Any,
    preprocess: Any,
    tokenizer: Any,
    *,
    name: str,
    device: torch.device,
    weights_id: str,
    notes: list[str],
) -> ClipModel:
    def text_fn(texts: list[str]) -> torch.Tensor:
        return module.encode_text(tokenizer(texts).to(device))

    hf = getattr(tokenizer, "tokenizer", None)  # open_clip's wrapper of a transformers tokenizer
    if callable(getattr(tokenizer, "encode", None)) and hasattr(tokenizer, "sot_token_id"):  # its CLIP BPE

        def token_ids(texts: list[str]) -> list[list[int]]:
            return [tokenizer.encode(t) for t in texts]

        special = 2
    elif callable(hf):

        def token_ids(texts: list[str]) -> list[list[int]]:
            return list(hf(list(texts), add_special_tokens=False, verbose=False)["input_ids"])

        special = len(hf("")["input_ids"])
    else:
        token_ids, special = None, 2  # type: ignore[assignment]
    size = module.visual.image_size
    return ClipModel(
        name=name,
        backend="open_clip",
        module=module,
        preprocess=preprocess,
        image_fn=module.encode_image,
        text_fn=text_fn,
        logit_scale=float(module.logit_scale.exp().item()),
        device=device,
        weights_id=weights_id,
        image_size=int(size[0] if isinstance(size, (tuple, list)) else size),
        notes=notes,
        token_ids=token_ids,
        context_length=getattr(tokenizer, "context_length", None),
        special_tokens=special,
    )


def _load_transformers(name: str, device: torch.device, cache_root: Path, offline: bool) -> ClipModel:
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    path = Path(name)
    cache = cache_root / "hub"
    notes: list[str] = []
    if path.is_file():
        raise UsageError(
            f"{{opt:model}} {name} is a file; with {{opt:backend}} transformers pass a Hub id or a folder written by "
            "CLIPModel.save_pretrained (a checkpoint file goes with {opt:backend} open_clip {opt:pretrained} PATH)."
        )
    local = path.is_dir()
    if not local and (path.is_absolute() or name.startswith(".") or name.count("/") != 1):
        raise UsageError(
            f"{{opt:model}} {name} is neither a folder nor a Hugging Face id such as {DEFAULT_MODEL['transformers']}."
        )
    if local and not (path / "config.json").is_file():
        raise UsageError(
            f"{{opt:model}} {path} has no config.json; pass a folder written by CLIPModel.save_pretrained."
        )
    source = str(path) if local else name
    hint = "pass {opt:model} FOLDER holding a saved CLIP (CLIPModel.save_pretrained)"
    reason = "offline mode is on" if offline else None
    if not local and not offline and ensure_offline_if_unreachable(offline):
        offline = True  # cached files still load; missing ones fail at once instead of retrying
        reason = unreachable_hint()
    common: dict[str, Any] = (
        {"local_files_only": True} if local else {"cache_dir": str(cache), "local_files_only": offline}
    )
    try:
        module = CLIPModel.from_pretrained(source, **common)
    except Exception as exc:
        if local:
            raise UsageError(f"cannot load a CLIP model from {path}: {type(exc).__name__}: {exc}.") from exc
        raise RunError(_how_to(name, cache, hint, reason)) from exc
    has_tokenizer = not local or (path / "tokenizer.json").is_file() or (path / "vocab.json").is_file()
    try:
        if not has_tokenizer:
            raise FileNotFoundError(path / "vocab.json")
        tokenizer = CLIPTokenizer.from_pretrained(source, **common)
    except (OSError, ValueError, TypeError):
        if not local:
            raise RunError(_how_to(f"the tokenizer of {name}", cache, hint, reason)) from None
        folder = write_clip_tokenizer_files(cache_root / "clip_tokenizer")
        tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
        notes.append("tokenizer derived from open_clip's CLIP BPE (the folder has no tokenizer files)")
    size = int(module.config.vision_config.image_size)
    try:
        if local and not (path / "preprocessor_config.json").is_file():
            raise FileNotFoundError(path / "preprocessor_config.json")
        processor = CLIPImageProcessor.from_pretrained(source, **common)
    except (OSError, ValueError, TypeError):
        if not local:
            raise RunError(_how_to(f"the image processor of {name}", cache, hint, reason)) from None
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        notes.append(f"standard CLIP preprocessing at {size}px (the folder has no preprocessor_config.json)")
    module = module.to(device).eval()
    max_len = int(module.config.text_config.max_position_embeddings)

    def preprocess(image: Image.Image) -> torch.Tensor:
        return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def image_fn(x: torch.Tensor) -> torch.Tensor:
        return _features(module.get_image_features(pixel_values=x))

    def text_fn(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return _features(module.get_text_features(**{k: v.to(device) for k, v in tokens.items()}))

    if local:
        weights_id = f"folder:{file_identity(path)}"
    else:
        weights_id = f"hub:{name}@{getattr(module.config, '_commit_hash', None) or 'unknown'}"
    return ClipModel(
        name=name,
        backend="transformers",
        module=module,
        preprocess=preprocess,
        image_fn=image_fn,
        text_fn=text_fn,
        logit_scale=float(module.logit_scale.exp().item()),
        device=device,
        weights_id=f"transformers:{weights_id}",
        image_size=size,
        notes=notes,
        token_ids=lambda texts: list(tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]),
        context_length=max_len,
        special_tokens=len(tokenizer("")["input_ids"]),
    )


def _features(output: Any) -> torch.Tensor:
    """transformers 4.x returns the projected features; 5.x an output whose ``pooler_output`` holds them."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output
