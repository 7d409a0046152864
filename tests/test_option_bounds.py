"""Every number a user types on the command line is bounded (README, Configuration): walk every
command of every built-in plugin (and the project's own) and check that each integer or float
parameter declares a maximum."""

from __future__ import annotations

import inspect
import typing

import typer
from typer.models import ArgumentInfo, OptionInfo

from hw2cli.registry import discover


def typers():
    from hw2cli import app as root

    yield "", root.app
    for name, record in discover().mounted().items():
        yield name, record.plugin.load_app()


def commands(prefix: str, app: typer.Typer):
    for info in app.registered_commands:
        yield f"{prefix} {info.name or info.callback.__name__.replace('_', '-')}".strip(), info.callback
    for group in app.registered_groups:
        yield from commands(f"{prefix} {group.name}".strip(), group.typer_instance)


def test_every_numeric_option_has_an_upper_bound():
    unbounded, seen = [], 0
    for prefix, app in typers():
        for name, callback in commands(prefix, app):
            hints = typing.get_type_hints(callback)
            for param in inspect.signature(callback).parameters.values():
                info = param.default
                if hints.get(param.name) not in (int, float) or not isinstance(info, (OptionInfo, ArgumentInfo)):
                    continue
                seen += 1
                if info.max is None:
                    unbounded.append(f"hw2 {name} {param.name}")
    assert seen > 50  # the walk reached the commands
    assert not unbounded, unbounded
