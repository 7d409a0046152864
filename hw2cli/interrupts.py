"""Ctrl-C that is never lost.

Python delivers SIGINT by raising KeyboardInterrupt wherever the main thread happens to be. When
that is inside a ``__del__`` finaliser (libraries run them while a model loads, e.g. ``regex``'s
pattern objects), Python prints "Exception ignored in ..." and drops the exception, and the
command ran on to the end, hours of training included. :func:`install` notes every SIGINT before
raising it, and :func:`check` (called by every progress update and before training starts) raises
it again if it was swallowed; the "Exception ignored" report of a swallowed one is not printed.

Python runs a signal handler only between two steps of Python code, so while the main thread is
inside one long computation of a library (a Stable Diffusion step on a CPU: a minute or more) no
Ctrl-C reaches hw2 at all, and kill -9 was the only way out. :func:`install` therefore also has
the C-level handler report each signal on a pipe (``signal.set_wakeup_fd``) that a thread reads at
once: a SIGINT after an earlier SIGINT or SIGTERM of the same command that the command has not
answered within :data:`GRACE_S` seconds stops the process there, with exit 130. Writes are atomic,
so nothing half-written is left under a real name; what was finished or saved before is kept.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

_state: dict[str, Any] = {"pending": False, "installed": False}
GRACE_S = 2.0  # how long a second Ctrl-C waits for Python code to answer it before the process stops
_watch: dict[str, Any] = {"started": False, "armed": False, "stops": 0, "command": 0}
STOPPED_AT_ONCE = (
    "\nStopped at once: a second Ctrl-C, while a computation that does not return to Python in time was "
    "running; nothing more was saved (what was finished or saved before is kept: run the command again, "
    "with --resume for a training run).\n"
)


def install() -> None:
    """The SIGINT (and SIGTERM) handler of a command run (main thread only; a fresh start for
    each run): the work stops as after a Ctrl-C, temporaries are removed and finished outputs kept."""
    _state["pending"] = False
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)  # a scheduler's stop ends a run as a Ctrl-C does (exit 130)
    _watch.update(armed=_watch_signals(), stops=0, command=_watch["command"] + 1)
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


def disarm() -> None:
    """The command has answered: a later second Ctrl-C is the caller's (a test, a notebook) again."""
    _watch["armed"] = False


def _watch_signals() -> bool:
    """Start, once per process, the thread that reads the signals off the wakeup pipe; False where
    that cannot be (not POSIX, or another part of the program uses the wakeup fd already)."""
    if _watch["started"]:
        return True
    if os.name != "posix":
        return False
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    except (ValueError, OSError):
        previous = None
    if previous != -1:  # not ours to take (an event loop's), or not settable: leave it as it was
        if previous is not None:
            signal.set_wakeup_fd(previous)
        os.close(read)
        os.close(write)
        return False
    os.register_at_fork(after_in_child=_not_in_a_child)
    threading.Thread(target=_watch_loop, args=(read,), name="hw2-second-ctrl-c", daemon=True).start()
    _watch["started"] = True
    return True


def _not_in_a_child() -> None:
    _watch["armed"] = False  # a forked child has no reading thread; its signals are its own
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass


def _watch_loop(read: int) -> None:
    while True:
        try:
            received = os.read(read, 64)
        except OSError:
            return
        for signum in received:
            if not _watch["armed"] or signum not in (signal.SIGINT, signal.SIGTERM):
                continue
            _watch["stops"] += 1
            if signum == signal.SIGINT and _watch["stops"] > 1:
                command = _watch["command"]
                time.sleep(GRACE_S)  # Python code answers it itself (the normal stop) well within this
                if _watch["armed"] and _watch["command"] == command:
                    _stop_now()


def _stop_now() -> None:
    try:
        os.write(2, STOPPED_AT_ONCE.encode())
    except OSError:
        pass
    os._exit(130)
