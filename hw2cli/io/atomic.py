"""Atomic writes, and the one place that keeps every write inside the folder the user named.

Every file is written under a temporary name in its folder and renamed, so a crash, Ctrl-C or
kill never leaves a half-written image, checkpoint or report behind: the destination holds the
old content or the complete new one (``os.replace`` is atomic on POSIX and Windows when both
names are on one file system, which a sibling temporary file guarantees).

Temporary names carry the writer's process id (``.NAME.hw2-PID-XXXX.tmp``), so a later run can
tell its own stale leftovers (their process is gone, e.g. after ``kill -9``) from a file another
``hw2`` is writing right now, and :func:`remove_stale_temporaries` deletes only the former; every
write does that once per folder and process, whatever the command.

:func:`confine` names the output folder of the command that runs: while it is active, a write
whose resolved path lies outside that folder (``..``, an absolute name, a symlink out) is refused
before anything is written. The commands' own layout code builds paths from names it has
validated; this is the backstop that holds even if one of them is wrong.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hw2cli.errors import RunError, UsageError

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.hw2-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")
_STAGING_RE = re.compile(r"^\.(?P<name>.+)\.hw2-(?P<pid>\d+)-[A-Za-z0-9_]+\.partial$")
_roots: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("hw2_output_roots", default=())
_swept: set[Path] = set()  # folders this process has cleared of killed runs' temporaries
# Pseudo file systems no output belongs in.
_SYSTEM_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))
_SHARED_MEMORY = Path("/dev/shm")


# --------------------------------------------------------------------------- confinement


@contextlib.contextmanager
def confine(root: str | os.PathLike[str]) -> Iterator[Path]:
    """Refuse, while active, any write that does not resolve inside ``root``."""
    resolved = Path(root).resolve()
    token = _roots.set((*_roots.get(), resolved))
    try:
        yield resolved
    finally:
        _roots.reset(token)


def inside(root: str | os.PathLike[str], *parts: str) -> Path:
    """``root / parts`` if it resolves inside ``root``; a :class:`UsageError` naming the part otherwise."""
    base = Path(root)
    path = base.joinpath(*parts)
    if not _is_within(path, base.resolve()):
        raise UsageError(f"{'/'.join(parts)!r} would be written outside the output folder {base}; refusing it.")
    return path


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def _check_confined(path: Path) -> None:
    roots = _roots.get()
    if roots and not _is_within(path, roots[-1]):
        raise RunError(f"refusing to write {path}: it lies outside the output folder {roots[-1]}.")


# --------------------------------------------------------------------------- outputs checked up front


def input_holding(path: Path, inputs: list[tuple[Path, str]]) -> str | None:
    """``"is <what>"`` or ``"is inside <what>"`` for the first of ``inputs`` (folder, what it is)
    that ``path`` is or lies in, links resolved; ``None`` where it is none of them. An output
    there would be written among a command's own inputs."""
    target = path.resolve()
    for folder, what in inputs:
        where = folder.resolve()
        if target == where or where in target.parents:
            return f"{'is' if target == where else 'is inside'} {what}"
    return None


def _first_existing(path: Path, what: str | None = None) -> Path:
    """The nearest of ``path`` and its parents that exists; with ``what``, a link on the way to a
    target that does not exist is a :class:`UsageError` (the write would fail there, after the work,
    with "File exists" for a path that does not)."""
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        if what is not None and probe.is_symlink():
            raise UsageError(
                f"the {what} {path} cannot be made: {probe} is a link to {os.readlink(probe)}, which does not exist; "
                "create that folder or remove the link."
            )
        probe = probe.parent
    return probe


def _check_name_lengths(path: Path, what: str) -> None:
    """No part of ``path`` is longer than file systems allow (255 bytes)."""
    for part in path.parts:
        if len(os.fsencode(part)) > 255:
            raise UsageError(
                f"the {what} {path} cannot be made: its part {part[:40]}… is {len(os.fsencode(part))} bytes long, and "
                "file systems allow 255; choose a shorter name."
            )


