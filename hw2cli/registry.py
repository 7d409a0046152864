"""Plugin discovery through the ``hw2.plugins`` entry-point group.

Built-in tasks are declared in our own ``pyproject.toml`` exactly like a third party's. An entry
point names a small :class:`Plugin` object: its name, one line of help, the help panel it is
listed under, and its ``typer.Typer`` app, or the ``"module:attribute"`` of that app so the
module with the commands (and torch, which it imports inside its commands) is imported only
when one of its commands runs. Discovery happens once per process (:func:`discover`).

``HW2_PLUGINS=ddpm,clip`` limits which plugins are mounted; two plugins claiming one name are
both refused; a plugin that fails to load is skipped with a one-line warning.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

ENTRY_POINT_GROUP = "hw2.plugins"
ALLOW_LIST_VARIABLE = "HW2_PLUGINS"
RESERVED_NAMES = frozenset({"plugins", "config", "env", "help"})
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass(frozen=True)
class Plugin:
    """What a plugin's entry point names.

    ``app`` is a ``typer.Typer`` or the import path ``"package.module:app"`` of one; the string
    form keeps the commands' module unimported until they run.
    """

    name: str
    help: str
    app: typer.Typer | str
    panel: str = "Plugins"

    def load_app(self) -> typer.Typer:
        if not isinstance(self.app, str):
            return self.app
        module_name, _, attr = self.app.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr or "app")


@dataclass
class PluginRecord:
    """One discovered entry point and what became of it."""

    name: str
    value: str
    distribution: str
    version: str
    plugin: Plugin | None = None
    status: str = "ok"  # ok | disabled | refused | failed
    reason: str = ""
    _command: Any = field(default=None, repr=False)

    @property
    def help(self) -> str:
        return self.plugin.help if self.plugin else ""

    @property
    def mounted(self) -> bool:
        return self.status == "ok"


@dataclass
class Discovery:
    records: list[PluginRecord]
    warnings: list[str]

    def mounted(self) -> dict[str, PluginRecord]:
        return {r.name: r for r in self.records if r.mounted}


def _allow_list() -> set[str] | None:
    raw = os.environ.get(ALLOW_LIST_VARIABLE, "").strip()
    if not raw:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


@functools.cache
def discover() -> Discovery:
    """Read the entry points once, load each allowed plugin's (small) spec object."""
    eps = _entry_points()
    allow = _allow_list()
    warnings: list[str] = []
    records: list[PluginRecord] = []
    seen: dict[str, list[PluginRecord]] = {}
    for ep in eps:
        dist = getattr(ep, "dist", None)
        record = PluginRecord(
            name=ep.name,
            value=ep.value,
            distribution=dist.metadata["Name"] if dist is not None else "?",
            version=dist.version if dist is not None else "?",
        )
        # The same distribution can be visible twice on sys.path (e.g. an editable install plus
        # a source tree): that is one plugin, not a conflict.
        duplicates = seen.setdefault(ep.name, [])
        if any(r.value == record.value and r.distribution == record.distribution for r in duplicates):
            continue
        duplicates.append(record)
        records.append(record)

    for name, claimants in seen.items():
        if len(claimants) > 1:
            owners = " and ".join(f"{r.distribution} ({r.value})" for r in claimants)
            for r in claimants:
                r.status, r.reason = "refused", f"the name is claimed by {owners}"
            warnings.append(f"plugin name '{name}' is claimed by {owners}; neither is mounted. Uninstall one of them.")

    for record in records:
        if record.status != "ok":
            continue
        if not _NAME_RE.match(record.name) or record.name in RESERVED_NAMES:
            record.status = "refused"
            record.reason = "invalid or reserved name"
            warnings.append(
                f"plugin '{record.name}' from {record.distribution} has an invalid or reserved name; skipped."
            )
            continue
        if allow is not None and record.name not in allow:
            record.status, record.reason = "disabled", f"not in {ALLOW_LIST_VARIABLE}"
            continue
        try:
            obj = _load_entry_point(record)
        except Exception as exc:  # a broken plugin must not break the CLI
            record.status, record.reason = "failed", f"{type(exc).__name__}: {exc}"
            warnings.append(
                f"plugin '{record.name}' from {record.distribution} failed to load ({record.reason}); skipped."
            )
            continue
        record.plugin = obj

    if allow is not None:
        unknown = sorted(allow - {r.name for r in records})
        if unknown:
            warnings.append(f"{ALLOW_LIST_VARIABLE} names {', '.join(unknown)}, which no installed plugin provides.")
    return Discovery(records=records, warnings=warnings)


def _load_entry_point(record: PluginRecord) -> Plugin:
    module_name, _, attr = record.value.partition(":")
    obj: Any = importlib.import_module(module_name.strip())
    for part in attr.strip().split(".") if attr else []:
        obj = getattr(obj, part)
    if not isinstance(obj, Plugin):
        raise TypeError(f"{record.value} is a {type(obj).__name__}, not an hw2cli.registry.Plugin")
    if obj.name != record.name:
        raise ValueError(f"entry point '{record.name}' names a plugin called '{obj.name}'")
    return obj


def load_command(record: PluginRecord) -> Any:
    """The Click group of a plugin's Typer app (imports the plugin's command module)."""
    if record._command is None:
        import typer.main

        assert record.plugin is not None
        group = typer.main.get_group(record.plugin.load_app())
        group.name = record.name
        if not group.help:
            group.help = record.plugin.help
        _reflow_help(group)
        record._command = group
    return record._command


def reflow(text: str | None) -> str | None:
    """Join the wrapped lines of each prose paragraph of a docstring: Typer's rich help keeps every
    line break after the first paragraph, so source-wrapped prose printed as ragged half-lines.
    A paragraph with an indented line (an ``Examples:`` block) or a leading ``\\b`` stays as written."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        p if p.startswith("\b") or any(line.startswith(" ") for line in p.splitlines()) else " ".join(p.split("\n"))
        for p in paragraphs
    )


def _reflow_help(command: Any) -> None:
    command.help = reflow(command.help)
    for sub in getattr(command, "commands", {}).values():
        _reflow_help(sub)


def reset() -> None:
    """Forget what was discovered (tests; a changed ``HW2_PLUGINS``)."""
    discover.cache_clear()
