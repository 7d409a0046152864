"""What every training loop of ``hw2`` shares: stopping cleanly, and resume state that is safe to read.

* :func:`deferred_interrupts` turns Ctrl-C and SIGTERM (cluster pre-emption, ``kill``) into a
  request that the loop honours between two steps: the step that was running finishes, the
  state as of its end is saved, and :class:`TrainingInterrupted` (exit code 130) is raised. The
  saved state is therefore exactly the state an uninterrupted run has after that step, and
  ``--resume`` continues bit for bit. A second Ctrl-C stops at once without saving (the last
  periodic checkpoint stays).
* Resume state is ``accelerator.save_state`` plus ``hw2_state.json`` (:func:`save_state`): every
  pickled file in it is read with ``torch.load(weights_only=True)`` before accelerate touches it
  (:func:`check_state_files`), so a crafted file cannot run code and is refused with a sentence
  instead of PyTorch's advice to turn the protection off; random-number states are JSON.
  ``hw2_state.json`` records each file's size and SHA-256, so a damaged state is known before it
  is loaded, and the two newest states are kept: :func:`resume_state` falls back to the older
  one when the newest cannot be read (a bad disk sector, a truncated copy of the run folder).
* :func:`truncate_log` drops log lines of steps a resumed run will redo.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hw2cli import interrupts
from hw2cli.errors import HW2Error, UsageError
from hw2cli.io.atomic import write_text


class TrainingInterrupted(HW2Error):
    """Ctrl-C or SIGTERM during training: the state was saved; exit code 130 (an intended stop,
    so it reads "Stopped: ...", not "Error: ...")."""

    exit_code = 130
    label = "Stopped"


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
    interrupts.check()  # a Ctrl-C swallowed while the model loaded: stop before the first step
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
            f"{stop.signal or 'a signal'} after step {step}; saved in {out}. "
            "Continue with the same command and {opt:resume}."
        )


def interrupted_twice(out: Path) -> TrainingInterrupted:
    return TrainingInterrupted(
        f"interrupted twice, so at once, without saving; {{opt:resume}} continues from the last checkpoint in {out}."
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


def capture_rng(generator: torch.Generator | None = None, rng: random.Random | None = None) -> dict[str, Any]:
    """Every random-number state a training step can touch, as JSON-able lists and numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": {"keys": [int(k) for k in keys], "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": [int(version), [int(v) for v in py_state], gauss],
    }  # fmt: skip
    if generator is not None:
        state["generator"] = generator.get_state().tolist()
    if rng is not None:
        v, st, g = rng.getstate()
        state["random"] = [int(v), [int(x) for x in st], g]
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(
    state: dict[str, Any],
    generator: torch.Generator | None = None,
    rng: random.Random | None = None,
    source: Path | None = None,
) -> None:
    """Put back what :func:`capture_rng` saved; a damaged record (``source`` names its file) is a
    :class:`UsageError`, not a traceback from deep inside torch or numpy."""
    try:
        _restore_rng(state, generator, rng)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        where = f"{source} holds" if source is not None else "the resume state holds"
        raise UsageError(
            f"{where} a random-number state that does not fit this run ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0]}); resume it where it was saved, or start a new run without {{opt:resume}}."
        ) from None


def _restore_rng(state: dict[str, Any], generator: torch.Generator | None, rng: random.Random | None) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    n = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))  # fmt: skip
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    if generator is not None and "generator" in state:
        generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
    if rng is not None and "random" in state:
        v, st, g = state["random"]
        rng.setstate((v, tuple(st), g))
    if "cuda" in state and torch.cuda.is_available():
        # one state per GPU that was visible; with fewer visible now, the ones there are (a process
        # draws on its own device, which is among the first ones), with more, the saved ones
        for index, saved in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.tensor(saved, dtype=torch.uint8), index)


# --------------------------------------------------------------------------- resume state on accelerate

STATE_PREFIX = "state-"
STATE_MARK = "hw2_state.json"


def _state_step(path: Path) -> int | None:
    digits = path.name[len(STATE_PREFIX) :]
    return int(digits) if path.name.startswith(STATE_PREFIX) and digits.isdigit() and path.is_dir() else None


def state_folders(out: Path) -> list[Path]:
    """The complete saved states of a run folder, newest (highest step) first. A state is written
    to a staging folder and renamed into place once complete, so a kill never leaves a half one
    under this name. Steps are compared as numbers: ``state-10000000`` is newer than
    ``state-9999999`` although it sorts before it as a name."""
    if not out.is_dir():
        return []
    found = [p for p in out.glob(f"{STATE_PREFIX}*") if _state_step(p) is not None and (p / STATE_MARK).is_file()]
    return sorted(found, key=lambda p: _state_step(p) or 0, reverse=True)


