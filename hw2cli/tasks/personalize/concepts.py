"""Concepts and their tokens: parsing ``<new1>=folder:dog``, adding the new tokens to the tokenizer
and text encoder (initialised from the word's embedding), and learned embeddings in diffusers'
``learned_embeds.safetensors`` format, saved and loaded (Custom Diffusion's K/V with them)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hw2cli.data import IMAGE_SUFFIXES
from hw2cli.errors import UsageError
from hw2cli.io.atomic import save_safetensors, write_json

TOKEN_RE = re.compile(r"<[^<>\s]+>")
STYLE_WORDS = {"painting", "style", "art", "artwork", "drawing", "illustration", "sketch"}

# Prompt templates in the manner of the textual-inversion paper: a few phrasings per kind.
OBJECT_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a good photo of a {}",
    "a photo of one {}",
    "a photo of the small {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a picture in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "an artwork in the style of {}",
    "a bright painting in the style of {}",
)


@dataclass
class Concept:
    token: str
    folder: Path
    init: str
    kind: str = "object"  # or "style"
    images: list[Path] = field(default_factory=list)


def parse_concept(spec: str) -> Concept:
    """``<new1>=path/to/images:initword[:object|style]`` (kind defaults by the init word)."""
    from hw2cli.data.prompts import check_token_name

    token, sep, rest = spec.partition("=")
    token = token.strip()
    if not sep or not TOKEN_RE.fullmatch(token):
        raise UsageError(
            f"{{opt:concept}} {spec!r} must look like '<new1>=path/to/images:dog' (token in angle brackets)."
        )
    try:
        check_token_name(token)  # the input.json rule: a token becomes a folder name
    except ValueError as exc:
        raise UsageError(f"{{opt:concept}}: {exc}.") from None
    folder_path, init, kind = _split_concept(token, spec, rest)
    images = sorted(p for p in folder_path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise UsageError(f"{{opt:concept}} {token}: {folder_path} holds no images (.png, .jpg, .webp).")
    init = init.strip()
    if not init:
        raise UsageError(f"{{opt:concept}} {token}: the initialiser word is empty.")
    if TOKEN_RE.search(init):  # a new token has no embedding yet: it would start from '<', 'new', '1', '>'
        raise UsageError(
            f"{{opt:concept}} {token}: the initialiser {init!r} holds a <token>; give the word the new token starts "
            "from, like 'dog' or 'painting'."
        )
    kind = kind or ("style" if init.lower() in STYLE_WORDS else "object")
    return Concept(token, folder_path, init, kind, images)


KINDS = ("object", "style")


def _split_concept(token: str, spec: str, rest: str) -> tuple[Path, str, str | None]:
    """``folder:init[:kind]`` as (folder, init, kind). A folder may hold ':' itself, so the split
    that names an existing folder is the one meant; where only a shorter one does, what follows
    the init phrase is an unknown suffix (``:dog:weird``), said as such."""
    pieces = rest.split(":")
    if len(pieces) < 2:
        raise UsageError(f"{{opt:concept}} {spec!r} has no initialiser word; add ':dog' (a word or a short phrase).")
    splits = []  # (folder, init, kind), the reading a folder with ':' in its name would need last
    if len(pieces) >= 3 and pieces[-1] in KINDS:
        splits.append((":".join(pieces[:-2]), pieces[-2], pieces[-1]))
    splits.append((":".join(pieces[:-1]), pieces[-1], None))
    for folder, init, kind in splits:
        if Path(folder).is_dir():
            return Path(folder), init, kind
    cuts = range(len(pieces) - 2, 0, -1)  # shorter folders: after one come the init phrase and more
    shorter = [":".join(pieces[:cut]) for cut in cuts]
    for cut in cuts:
        if Path(":".join(pieces[:cut])).is_dir():
            suffix = ":" + ":".join(pieces[cut + 1 :])
            raise UsageError(
                f"{{opt:concept}} {token}: unknown suffix {suffix!r}; only ':style' (or ':object') may follow the "
                "init phrase."
            )
    for folder in [f for f, _, _ in splits] + shorter:
        if Path(folder).exists():
            raise UsageError(f"{{opt:concept}} {token}: {folder} is a file; give the folder of the concept's images.")
    raise UsageError(f"{{opt:concept}} {token}: the image folder {splits[0][0]} does not exist.")


def check_concept_tokens(tokens: Sequence[str]) -> None:
    """Every concept's token is its own, also to CLIP's tokenizer, which lower-cases text: of
    ``<new1>`` and ``<NEW1>`` one would be trained by both concepts' images and the other saved
    untrained, as if learned."""
    from hw2cli.data.prompts import same_to_clip, same_to_clip_sentence

    twice = sorted({t for t in tokens if list(tokens).count(t) > 1})
    if twice:
        raise UsageError(f"two concepts use the same token {twice[0]}; give each concept its own.")
    clash = same_to_clip(tokens)
    if clash is not None:
        raise UsageError(f"{same_to_clip_sentence(*clash)}.")


def model_identity(model: str | Path, skip_hidden: bool = False) -> str:
    """The model as its size and the hash of its first and last MiB (no mtime: an unzipped copy of
    the same checkpoint is the same model), a folder file by file, a Hub id as itself.
    ``skip_hidden`` leaves out a folder's hidden files (``.cache/`` of ``hf download --local-dir``,
    ``.DS_Store``), which no loader reads."""
    from hw2cli.io.manifest import hash_edges

    path = Path(model)
    if not path.exists():
        return str(model)
    digest = hashlib.sha256()
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    if skip_hidden and path.is_dir():
        files = [f for f in files if not any(part.startswith(".") for part in f.relative_to(path).parts)]
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.relative_to(path) if path.is_dir() else ''}:{size}".encode())
        hash_edges(digest, f, size)
    return digest.hexdigest()


def file_digests(paths: Sequence[Path], what: str = "image") -> list[str]:
    """The SHA-256 of each file's bytes, in order: a set of images by content, wherever it lies."""
    digests = []
    for path in paths:
        try:
            digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
        except OSError as exc:
            raise UsageError(f"cannot read the {what} {path}: {exc.strerror or exc}.") from None
    return digests


