"""Ctrl-C that is never lost.

Python delivers SIGINT by raising KeyboardInterrupt wherever the main thread happens to be. When
that is inside a ``__del__`` finaliser (libraries run them while a model loads, e.g. ``regex``'s
pattern objects), Python prints "Exception ignored in ..." and drops the exception, and the
command ran on to the end, hours of training included. :func:`install` notes every SIGINT before
raising it, and :func:`check` (called by every progress update and before training starts) raises
it again if it was swallowed; the "Exception ignored" report of a swallowed one is not printed.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

_state: dict[str, Any] = {"pending": False, "installed": False}


def install() -> None:
    """The SIGINT (and SIGTERM) handler of a command run (main thread only; a fresh start for
    each run): the work stops as after a Ctrl-C, temporaries are removed and finished outputs kept."""
    _state["pending"] = False
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)  # a scheduler's stop ends a run as a Ctrl-C does (exit 130)
    if not _state["installed"]:
        _state["installed"] = True
        previous = sys.unraisablehook

        def unraisable(info: Any) -> None:
            if isinstance(info.exc_value, KeyboardInterrupt) or info.exc_type is KeyboardInterrupt:
                _state["pending"] = True  # raised again at the next check
                return
            previous(info)

        sys.unraisablehook = unraisable


def _handler(signum: int, frame: Any) -> None:
    _state["pending"] = True
    raise KeyboardInterrupt


def pending() -> bool:
    """A Ctrl-C arrived and has not been handled yet."""
    return bool(_state["pending"])


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C arrived and was swallowed on its way."""
    if _state["pending"]:
        _state["pending"] = False
        raise KeyboardInterrupt