def discard_state(folder: Path) -> None:
    """Delete a state folder so that a kill part-way never leaves a piece of it under its own
    name: it is first renamed to a temporary name (which the next run's sweep removes if this
    process dies), then deleted."""
    from hw2cli.io.atomic import temporary_name

    doomed = folder.with_name(f"{temporary_name(folder)}discard.partial")
    try:
        os.replace(folder, doomed)
    except OSError:
        doomed = folder
    shutil.rmtree(doomed, ignore_errors=True)


def _state_like(out: Path) -> list[Path]:
    """Every ``state-N`` folder of ``out``, complete or not."""
    return [f for f in out.glob(f"{STATE_PREFIX}*") if _state_step(f) is not None] if out.is_dir() else []


def remove_state_debris(out: Path) -> None:
    """Delete what a kill left of a state an older hw2 was deleting (a ``state-N`` without its mark)."""
    for folder in _state_like(out):
        if not (folder / STATE_MARK).is_file():
            discard_state(folder)


def discard_states(out: Path, keep: Path | None = None) -> None:
    """Delete every state folder of ``out`` but ``keep``: older complete states, and the remains of
    one an older hw2 began to delete when it was killed (a ``state-N`` without its mark)."""
    for folder in _state_like(out):
        if folder != keep:
            discard_state(folder)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def state_digests(folder: Path) -> dict[str, list[Any]]:
    """``relative path → [size, sha256]`` of every file of a state folder but its mark."""
    return {
        file.relative_to(folder).as_posix(): [file.stat().st_size, _sha256(file)]
        for file in sorted(folder.rglob("*"))
        if file.is_file() and file.name != STATE_MARK
    }


def _check_digests(folder: Path, recorded: Any) -> None:
    """The files of ``folder`` are the ones :func:`save_state` recorded, byte for byte."""
    if not isinstance(recorded, dict):
        raise UsageError(f"{folder / STATE_MARK} is not a state hw2 wrote (its file list is damaged).")
    for name, entry in sorted(recorded.items()):
        file = folder / name
        try:
            size, digest = int(entry[0]), str(entry[1])
        except (TypeError, ValueError, IndexError, KeyError):
            raise UsageError(f"{folder / STATE_MARK} is not a state hw2 wrote (its entry for {name} is "
                             "damaged).") from None  # fmt: skip
        try:
            if not file.is_file():
                problem = "is missing"
            elif file.stat().st_size != size:
                problem = f"has {file.stat().st_size:,} bytes, not the {size:,} it was saved with"
            elif _sha256(file) != digest:
                problem = "differs from what was saved (its SHA-256 changed)"
            else:
                continue
        except OSError as exc:  # an unreadable sector, a file made unreadable
            problem = f"cannot be read ({exc.strerror or type(exc).__name__})"
        raise UsageError(f"{file} {problem}: this state is damaged. Delete {folder}, or start a new run without "
                         "{opt:resume}.")  # fmt: skip


def _intact(folder: Path) -> bool:
    """Whether a state's files are the ones it was saved with (one from before that record: yes)."""
    try:
        mark = json.loads((folder / STATE_MARK).read_text())
        if isinstance(mark, dict) and "files" in mark:
            _check_digests(folder, mark["files"])
    except (OSError, ValueError, UsageError):
        return False
    return True