def _in_system_tree(path: Path) -> Path | None:
    resolved = path.absolute().resolve()
    if resolved == _SHARED_MEMORY or _SHARED_MEMORY in resolved.parents:  # a RAM disk: real files
        return None
    for tree in _SYSTEM_TREES:
        if resolved == tree or tree in resolved.parents:
            return tree
    return None


def check_output_folder(
    path: str | os.PathLike[str], what: str = "output folder", *, within: str | os.PathLike[str] | None = None
) -> Path:
    """Fail now, before any work, if ``path`` cannot become a writable folder (one that stays
    inside the folder ``within``, where given: a sub-folder that is a link out would be refused
    only at its first write, after the work)."""
    path = Path(path)
    if within is not None and (path.exists() or path.is_symlink()) and not _is_within(path, Path(within).resolve()):
        raise UsageError(
            f"the {what} {path} leads outside {within} (to {path.resolve()}); remove that link or choose another "
            "folder."
        )
    _check_name_lengths(path, what)
    tree = _in_system_tree(path)
    if tree is not None:
        raise UsageError(f"the {what} {path} lies under {tree}, which holds no real files; choose another folder.")
    if path.exists() and not path.is_dir():
        raise UsageError(f"the {what} {path} is an existing file; give a folder.")
    anchor = _first_existing(path, what)
    if not anchor.is_dir():
        raise UsageError(f"the {what} {path} cannot be made: {anchor} is a file, not a folder.")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UsageError(f"the {what} {path} cannot be written: {anchor} is not writable.")
    return path


def image_suffixes() -> dict[str, str]:
    """File suffixes Pillow can write, mapped to their format names."""
    from PIL import Image

    Image.init()
    return {ext: fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def check_output_file(path: str | os.PathLike[str], what: str = "output file", *, image: bool = False) -> Path:
    """Fail now, before any work, if ``path`` cannot be written as a file (an image, if ``image``)."""
    path = Path(path)
    _check_name_lengths(path, what)
    if path.is_dir():
        raise UsageError(f"the {what} {path} is an existing folder; give a file name.")
    if path.is_symlink() and not _is_within(path, path.parent.resolve()):
        raise UsageError(
            f"the {what} {path} is a link to {path.resolve()}, outside its folder; remove the link or give another "
            "name."
        )
    if image and path.suffix.lower() not in image_suffixes():
        raise UsageError(
            f"the {what} {path} does not end in an image format Pillow writes; use .png (or .jpg, .webp, .tiff)."
        )
    check_output_folder(path.parent, f"folder of the {what}")
    return path


# --------------------------------------------------------------------------- temporaries


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def is_stale_temporary(path: Path) -> bool:
    """A temporary file or staging folder of an ``hw2`` process that no longer runs."""
    match = _TMP_RE.match(path.name) or _STAGING_RE.match(path.name)
    return match is not None and not _pid_alive(int(match.group("pid")))


def is_temporary(path: Path) -> bool:
    return bool(_TMP_RE.match(path.name) or _STAGING_RE.match(path.name))


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[str]:
    """Delete what killed ``hw2`` processes left in ``folder``; return the names removed."""
    import shutil

    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if is_stale_temporary(entry):
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry.name)
    return removed


def temporary_name(path: Path) -> str:
    """The start of a temporary name for ``path``: ``.NAME.hw2-PID-``, with NAME cut short where the
    whole name (random part and ``.partial`` included) would pass the usual 255-byte limit, so any
    name the file system takes can be written."""
    pid = f".hw2-{os.getpid()}-"
    room = 255 - len(pid) - 1 - 16 - len(".partial")  # the leading dot, mkstemp's random part, the suffix
    name = path.name.encode()
    if len(name) > room:
        name = name[:room].decode(errors="ignore").encode()  # a whole character last
    return f".{name.decode()}{pid}"


