"""What every training loop of ``hw2`` shares: stopping cleanly, and resume state that is safe to read.

* :func:`deferred_interrupts` turns Ctrl-C and SIGTERM (cluster pre-emption, ``kill``) into a
  request that the loop honours between two steps: the step that was running finishes, the
  state as of its end is saved, and :class:`TrainingInterrupted` (exit code 130) is raised. The
  saved state is therefore exactly the state an uninterrupted run has after that step, and
  ``--resume`` continues bit for bit. A second Ctrl-C stops at once without saving (the last
  periodic checkpoint stays).
* Resume state holds only tensors, numbers, strings and containers of them (random-number
  states included, as tensors), so :func:`load_state` reads it with ``torch.load(weights_only=True)``:
  a crafted file cannot run code, and is refused with a sentence instead of PyTorch's advice to
  turn the protection off.
* :func:`truncate_log` drops log lines of steps a resumed run will redo.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hw2cli.errors import HW2Error, UsageError
from hw2cli.io.atomic import write_text


class TrainingInterrupted(HW2Error):
    """Ctrl-C or SIGTERM during training: the state was saved; exit code 130."""

    exit_code = 130


class StopRequest:
    """Set by a signal handler; read by the training loop between steps."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[StopRequest]:
    """While active, SIGINT and SIGTERM only set the yielded request (a second SIGINT interrupts)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        if request.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.signal = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_here(
    requested: bool, stop: StopRequest, step: int, total: int, saved_now: bool, save: Callable[[int], object], out: Path
) -> None:
    """End of a step: if a stop was requested and the run is not over, save (unless this step
    already did) and raise :class:`TrainingInterrupted`."""
    if requested and step < total:
        if not saved_now:
            save(step)
        raise TrainingInterrupted(
            f"stopped by {stop.signal or 'a signal'} after step {step}; saved in {out}. "
            "Continue with the same command and {opt:resume}."
        )


def interrupted_twice(out: Path) -> TrainingInterrupted:
    return TrainingInterrupted(
        f"interrupted twice: stopped at once without saving; {{opt:resume}} continues from the last "
        f"checkpoint in {out}."
    )


def check_run_folder(out: Path, has_state: bool, resume: bool, state: str = "saved training state") -> None:
    """The one run-folder rule: ``resume`` needs a saved ``state`` in ``out``, and a new run must
    not overwrite one."""
    if resume and not has_state:
        raise UsageError(
            f"{{opt:resume}}: {out} holds no {state} to resume from; drop {{opt:resume}} to start a new run."
        )
    if not resume and has_state:
        raise UsageError(
            f"{out} already holds a training run; pass {{opt:resume}} to continue it, or choose another {{opt:out}}."
        )


# --------------------------------------------------------------------------- random-number state


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random-number state a training step can touch, as tensors and plain numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": [int(v) for v in py_state], "gauss": gauss},
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- reading state safely


def load_state(path: str | Path, what: str = "a resume state written by hw2") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one clear sentence for any failure."""
    from hw2cli.io.checkpoints import torch_load

    try:
        return torch_load(path, what)
    except UsageError as exc:
        raise UsageError(f"{exc.args[0]} Delete it, or start a new run without {{opt:resume}}.") from None


# --------------------------------------------------------------------------- logs


def truncate_log(path: Path, step: int) -> None:
    """Keep only the lines of ``path`` (JSON lines with a ``step``) up to ``step``."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) <= step:
            kept.append(line)
    write_text(path, "".join(k + "\n" for k in kept))


def append_log(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