def check_state_files(folder: Path) -> dict[str, Any]:
    """Check a saved state before anything reads it and return its ``hw2_state.json``: every pickled
    file read with ``weights_only=True`` first (accelerate's own allow-list: numpy arrays for its
    RNG states), so a crafted one is refused with our sentence (accelerate would print PyTorch's
    advice, or silently skip it), then every file against the size and SHA-256 recorded at saving
    (states from before that record carry none)."""
    from accelerate.utils.other import TORCH_SAFE_GLOBALS
    from safetensors import safe_open

    from hw2cli.io.checkpoints import load_error, quiet_pickle_protocol

    for file in sorted(folder.iterdir()):
        if file.suffix in (".bin", ".pkl", ".pt", ".safetensors"):
            try:
                if file.suffix == ".safetensors":  # the header must cover the file exactly: truncation shows
                    with safe_open(str(file), "pt") as fh:
                        list(fh.keys())
                else:
                    with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS), quiet_pickle_protocol():
                        torch.load(file, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise UsageError(
                    f"{load_error(file, 'a resume state written by hw2', exc).args[0]} Delete {folder}, or start a "
                    "new run without {opt:resume}."
                ) from None
    try:
        mark = json.loads((folder / STATE_MARK).read_text())
        int(mark["step"]), list(mark["processes"])  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{folder / STATE_MARK} is not a state hw2 wrote ({type(exc).__name__}: {exc}).") from None
    if "files" in mark:
        _check_digests(folder, mark["files"])
    return mark


def resume_state(out: Path, note: Callable[[str], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """The newest state of ``out`` that passes :func:`check_state_files`, and its mark. Where the
    newest does not, the one before it is taken and ``note`` says why (the steps since it are
    trained again, exactly as they were); where none does, the newest one's reason is raised."""
    states = state_folders(out)
    if not states:
        raise UsageError(f"{out} holds no saved training state.")
    first: UsageError | None = None
    for folder in states:
        try:
            mark = check_state_files(folder)
        except UsageError as exc:
            first = first or exc
            continue
        if first is not None and note is not None:
            reason = str(first.args[0]).split(" Delete ")[0].rstrip(".:")
            note(f"the newest state cannot be resumed ({reason}); continuing from the one before it, "
                 f"{folder.name} (step {int(mark['step']):,}), so the steps after it are trained again.")  # fmt: skip
        return folder, mark
    assert first is not None
    raise first


def save_state(
    accelerator: Any,
    out: Path,
    step: int,
    process: dict[str, Any],
    shared: dict[str, Any] | None = None,
    tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """``accelerator.save_state`` (prepared models, optimizers, loaders, RNG) plus ``hw2_state.json``
    (``step``, each process's ``process`` dict in rank order, ``shared``) and safetensors files
    (``tensors``: file name → tensors), in a staging folder renamed to ``state-NNNNNNN`` when
    complete. It and the newest older state are kept, the rest are removed. Every process must call it."""
    from accelerate.utils import gather_object

    from hw2cli.io.atomic import make_staging_folder, save_safetensors, write_json

    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{STATE_PREFIX}{step:07d}"
    processes = gather_object([process]) if accelerator.num_processes > 1 else [process]
    staging = str(make_staging_folder(final)) if accelerator.is_main_process else ""
    staging = gather_object([staging])[0] if accelerator.num_processes > 1 else staging
    accelerator.save_state(staging)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, group in (tensors or {}).items():
            save_safetensors(group, Path(staging) / name)
        files = state_digests(Path(staging))
        write_json(Path(staging) / STATE_MARK, {"step": step, "processes": processes, **(shared or {}), "files": files})
        if final.exists():  # the same step saved again: renamed away first, like every old state
            discard_state(final)
        os.replace(staging, final)
        # keep this state and the newest sound one before it (the fallback if this one is ever
        # damaged): a damaged one is what a resume fell back from; states of later steps are from
        # a line of training this run left that way, and states without a mark an older hw2's remains
        older = [f for f in state_folders(out) if (_state_step(f) or 0) < step]
        keep = {final, *[f for f in older if _intact(f)][:1]}
        for folder in _state_like(out):
            if folder not in keep:
                discard_state(folder)
    accelerator.wait_for_everyone()
    return final


def release(accelerator: Any) -> None:
    """Take a multi-process run's process group down once training is over, on every process.

    Two ways a finished Gloo run could still fail, both seen here: a process that exits with Gloo's
    worker threads alive can abort in interpreter finalisation (SIGABRT), so the group is destroyed
    while Python is fully alive; and if DDP's C++ ``Reducer`` (with the ``Logger`` that wraps it)
    holds the last reference to the group, freeing it when the training function returns runs the
    group's destructor with the GIL held, which joins a Gloo thread that is waiting for the GIL to
    free a finished all-reduce: a deadlock (about one run in seven with torch 2.11). So the reducers
    go first, while the group is still registered, and the group itself is freed last through its
    Python binding, which releases the GIL while it joins.
    """
    if accelerator.num_processes > 1 and torch.distributed.is_initialized():
        from torch.nn.parallel import DistributedDataParallel

        group = torch.distributed.group.WORLD
        accelerator.wait_for_everyone()
        for model in getattr(accelerator, "_models", []):  # what accelerator.prepare wrapped
            if isinstance(model, DistributedDataParallel):
                for name in ("logger", "reducer"):
                    if hasattr(model, name):
                        delattr(model, name)
        accelerator.state.destroy_process_group()
        del group


def load_state_folder(accelerator: Any, folder: Path, mark: dict[str, Any]) -> dict[str, Any]:
    """``accelerator.load_state`` of a checked state; returns this process's ``process`` dict."""
    saved_by = len(mark["processes"])
    if saved_by != accelerator.num_processes:
        raise UsageError(f"{folder} was saved by {saved_by} processes; resume it with {saved_by}, not "
                         f"{accelerator.num_processes}.")  # fmt: skip
    try:
        accelerator.load_state(str(folder))
    except Exception as exc:
        # torch's load_state_dict says "Error(s) in loading state_dict for X:" and the reason below it
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        detail = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
        raise UsageError(f"{folder} does not fit this run ({type(exc).__name__}: {detail[:300]}).") from None
    return mark["processes"][accelerator.process_index]


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
