"""The homework's ``input.json`` for P3, validated once by a pydantic model.

It maps a concept key to ``{"src_image", "token_name", "prompt": [...], "prompt_4_clip_eval":
[...], "baseline": [[image, text], ...]}``. A key becomes a folder name under the output folder,
so it must be a name; a token name must look like ``<new1>``; the lists hold one entry per
prompt. Anything else is one sentence naming the key and the field.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator, model_validator

from hw2cli.errors import UsageError

KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_PROMPTS = 1000  # per concept: 25,000 images already; the homework has two
MAX_CONCEPTS = 1000
SAFE_TOKEN_RE = re.compile(r"^<[^<>\s/\\\x00=]+>$")


def check_token_name(token: str, where: str = "token") -> str:
    """A learned token is a name like ``<new1>``: angle brackets, no spaces, no path characters."""
    if not SAFE_TOKEN_RE.fullmatch(token) or ".." in token:
        raise ValueError(
            f"the {where} {token!r} is not a token name like <new1> (angle brackets, no spaces, '/', '\\', '=' or '..')"
        )
    return token


def clip_token_key(token: str) -> str:
    """What CLIP's tokenizer reads ``token`` as: its normaliser is NFC and then lower case, letter
    by letter (the tokenizer's own ``normalizer``: ``NFC(), Replace(\\s+, ' '), Lowercase()``; an
    added token is matched after it), so ``<NEW1>`` in a prompt is the token ``<new1>``. Letter by
    letter: ``str.lower`` would make a final 'Σ' 'ς', the tokenizer makes it 'σ'."""
    return "".join(ch.lower() for ch in unicodedata.normalize("NFC", token))


def same_to_clip(tokens: Iterable[str]) -> tuple[str, str] | None:
    """The first two different tokens of ``tokens`` that CLIP's tokenizer reads as one, if any."""
    seen: dict[str, str] = {}
    for token in tokens:
        first = seen.setdefault(clip_token_key(token), token)
        if first != token:
            return first, token
    return None


def same_to_clip_sentence(first: str, second: str) -> str:
    return (
        f"the tokens {first} and {second} are the same to CLIP's tokenizer (it lower-cases text); name them differently"
    )


class PromptEntry(BaseModel):
    """One concept of the homework's input.json."""

    model_config = ConfigDict(extra="allow", strict=True)

    src_image: str | None = None
    token_name: str
    prompt: list[str] = Field(min_length=1, max_length=MAX_PROMPTS)
    prompt_4_clip_eval: list[str] | None = None
    baseline: list[tuple[float, float]] | None = None

    @field_validator("token_name")
    @classmethod
    def _token(cls, value: str) -> str:
        return check_token_name(value, "token_name")

    @field_validator("baseline", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:  # JSON integers are baselines too; strict mode wants floats
        if isinstance(value, list):
            return [
                tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in pair)
                if isinstance(pair, list)
                else pair
                for pair in value
            ]
        return value

    @model_validator(mode="after")
    def _lengths(self) -> PromptEntry:
        n = len(self.prompt)
        for name in ("prompt_4_clip_eval", "baseline"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries but prompt has {n}; one per prompt")
        if self.baseline is not None and not all(math.isfinite(v) for pair in self.baseline for v in pair):
            raise ValueError("baseline holds a value that is not a finite number")
        return self


class InputFile(RootModel[dict[str, PromptEntry]]):
    @field_validator("root")
    @classmethod
    def _keys(cls, value: dict[str, PromptEntry]) -> dict[str, PromptEntry]:
        if not value:
            raise ValueError("it maps no concept keys")
        if len(value) > MAX_CONCEPTS:
            raise ValueError(f"it maps {len(value):,} concept keys; at most {MAX_CONCEPTS:,} are read")
        for key in value:
            if not KEY_RE.fullmatch(key):
                raise ValueError(
                    f"the concept key {key!r} is not a name (letters, digits, '_' and '-' only): keys become folder "
                    "names under the output folder"
                )
        owner = {entry.token_name: key for key, entry in reversed(value.items())}  # the first concept of each
        clash = same_to_clip(entry.token_name for entry in value.values())
        if clash is not None:  # one token would never be trained or drawn as itself
            first, second = clash
            raise ValueError(
                f"concept {owner[first]!r} has the token_name {first} and concept {owner[second]!r} {second}, but "
                f"{same_to_clip_sentence(first, second).removeprefix('the tokens ')}"
            )
        return value


def _validation_sentence(path: Path, exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"] if p != "root"]
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "list_type":
        message = f"expected a list of strings, got {type(first['input']).__name__} {first['input']!r}"
    elif first["type"] == "string_type":
        message = f"expected a string, got {first['input']!r}"
    elif first["type"] == "missing" and len(loc) >= 2:
        return f"{path}: concept {loc[0]!r} has no {'.'.join(loc[1:])!r}."
    if len(loc) >= 2:
        return f"{path}: concept {loc[0]!r}, field {'.'.join(loc[1:])!r}: {message}."
    if len(loc) == 1:
        return f"{path}: concept {loc[0]!r}: {message}."
    return f"{path}: {message}."


class _DuplicateKey(Exception):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _DuplicateKey(key)
    return dict(pairs)


def _warn_of_oddities(path: Path, entries: dict[str, PromptEntry]) -> None:
    """Say what the file holds that no command reads (a misspelt ``basline`` would otherwise be
    ignored in silence, and grading would then say the concept has no baseline) and a prompt that
    does not name its concept's token (its 25 images could not show the concept)."""
    import difflib
    import warnings

    fields = list(PromptEntry.model_fields)
    for key, entry in entries.items():
        for name in entry.model_extra or {}:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            warnings.warn(
                f"{path}: concept {key!r} has the field {name!r}, which hw2 does not read{hint}.", stacklevel=3
            )
        own = clip_token_key(entry.token_name)
        for idx, text in enumerate(entry.prompt):
            if own not in clip_token_key(text):
                warnings.warn(
                    f"{path}: concept {key!r}, prompt {idx} ({text!r}) does not name its token {entry.token_name}, so "
                    "its images cannot show the concept.",
                    stacklevel=3,
                )


def read_input_json(path: str | Path, *, need_eval: bool = False) -> dict[str, dict[str, Any]]:
    """The homework's input.json, validated once: concept keys are names, token names are tokens,
    ``prompt`` (and ``prompt_4_clip_eval`` / ``baseline``) are lists of one entry per prompt."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(
            f"{path} is a folder; pass the homework's input.json file (hw2_data/textual_inversion/input.json)."
        )
    if not path.is_file():
        raise UsageError(f"{path} does not exist; pass the homework's input.json.")
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors)
    try:
        json.loads(raw, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as exc:
        raise UsageError(
            f"{path} names {exc.args[0]!r} twice in one object; JSON keeps only the last, so say it once."
        ) from None
    except ValueError:
        pass  # not JSON: said below, in pydantic's words
    try:
        data = InputFile.model_validate_json(raw)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise UsageError(f"{path} is not valid JSON: {exc.errors()[0]['ctx'].get('error', '')}.") from None
        raise UsageError(_validation_sentence(path, exc)) from None
    _warn_of_oddities(path, data.root)
    entries = {key: entry.model_dump() for key, entry in data.root.items()}
    if need_eval:
        for key, entry in entries.items():
            for name in ("prompt_4_clip_eval", "baseline"):
                if entry[name] is None:
                    raise UsageError(f"{path}: concept {key!r} has no {name!r}, which grading needs.")
    return entries
