"""The two kinds of failure a user can see. Everything else is a bug and shows as one.

The core speaks of its parameters, not of command-line options: a message may name a parameter
as ``{opt:name}``, which the CLI shows as the option that sets it (``--name``, underscores as
dashes) and everyone else as the parameter's name (:meth:`HW2Error.render`). So the same error
reads right at the command line and through the Python API, and no core module spells a flag.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_OPTION = re.compile(r"\{opt:([A-Za-z_][A-Za-z0-9_]*)\}")


def as_parameter(name: str) -> str:
    return f"`{name}`"


def as_option(name: str) -> str:
    return "--" + name.replace("_", "-")


class HW2Error(Exception):
    """A failure with a one-sentence message meant for the user."""

    exit_code = 1
    label = "Error"  # what the message is printed after

    def render(self, option: Callable[[str], str] = as_parameter) -> str:
        text = str(self.args[0]) if self.args else ""
        return _OPTION.sub(lambda m: option(m.group(1)), text)

    def __str__(self) -> str:
        return self.render()


class UsageError(HW2Error):
    """The user asked for something invalid (bad value, missing file): exit code 2."""

    exit_code = 2


class RunError(HW2Error):
    """A valid request failed while running (no weights offline, out of memory): exit code 1."""

    exit_code = 1
