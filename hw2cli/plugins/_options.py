"""Option building blocks the plugins share: Typer's own bounds plus what Typer cannot check.

Typer (through pydantic) enforces ``min``/``max`` and ``Literal`` choices, but lets ``nan`` and
``inf`` through a bound on one side only, and knows nothing of comma-separated lists: those two
checks live here, at the plugin boundary, so the core only ever sees finite, bounded values.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import typer

MAX_SEED = 2**32 - 1  # numpy's and accelerate's set_seed take no more; derived seeds stay in int64


def finite(value: Any) -> Any:
    """A Typer callback: refuse ``nan`` and ``inf`` (for a float, a list of floats, or ``None``)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise typer.BadParameter(f"{v} is not a finite number")
    return value


def rich_safe(text: str) -> str:
    """Escape the brackets of ``[default: …]`` or ``ᾱ[t−1]`` that Rich would read as markup and drop."""
    return re.sub(r"(?<!\\)\[(?!/?(bold|dim|italic)?\])", r"\\[", text)


def number(default: Any, *decls: str, min: float | None = None, max: float | None = None, help: str = "") -> Any:
    """A float option: finite, and within ``[min, max]`` where given."""
    return typer.Option(default, *decls, min=min, max=max, callback=finite, help=rich_safe(help))


def seed(default: int | None = 0, help: str = "Random seed.") -> Any:
    return typer.Option(default, "--seed", min=0, max=MAX_SEED, help=rich_safe(help))


SETTING = " [default: the seed setting, hw2 --seed / HW2_SEED, 0]"


def resolve_seed(value: int | None) -> int:
    """``--seed`` where given, else the seed setting (``hw2 --seed``, ``HW2_SEED``, a config file)."""
    from hw2cli import settings

    return settings.get().seed if value is None else value


def float_list(
    text: str, option: str, *, low: float | None = None, high: float | None = None, most: int = 1000
) -> list[float]:
    """``"0,0.25,1"`` → floats, each finite and within bounds; at most ``most`` of them."""
    from hw2cli.errors import UsageError

    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise UsageError(f"{option} {text!r} must be comma-separated numbers, e.g. 0,0.5,1.")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"{option} {text!r} must be comma-separated numbers, e.g. 0,0.5,1.") from None
    for raw, v in zip(parts, values, strict=True):
        if not math.isfinite(v):
            raise UsageError(f"{option} holds {raw!r}, which is not a finite number.")
        if (low is not None and v < low) or (high is not None and v > high):
            bounds = f"{low} to {high}" if high is not None else f"at least {low}"
            raise UsageError(f"{option} holds {raw}; each value must be {bounds}.")
    if len(values) > most:
        raise UsageError(f"{option} lists {len(values)} values; at most {most} are allowed.")
    repeated(values, parts, option)
    return values


def repeated(values: list[Any], parts: list[str], option: str) -> None:
    """Refuse a value listed twice: each is a row or column of a figure, and a repeat is a typo
    that costs a whole row of sampling (minutes a face on a CPU)."""
    from hw2cli.errors import UsageError

    seen: dict[Any, str] = {}
    for raw, v in zip(parts, values, strict=True):
        if v in seen:
            raise UsageError(f"{option} lists {seen[v]} and {raw}, the same value twice; give each once.")
        seen[v] = raw


def keep_finished() -> Any:
    """``--resume/--no-resume`` of the generating commands: keep what an interrupted run finished."""
    return typer.Option(
        True,
        "--resume/--no-resume",
        help="Keep the images a previous run with the same settings finished (an interrupted run continues).",
    )


def under_output_root(path: Path | None, *parts: str) -> Path:
    """``path``, or where it goes by default: ``OUTPUT_ROOT/parts`` (the ``output_root`` setting)."""
    if path is not None:
        return path
    from hw2cli import settings

    return settings.get().output_root.joinpath(*parts)


def unused(ctx: typer.Context, names: list[str], why: str) -> None:
    """Warn about options the user gave (on the command line or in the environment) that this
    run does not use, in one line: ``why`` says what they are for."""
    from typer._click.core import ParameterSource

    from hw2cli import ui

    given = [
        p.opts[0]
        for p in ctx.command.params
        if p.name in names and p.opts
        and ctx.get_parameter_source(p.name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    ]  # fmt: skip
    if given:
        ui.warn(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} {why}, so not used here.")


def nothing_to_train(out: Path | str, step: int, steps: int, planned: int | None = None) -> str:
    """What a ``--resume`` that trains no step says: the run is at ``step``, not below ``steps``;
    a run stopped before the ``planned`` steps it began with is not called finished."""
    if planned is not None and planned > step:
        where = f"{out} was stopped at step {step} of its planned {planned}, and --steps {steps} asks for no more"
    elif steps < step:
        where = f"{out} is already at step {step}, past --steps {steps}"
    else:
        where = f"{out} had already finished at step {step}"
    return f"{where}; nothing to train (give --resume a --steps above {step} to continue it)"