def add_tokens(pipe: Any, concepts: Sequence[Concept]) -> list[int]:
    """Add each concept's token, initialised from its word's embedding (the mean of its tokens'
    embeddings when the initialiser is a phrase); return the new ids."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    init_ids = []
    for c in concepts:
        ids = tokenizer.encode(c.init, add_special_tokens=False)
        if not ids:
            raise UsageError(f"{{opt:concept}} {c.token}: the initialiser {c.init!r} holds no word to start from.")
        init_ids.append(ids)
    tokens = [c.token for c in concepts]
    check_concept_tokens(tokens)
    for token in tokens:
        if token in tokenizer.get_vocab():
            raise UsageError(f"token {token} already exists in the tokenizer; choose another name.")
    tokenizer.add_tokens(tokens)
    new_ids = tokenizer.convert_tokens_to_ids(tokens)
    check_tokens_read_as_themselves(tokenizer, tokens, new_ids)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows are set just below
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for new, init in zip(new_ids, init_ids, strict=True):
            weight[new] = weight[init].mean(dim=0)  # a phrase ("David Revoy") starts as its tokens' mean
    return list(new_ids)


def check_tokens_read_as_themselves(tokenizer: Any, tokens: Sequence[str], ids: Sequence[int]) -> None:
    """The tokenizer itself reads each added token as its own id: where it makes two tokens one
    (its normaliser, whatever it does, says more than :func:`~hw2cli.data.prompts.clip_token_key`),
    the first would silently stand for both."""
    from hw2cli.data.prompts import same_to_clip_sentence

    owner = dict(zip(ids, tokens, strict=True))
    for token, own in zip(tokens, ids, strict=True):
        read = tokenizer(token, add_special_tokens=False).input_ids
        other = next((owner[i] for i in read if i in owner and i != own), None)
        if other is not None:
            first, second = sorted((token, other), key=tokens.index)
            raise UsageError(f"{same_to_clip_sentence(first, second)}.")


def kv_parameters(unet: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The cross-attention key/value projections (``attn2.to_k``/``attn2.to_v``) Custom Diffusion trains."""
    return {n: p for n, p in unet.named_parameters() if re.search(r"attn2\.to_(k|v)\.", n)}


def save_embeddings(rows: torch.Tensor, tokens: Sequence[str], out: Path) -> list[Path]:
    """One folder per token holding ``learned_embeds.safetensors`` = ``{token: [dim]}``, the diffusers
    format ``pipeline.load_textual_inversion(folder)`` reads; ``rows`` is ``[len(tokens), dim]``."""
    rows = rows.detach().float().cpu()
    paths = []
    for token, row in zip(tokens, rows, strict=True):
        folder = out / slug(token)
        paths.append(save_safetensors({token: row.clone()}, folder / "learned_embeds.safetensors"))
    write_json(out / "embeddings.json", {"tokens": list(tokens), "folders": [slug(t) for t in tokens]})
    return paths


def slug(token: str) -> str:
    """The folder name of a token's embeddings: ``<new1>`` → ``new1``; a token with other
    characters (``<a.b>``, ``<新>``) gets a hash of itself too, so two tokens never share one."""
    inner = token[1:-1] if token.startswith("<") and token.endswith(">") else token
    plain = re.sub(r"[^A-Za-z0-9_-]+", "", inner)
    if plain and plain == inner:
        return plain
    import hashlib

    return f"{plain or 'token'}-{hashlib.sha256(token.encode()).hexdigest()[:8]}"