def _sweep_once(folder: Path) -> None:
    """Before this process first writes into ``folder``, remove what killed runs left there, so
    no command leaves a ``kill -9``'s temporary behind for good (once per folder: cheap)."""
    try:
        key = folder.resolve()
    except OSError:
        return
    if key not in _swept:
        _swept.add(key)
        remove_stale_temporaries(key)


def make_staging_folder(path: Path) -> Path:
    """A new empty folder beside ``path``, named so that a later run can clean it up if we die."""
    _check_confined(path)
    _sweep_once(path.parent)
    try:
        return Path(tempfile.mkdtemp(prefix=temporary_name(path), suffix=".partial", dir=path.parent))
    except OSError as exc:
        raise RunError(f"cannot write to the folder {path.parent}: {exc.strerror or exc}.") from exc


@contextlib.contextmanager
def files_together(folder: str | os.PathLike[str], names: list[str]) -> Iterator[Path]:
    """Yield a staging folder beside ``folder``'s files; when the block succeeds, the files
    ``names`` written there move into ``folder`` one right after the other (nothing moves if it
    fails), so a report made of several files never holds files of two runs after a kill."""
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = make_staging_folder(folder / names[0])
    try:
        yield staging
        try:
            for name in names:
                os.replace(staging / name, folder / name)
        except OSError as exc:  # only the moves: an error while the files are made is that error
            raise RunError(f"cannot write to the folder {folder}: {exc.strerror or exc}.") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    ``fsync=True`` flushes the data to disk before the rename (use it for checkpoints, where
    a power loss must not leave an empty file under the final name).
    """
    path = Path(path)
    _check_confined(path)
    if path.is_dir():
        raise RunError(f"cannot write the file {path}: a folder of that name is in the way.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep_once(path.parent)
        fd, tmp_name = tempfile.mkstemp(prefix=temporary_name(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise RunError(f"cannot write to {path.parent}: {exc.strerror or exc}.") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes 0600 and some writers recreate the file: the finished file gets the usual mode
        os.chmod(tmp, 0o666 & ~_umask())
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not exc.filename:  # Pillow's full disk names no file: this one
            exc.filename = str(path)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> Path:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_image(image: Any, path: str | os.PathLike[str], **save_kwargs: Any) -> Path:
    """Save a PIL image, an ``HxWxC`` / ``HxW`` uint8 array, or a ``CxHxW`` uint8 tensor.

    The format comes from the file's extension (the temporary name has none, so it is passed).
    """
    from PIL import Image

    fmt = image_suffixes().get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"cannot tell the image format of {path}: use a .png or .jpg name.")
    if not isinstance(image, Image.Image):
        array = image
        if hasattr(array, "detach"):  # torch tensor, CxHxW
            array = array.detach().cpu()
            if array.ndim == 3:
                array = array.permute(1, 2, 0)
            array = array.numpy()
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        image = Image.fromarray(array)
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **save_kwargs)
    return Path(path)


def save_safetensors(
    tensors: Mapping[str, Any], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a safetensors file atomically and durably (it is usually a checkpoint)."""
    from safetensors.torch import save_file

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path, fsync=True) as tmp:
        save_file(contiguous, str(tmp), metadata=dict(metadata) if metadata else None)
        if metadata and len(metadata) > 1:
            _sort_metadata(Path(tmp))
    return Path(path)


def _sort_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted: the writer keeps them in a
    randomly seeded hash map, so the same tensors and metadata gave other bytes on every save.
    The header is the same JSON reordered, so it keeps its length (and the tensors their offsets)."""
    import struct

    with open(path, "r+b") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        raw = fh.read(size)
        header = json.loads(raw)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size or json.loads(text) != json.loads(raw):
            return  # not the layout expected: leave the writer's own
        fh.seek(8)
        fh.write(text + b" " * (size - len(text)))


def listed(names: list[str]) -> str:
    """``a.png``, ``a.png (and 3 more)``: the first of some file names, and how many follow."""
    return names[0] + (f" (and {len(names) - 1:,} more)" if len(names) > 1 else "")
