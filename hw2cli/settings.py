"""One ``Settings`` class and where each value comes from.

Sources, highest priority first:

1. command-line options (``hw2 --device cpu ...``)
2. ``HW2_*`` environment variables
3. a ``.env`` file in the working directory
4. ``--config FILE``, or ``hw2.toml`` in the working directory
5. ``[tool.hw2]`` in ``pyproject.toml`` in the working directory
6. the defaults below

``hw2 config show`` prints every value with its source (:func:`load`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    PyprojectTomlConfigSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from hw2cli.errors import UsageError

ENV_PREFIX = "HW2_"
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

# What a user should write instead, per field, for the one-sentence error.
ALLOWED = {
    "device": "auto, cpu, cuda, cuda:N (N a GPU index) or mps",
    "dtype": "fp32, bf16 or fp16",
    "seed": "a whole number from 0 to 4294967295",
    "kernels": "auto, triton or torch",
    "offline": "true or false",
    "data_root": "a folder path (not empty)",
    "output_root": "a folder path (not empty)",
    "weights_dir": "a folder path (not empty)",
}


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hw2"


class Settings(BaseModel):
    """Every setting ``hw2`` reads. Commands may override some per call (e.g. ``--seed``).

    A plain model: :func:`load` reads each source once (through pydantic-settings' own sources)
    and validates the merged values here, once."""

    model_config = ConfigDict(extra="ignore", validate_default=True)

    device: str = "auto"
    """Where models run: ``auto`` picks CUDA when present, else CPU."""
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Compute precision for sampling (autocast on GPU); training uses bf16 autocast on GPU."""
    seed: int = 0
    data_root: Path = Path("hw2_data")
    output_root: Path = Path("outputs")
    weights_dir: Path = Field(default_factory=_default_cache)
    """Downloaded weights and caches (e.g. CLIP text features)."""
    kernels: Literal["auto", "triton", "torch"] = "auto"
    """``auto``: fused Triton kernels on CUDA when they compile, else the PyTorch reference."""
    offline: bool = False
    """Never try to download weights (also sets ``HF_HUB_OFFLINE``)."""

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE_RE.match(value):
            raise ValueError("not a device")
        return value

    @field_validator("data_root", "output_root", "weights_dir", mode="before")
    @classmethod
    def _check_path(cls, value: Any) -> Any:
        """No shell reads hw2.toml or .env: ``~`` is expanded here (it made a folder named ``~``),
        and an empty value (an unset variable in ``HW2_X=$Y``) is refused, not the working folder."""
        if isinstance(value, (str, os.PathLike)):
            text = os.fspath(value)
            if not text.strip():
                raise ValueError("empty path")
            return Path(os.path.expanduser(text))
        return value

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_is_a_number(cls, value: Any) -> Any:
        if isinstance(value, bool):  # TOML's true is not the seed 1
            raise ValueError("a boolean is not a seed")
        return value

    @field_validator("seed")
    @classmethod
    def _check_seed(cls, value: int) -> int:
        if not 0 <= value < 2**32:
            raise ValueError("seed out of range")
        return value


# pydantic-settings' sources read from a BaseSettings class: one with Settings' field names, every
# value taken raw (``Any``), so the sources only find values and Settings alone validates them.
_SourceFields = create_model(
    "_SourceFields",
    __base__=BaseSettings,
    __config__=None,
    **{name: (Any, None) for name in Settings.model_fields},
)
_SourceFields.model_config = SettingsConfigDict(
    env_prefix=ENV_PREFIX, extra="ignore", pyproject_toml_table_header=("tool", "hw2")
)


def _sources(
    settings_cls: type[BaseSettings], init: PydanticBaseSettingsSource, config_file: Path | None
) -> list[tuple[str, Callable[[], PydanticBaseSettingsSource]]]:
    """The sources in priority order, each with the label ``config show`` prints.

    Sources are built lazily: the file-based ones read their file when built.
    """
    cwd = Path.cwd()
    toml_path = config_file if config_file is not None else cwd / "hw2.toml"
    return [
        ("option", lambda: init),
        ("env", lambda: EnvSettingsSource(settings_cls)),
        (".env", lambda: DotEnvSettingsSource(settings_cls, env_file=cwd / ".env")),
        (
            str(toml_path.name if config_file is None else toml_path),
            lambda: TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        ),
        (
            "pyproject.toml",
            lambda: PyprojectTomlConfigSettingsSource(settings_cls, toml_file=cwd / "pyproject.toml"),
        ),
    ]


def _describe(field: str, source: str) -> str:
    """How the user spelled a setting in a given source, for error messages."""
    env_name = f"{ENV_PREFIX}{field.upper()}"
    if source == "option":
        return f"--{field.replace('_', '-')}"
    if source == "env":
        return env_name
    if source == ".env":
        return f"{env_name} in .env"
    if source == "pyproject.toml":
        return f"{field} in [tool.hw2] of pyproject.toml"
    return f"{field} in {source}"


def load(
    cli: Mapping[str, Any] | None = None, config_file: str | os.PathLike[str] | None = None
) -> tuple[Settings, dict[str, str]]:
    """Build the settings and, for each field, the label of the source that set it.

    Raises :class:`UsageError` naming the variable (or option, or file key) of an invalid value.
    """
    cfg = Path(config_file) if config_file is not None else None
    if cfg is not None and not cfg.is_file():
        state = "is a folder" if cfg.is_dir() else "no such file"
        raise UsageError(f"--config {cfg}: {state}; pass a TOML file such as hw2.toml.")
    fields = set(Settings.model_fields)
    init = InitSettingsSource(_SourceFields, init_kwargs={k: v for k, v in (cli or {}).items() if v is not None})
    merged: dict[str, Any] = {}
    origin = dict.fromkeys(fields, "default")
    for label, make_source in reversed(_sources(_SourceFields, init, cfg)):
        try:
            data = make_source()()
        except Exception as exc:  # a malformed TOML file
            raise UsageError(f"cannot read settings from {label}: {exc}.") from exc
        if label not in ("env", ".env", "option"):
            unknown = sorted(set(data) - fields)
            if unknown:
                raise UsageError(
                    f"unknown setting {unknown[0]!r} in {label}; known settings: {', '.join(sorted(fields))}."
                )
        for key, value in data.items():
            if key in fields and value is not None:
                merged[key] = value
                origin[key] = label
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        where = _describe(field, origin.get(field, "default"))
        value = merged.get(field)
        raise UsageError(
            f"{where} is {value!r}, which is not a valid {field}: expected {ALLOWED.get(field, 'a valid value')}."
        ) from exc
    return settings, origin


# The settings of this process and their sources, set by the CLI's root callback.
_current: Settings | None = None
_origin: dict[str, str] = {}


def set_current(settings: Settings, origin: Mapping[str, str] | None = None) -> None:
    global _current, _origin
    _current = settings
    _origin = dict(origin or {})
    if settings.offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def get() -> Settings:
    """The settings of this process (built from the environment if the CLI did not set them)."""
    if _current is None:
        set_current(*load())
    assert _current is not None
    return _current


def origin() -> dict[str, str]:
    """Which source set each field of :func:`get`'s settings."""
    get()
    return dict(_origin)