def load_embeddings(pipe: Any, sources: Sequence[str | Path]) -> list[str]:
    """Load learned tokens: a run folder (``embeddings.json``), a token folder, or a ``.safetensors``
    file with one or more ``{token: tensor}`` entries. Custom Diffusion runs also restore their K/V."""
    from safetensors.torch import load_file

    from hw2cli.data.prompts import clip_token_key, same_to_clip_sentence

    loaded: dict[str, Path] = {}
    vocab = pipe.tokenizer.get_vocab()
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise UsageError(f"{{opt:embeds}} {path} does not exist.")
        files: list[Path]
        if path.is_dir() and (path / "embeddings.json").exists():
            files = [path / f / "learned_embeds.safetensors" for f in run_listing(path)[1]]
            kv = path / "custom_diffusion.safetensors"
            if kv.exists():
                state = load_file(kv)
                unet_state = {k.removeprefix("unet."): v for k, v in state.items()}
                missing = set(unet_state) - set(kv_parameters(pipe.unet))
                if missing:
                    raise UsageError(f"{kv} does not fit this UNet: key {sorted(missing)[0]!r} is not part of it.")
                pipe.unet.load_state_dict(unet_state, strict=False)
        elif path.is_dir():
            files = [path / "learned_embeds.safetensors"]
        else:
            files = [path]
        for file in files:
            if not file.exists():
                raise UsageError(f"{{opt:embeds}}: {file} does not exist.")
            try:
                state = load_file(file)
            except Exception as exc:
                raise UsageError(f"cannot read {file} as safetensors embeddings: {exc}.") from exc
            for token, emb in state.items():
                dim = pipe.text_encoder.get_input_embeddings().weight.shape[1]
                if emb.reshape(-1).shape[0] != dim:
                    raise UsageError(f"{file}: {token} has {emb.numel()} values but this text encoder needs {dim}.")
                if not emb.is_floating_point() or not torch.isfinite(emb).all():
                    raise UsageError(f"{file}: {token} is not {dim} finite floating-point numbers.")
                if token in loaded:
                    raise UsageError(f"{token} comes twice, from {loaded[token]} and from {file}; give it once.")
                twin = next((t for t in loaded if clip_token_key(t) == clip_token_key(token)), None)
                if twin is not None:  # the one loaded last would stand for both
                    raise UsageError(
                        f"{same_to_clip_sentence(twin, token).removesuffix('; name them differently')}: {twin} comes "
                        f"from {loaded[twin]} and {token} from {file}; give only one of them."
                    )
                if token in vocab:
                    raise UsageError(f"{file}: {token} is already a word of the tokenizer; a learned token is new.")
                pipe.load_textual_inversion({token: emb.reshape(-1).float()}, token=token)
                loaded[token] = file
    return list(loaded)


def run_listing(folder: Path) -> tuple[list[str], list[str]]:
    """A run folder's ``embeddings.json``: its tokens and their folders (lists of strings, one
    folder per token, each inside the run folder), or one sentence saying what is wrong."""
    listing = folder / "embeddings.json"
    try:
        meta = json.loads(listing.read_text())
        tokens, folders = meta["tokens"], meta["folders"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{listing} is not a run's embeddings list ({type(exc).__name__}: {exc}).") from None
    strings = all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in (tokens, folders))
    if not strings or len(tokens) != len(folders):
        raise UsageError(f"{listing} must hold 'tokens' and 'folders', two lists of strings of the same length.")
    for name in folders:
        if not name or Path(name).name != name or name in (".", ".."):
            raise UsageError(f"{listing} names the folder {name!r}, which is not a folder of the run.")
    return tokens, folders


def check_prompt_tokens(pipe: Any, prompts: Sequence[str]) -> None:
    vocab = pipe.tokenizer.get_vocab()
    for prompt in prompts:
        for token in TOKEN_RE.findall(prompt):
            if token not in vocab:
                raise UsageError(
                    f"the prompt {prompt!r} names {token}, which no loaded embedding provides; "
                    "pass {opt:embeds} with its learned_embeds.safetensors."
                )


def prompt_tokens(prompts: Sequence[str]) -> list[str]:
    """The ``<token>`` names the prompts use, in order of first use."""
    return list(dict.fromkeys(t for p in prompts for t in TOKEN_RE.findall(p)))


def default_embeddings() -> Path | None:
    """The project's own learned embeddings (``hw2cli/assets/embeddings``), if this install has them."""
    from importlib import resources

    folder = Path(str(resources.files("hw2cli.assets").joinpath("embeddings")))
    return folder if (folder / "embeddings.json").exists() else None
