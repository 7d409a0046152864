"""The one console module: messages, errors, tables, JSON and progress bars.

Results go to stdout; progress, warnings and errors go to stderr, so ``--json`` output stays
parseable in a pipe. Rich is used on a terminal; elsewhere (CI logs, pipes) and with
``--quiet`` the output is plain text. Only the CLI layer calls this module: the core takes a
progress callback and never prints.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from hw2cli import interrupts
from hw2cli.runtime import other_rank

_state: dict = {"quiet": False, "debug": False, "interrupt_hint": None, "command": None}


def configure(*, quiet: bool | None = None, debug: bool | None = None) -> None:
    if quiet is not None:
        _state["quiet"] = quiet
    if debug is not None:
        _state["debug"] = debug


def set_command(args: list[str]) -> None:
    """The command line being run (figures record it)."""
    _state["command"] = list(args)


def command_line() -> str | None:
    """``hw2 ARGS`` as typed (shell-quoted), or ``None`` outside the CLI."""
    import shlex

    return None if _state["command"] is None else shlex.join(["hw2", *_state["command"]])


KEPT = "what was finished is kept: run the same command again to continue"


def on_interrupt(hint: str | None) -> None:
    """What a Ctrl-C now should tell the user besides "interrupted" (a resumable command's advice)."""
    _state["interrupt_hint"] = hint


def interrupted() -> str:
    hint = _state["interrupt_hint"]
    return f"interrupted; {hint}." if hint else "interrupted."


def is_quiet() -> bool:
    return _state["quiet"]


def is_debug() -> bool:
    return _state["debug"]


class _Sink:
    """A standard stream that never fails the command it reports on. A reader that went away
    (``hw2 … 2>&1 | head``, a closed terminal, ``2>&-``) turns the rest of the output into nothing
    instead of killing the run part-way with a BrokenPipeError that cannot even be reported; a
    stream that cannot encode a character (an ASCII or Latin-1 locale) gets an escape for it
    instead of a UnicodeEncodeError after the work is done."""

    def __init__(self, stream: Any, strict: bool = False) -> None:
        self.stream = stream
        self.strict = strict  # stdout: only a reader that went away is silenced
        self.lost = stream is None  # Python sets sys.stderr to None when fd 2 was closed at start

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                self.stream.write(text)
            except UnicodeEncodeError:
                encoding = getattr(self.stream, "encoding", None) or "ascii"
                self._write(text.encode(encoding, "backslashreplace").decode(encoding))
            except OSError as exc:
                if self.strict and exc.errno not in _GONE:  # a result that cannot be written (a full disk)
                    raise
                self.lost = True  # EPIPE, EBADF: nobody reads this any more; progress is best effort
        return len(text)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
        except (OSError, UnicodeError):
            self.lost = True

    def flush(self) -> None:
        if not self.lost:
            try:
                self.stream.flush()
            except OSError as exc:
                if self.strict and exc.errno not in _GONE:
                    raise
                self.lost = True

    def isatty(self) -> bool:
        try:
            return not self.lost and bool(self.stream.isatty())
        except (OSError, ValueError, AttributeError):
            return False

    def fileno(self) -> int:
        return int(self.stream.fileno())

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"


_GONE = (errno.EPIPE, errno.EBADF, errno.ECONNRESET)  # the reader went away, or the stream was closed
_sinks: dict[int, _Sink] = {}


def _sink(stream: Any) -> _Sink:
    """The one :class:`_Sink` of ``stream`` (looked up by identity: tests swap the streams)."""
    sink = _sinks.get(id(stream))
    if sink is None or sink.stream is not stream:
        sink = _sinks[id(stream)] = _Sink(stream, strict=stream is not None and stream is sys.stdout)
    return sink


def stdout_lost() -> bool:
    """Whether a result could not be written because stdout's reader went away."""
    sink = _sinks.get(id(sys.stdout))
    return sink is not None and sink.stream is sys.stdout and sink.lost


def _console(file: Any) -> Console:
    file = _sink(file)
    console = Console(file=file, highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # logs and pipes: rich would assume 80 columns and wrap tables into unreadable cells
        console = Console(file=file, highlight=False, soft_wrap=True, width=160)
    return console


def out() -> Console:
    """Console on the current ``sys.stdout`` (looked up on each call, so tests can capture it)."""
    return _console(sys.stdout)


def err() -> Console:
    return _console(sys.stderr)


def error(message: str, label: str = "Error") -> None:
    rank = other_rank()
    where = f"[rank {rank}] " if rank is not None else ""
    err().print(Text.assemble((f"{where}{label}: ", "bold red"), (message, "red")))


def plural(n: int, word: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def warn(message: str) -> None:
    if other_rank() is None:
        err().print(Text.assemble(("Warning: ", "yellow"), message))


def info(message: str) -> None:
    """A status line on stderr (suppressed by ``--quiet``)."""
    if not _state["quiet"] and other_rank() is None:
        err().print(message, markup=False)


def result(message: str) -> None:
    """A result line on stdout (kept under ``--quiet``: it is what the user asked for)."""
    if other_rank() is None:
        out().print(message, markup=False)


def print_json(obj: Any) -> None:
    if other_rank() is not None:
        return
    sink = _sink(sys.stdout)
    sink.write(json.dumps(obj, indent=2, default=str) + "\n")
    sink.flush()


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    title: str | None = None,
    justify: Sequence[str] | None = None,
) -> None:
    """A rich table on stdout; on a non-terminal rich renders it as plain box-drawing text."""
    table = Table(title=title, header_style="bold", title_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify=(justify[i] if justify else "left"), overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*(escape(_fmt(v)) for v in row))
    if other_rank() is None:
        out().print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("  -- it/s", style="progress.data.speed")
        if speed < 1:
            return Text(f"{1 / speed:5.2f} s/it", style="progress.data.speed")
        return Text(f"{speed:6.1f} it/s", style="progress.data.speed")


class ProgressBar:
    """A progress bar with live metrics: ``bar.update(advance=1, loss=0.12)``.

    Rich (description, bar, done/total, it/s, elapsed • remaining, metrics) on a terminal;
    elsewhere a plain line about every 10 % (at most one a second, and one every 10 s when
    progress is slow) and one at the end; nothing under ``--quiet``.
    """

    def __init__(self, description: str, total: int | None, *, plain_every_s: float = 10.0) -> None:
        self.description = description
        self.total = total
        self.done: float = 0
        self._base: float = 0  # steps done before this run started (a resumed run): not part of its rate
        self.metrics: dict[str, Any] = {}
        quiet = _state["quiet"] or other_rank() is not None
        self._mode = "off" if quiet else ("rich" if err().is_terminal else "plain")
        self._progress: Progress | None = None
        self._task_id: Any = None
        self._start = time.perf_counter()
        self._last_plain = self._start
        self._next_pct = 10
        self._plain_every_s = plain_every_s
        self._said: float | None = None  # the count the last plain line showed

    def __enter__(self) -> ProgressBar:
        self._start = time.perf_counter()
        if self._mode == "rich":
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TimeElapsedColumn(),
                TextColumn("•"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=err(),
                transient=False,
            )
            self._progress.start()
            self._task_id = self._progress.add_task(self.description, total=self.total, metrics="")
        return self

    def reset(self, total: int | None, done: int = 0) -> None:
        """Change the total and the count already done (e.g. a resumed run).

        The steps already done count toward the bar, not toward the rate or the time remaining:
        the clock restarts here.
        """
        self.total, self.done, self._base = total, done, done
        self._start = self._last_plain = time.perf_counter()
        self._next_pct = 10 * (int(100 * done / total) // 10 + 1) if total else 10
        if self._progress is not None:
            # Progress.reset also drops Rich's speed samples, which would otherwise count `done` as one advance.
            self._progress.reset(self._task_id, total=total, completed=done)

    def update(self, advance: float = 1, **metrics: Any) -> None:
        """Count ``advance`` more done (a fraction too: a step of a long item)."""
        interrupts.check()  # a Ctrl-C a library's finaliser swallowed stops the work here
        self.done += advance
        if abs(self.done - round(self.done)) < 1e-6:  # fractions of an item add up to whole items
            self.done = round(self.done)
        if metrics:
            self.metrics.update(metrics)
        if self._mode == "rich" and self._progress is not None:
            self._progress.update(self._task_id, completed=self.done, metrics=self._metric_text())
        elif self._mode == "plain":
            now = time.perf_counter()
            pct = 100 * self.done / self.total if self.total else 0
            milestone = bool(self.total) and pct >= self._next_pct
            while self.total and pct >= self._next_pct:
                self._next_pct += 10
            # a 10 % milestone is worth a line only a second after the last one: a task of a
            # fraction of a second says one line at the end, not ten
            if (milestone and now - self._last_plain >= 1.0) or now - self._last_plain >= self._plain_every_s:
                self._last_plain = now
                self._plain_line()

    def _metric_text(self) -> str:
        return " ".join(f"{k}={_fmt(v)}" for k, v in self.metrics.items())

    def _plain_line(self) -> None:
        elapsed = time.perf_counter() - self._start
        rate = (self.done - self._base) / elapsed if elapsed > 0 else 0.0
        total = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and rate > 0 and self.done < self.total:
            eta = f" eta {(self.total - self.done) / rate:.0f}s"
        done = f"{self.done:.1f}" if isinstance(self.done, float) else str(self.done)
        line = f"{self.description}: {done}{total} {rate:.1f} it/s elapsed {elapsed:.0f}s{eta}"
        if self.metrics:
            line += " " + self._metric_text()
        sink = _sink(sys.stderr)
        sink.write(line + "\n")
        sink.flush()
        self._said = self.done

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
        elif self._mode == "plain" and exc[0] is None and self.done and self.done != self._said:
            self._plain_line()


def progress(description: str, total: int | None) -> ProgressBar:
    return ProgressBar(description, total)


def track(iterable: Iterable[Any], description: str, total: int | None = None) -> Iterator[Any]:
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress(description, total) as bar:
        for item in iterable:
            yield item
            bar.update()
