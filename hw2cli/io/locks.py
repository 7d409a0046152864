"""One writer per output: a second ``hw2`` that would write the same folder while the first one
runs is refused in one sentence instead of mixing its files with the first one's.

Without this, two ``hw2 ddpm generate OUT`` with different settings both ended with exit 0 and
left a folder of both recipes, which the record of the last one then vouched for, and a second
``hw2 ddpm train --out RUN`` wrote its config and state into a run that had not saved yet.

A claim is an advisory lock (``flock``) on a small file named after the resolved folder, kept in
``WEIGHTS_DIR/locks/`` and in the user's temporary folder (so two runs with different weights
folders see each other too, and machines sharing one weights folder do): nothing is added to the
user's folder, and the lock goes with the process however it ends (``kill -9`` included),
so a stale claim never blocks a later run. A process holds its claims until the command ends
(:func:`release_all`, called by the CLI, which also removes the lock files); claiming a folder
it holds already is free. Only the first process of a multi-process launch claims: the others
write into its run. Where ``flock`` does not exist (Windows) or the file system has no locks
(NFS without its lock service), nothing is claimed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from hw2cli.errors import UsageError

_held: dict[str, int] = {}  # lock file → open descriptor, for this process's claims


def _lock_folders() -> list[Path]:
    """Where claims are kept: ``WEIGHTS_DIR/locks`` (seen by every machine that shares the weights
    folder) and this user's temporary folder (seen by every hw2 of this machine, whatever weights
    folder it was given), each where it can be written."""
    from hw2cli import settings

    try:
        weights = settings.get().weights_dir
    except Exception:  # settings that do not load are reported by the command itself
        weights = None
    uid = os.getuid() if hasattr(os, "getuid") else 0
    candidates = [weights / "locks"] if weights is not None else []
    folders = []
    for folder in [*candidates, Path(tempfile.gettempdir()) / f"hw2-locks-{uid}"]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK | os.X_OK) and folder.resolve() not in [f.resolve() for f in folders]:
            folders.append(folder)
    return folders


def claim(folder: str | os.PathLike[str], what: str = "output folder", part: str | None = None) -> None:
    """Hold ``folder`` (or its ``part``: a free prompt's files) for this process until
    :func:`release_all`; a :class:`UsageError` naming the other process if one holds it."""
    try:
        import fcntl  # noqa: F401
    except ImportError:  # Windows: no advisory locks of this kind
        return
    from hw2cli.runtime import other_rank

    if other_rank() is not None:
        return
    key = str(Path(folder).absolute().resolve()) + ("\0" + part if part else "")
    name = f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.lock"
    taken: list[str] = []
    try:
        for base in _lock_folders():
            lock = str(base / name)
            if lock not in _held and _take(lock, f"{what} {folder}"):
                taken.append(lock)
    except UsageError:
        _release(taken)  # nothing of a refused claim stays held
        raise


def _take(lock: str, what: str) -> bool:
    """Lock the file ``lock`` for this process (True), or say that this file system keeps no locks
    (False); a :class:`UsageError` naming the process that holds it."""
    import fcntl

    for _ in range(100):  # the file may be removed by its last holder between our open and our lock
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return False  # no lock can be kept here: the run goes on as before
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: another process writes there now
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise UsageError(
                f"another hw2 (process {holder}) is writing the {what} now; wait for it to finish, or choose "
                "another folder."
            ) from None
        except OSError:  # no locks on this file system (NFS without its lock service, some FUSE mounts)
            os.close(fd)
            return False
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except OSError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _held[lock] = fd
            return True
        os.close(fd)  # we locked a file its holder had just removed: take the one there now
    return False


def release_all() -> None:
    """Give up every claim of this process (the end of a command); its lock files go too, so the
    folder does not fill up with one file per output ever written."""
    _release(list(_held))


def _release(locks: list[str]) -> None:
    for lock in locks:
        fd = _held.pop(lock)
        try:
            os.unlink(lock)  # while still held: a process that opened it since retries on the new file
        except OSError:
            pass
        try:
            os.close(fd)
        except OSError:
            pass
