"""Downloading data files: resumable, verified, atomic, and quick to say when offline.

``fetch(url, dest)`` writes ``dest`` only once the whole file has arrived and passed its size
and checksum checks. Bytes arrive in ``dest.part`` beside it; an interrupted download (Ctrl-C,
a dropped connection, a kill) resumes from there with an HTTP ``Range`` request, and a server
that ignores ranges makes it start over. No retries loop for minutes: a host that cannot be
reached is one clear error at once, naming the URL and how to supply the file by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hw2cli.errors import RunError, UsageError

CHUNK = 1 << 20
Progress = Callable[[int, int | None], None]  # (bytes done, bytes in all or None)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(path: Path, size: int | None, sha256: str | None, md5: str | None, url: str, *, fresh: bool = False) -> None:
    """Raise if ``path`` fails a check. ``fresh``: it was just downloaded, and the caller deletes it on failure."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        if fresh:
            raise RunError(
                f"the download of {url} has {actual} bytes, expected {size}, so it was deleted; run the command again."
            )
        raise RunError(f"the download of {url} has {actual} bytes, expected {size}; delete {path} and try again.")
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is not None and file_digest(path, algorithm) != expected.lower():
            name = "SHA-256" if algorithm == "sha256" else "MD5"
            if fresh:
                raise RunError(
                    f"the download of {url} does not match its {name} checksum, so it was deleted; check the address "
                    "and the checksum, then run the command again."
                )
            raise RunError(f"{path} (from {url}) does not match its {name} checksum; delete it and try again.")


def fetch(
    url: str,
    dest: str | os.PathLike[str],
    *,
    offline: bool = False,
    size: int | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 15.0,
    on_progress: Progress | None = None,
    what: str = "the file",
    hint: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``); return ``dest``.

    An existing ``dest`` that passes the checks is returned at once. ``offline`` turns any
    download into a :class:`RunError` saying where to put the file instead. ``hint``: another
    way to supply the file, added to the advice when the host cannot be reached.
    """
    dest = Path(dest)
    if dest.is_file():
        _check(dest, size, sha256, md5, url)
        return dest
    if offline:
        raise RunError(
            f"{what} is not on disk ({dest}) and offline mode is on; download {url} there by hand, "
            "or run without {opt:offline} / HW2_OFFLINE."
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create the folder {dest.parent}: {exc.strerror or exc}.") from exc
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "hw2", **({"Range": f"bytes={have}-"} if have else {})}
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) URLs only, checked below)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already complete
            os.replace(part, dest)
            _check(dest, size, sha256, md5, url)
            return dest
        raise RunError(f"cannot download {what} from {url}: HTTP {exc.code} {exc.reason}.") from exc
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RunError(
            f"cannot download {what} from {url} ({reason}); this machine looks offline. "
            f"Download it elsewhere and put it at {dest}{', or ' + hint if hint else ''}."
        ) from exc
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None and length.isdigit() else size
        if on_progress is not None:
            on_progress(have, total)
        try:
            with open(part, "ab" if resumed else "wb") as fh:
                have = _copy_stream(response, fh, have, total, on_progress)
        except (TimeoutError, OSError) as exc:
            raise RunError(
                f"the download of {url} stopped after {have} bytes ({exc}); run the command again to resume it."
            ) from exc
    if total is not None and have < total:
        raise RunError(f"the download of {url} stopped after {have} of {total} bytes; run the command again to resume.")
    os.replace(part, dest)
    try:
        _check(dest, size, sha256, md5, url, fresh=True)
    except RunError:
        with contextlib.suppress(OSError):
            dest.unlink()
        raise
    return dest


def check_url(url: str) -> str:
    """A download address the user typed: http(s) only (``urllib`` would also open ``file:``)."""
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"the URL {url!r} is not an http:// or https:// address.")
    return url


def _copy_stream(src: Any, dst: Any, done: int, total: int | None, on_progress: Progress | None) -> int:
    """Copy ``src`` to the file ``dst`` block by block, reporting progress; flush it to disk; return
    the byte count reached (``done`` plus what was copied)."""
    while block := src.read(CHUNK):
        dst.write(block)
        done += len(block)
        if on_progress is not None:
            on_progress(done, total)
    dst.flush()
    os.fsync(dst.fileno())
    return done


def local_source(url: str) -> Path | None:
    """The file a ``file://`` URL or a plain path names; ``None`` for http(s); other schemes are refused."""
    if url.startswith(("http://", "https://")):
        return None
    if url.startswith("file:"):
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise UsageError(f"the URL {url!r} names another host; a file:// URL must name a file on this machine.")
        return Path(urllib.request.url2pathname(parsed.path))
    if "://" in url:
        raise UsageError(f"the URL {url!r} is not an http://, https:// or file:// address, nor a local path.")
    return Path(url).expanduser()


def copy_file(source: Path, dest: Path, *, on_progress: Progress | None = None, what: str = "the file") -> Path:
    """Copy ``source`` to ``dest`` through ``dest.part`` (so ``dest`` is whole or absent); return ``dest``."""
    if not source.is_file():
        state = "is a folder" if source.is_dir() else "does not exist"
        raise UsageError(f"{what} {source} {state}; pass a zip file on disk, a file:// URL or an http(s) address.")
    part = dest.with_name(dest.name + ".part")
    total = source.stat().st_size
    done = 0
    try:
        with open(source, "rb") as src, open(part, "wb") as dst:
            if on_progress is not None:
                on_progress(0, total)
            _copy_stream(src, dst, done, total, on_progress)
        os.replace(part, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        raise RunError(f"cannot copy {source} to {dest}: {exc.strerror or exc}.") from exc
    return dest


def _in_the_way(dest: Path, tops: list[str]) -> list[Path]:
    return [dest / top for top in tops if (dest / top).exists() or (dest / top).is_symlink()]


def _refuse_existing(archive: Path, dest: Path, tops: list[str]) -> None:
    taken = _in_the_way(dest, tops)
    if taken:
        more = f" (so do {', '.join(str(p) for p in taken[1:])})" if taken[1:] else ""
        raise UsageError(
            f"{taken[0]} already exists{more} and {archive.name} holds an entry of that name; move it away, "
            "or pass {opt:replace} to replace it with the archive's."
        )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def extract_zip(
    archive: Path,
    dest: Path,
    *,
    replace: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    require: str | None = None,
) -> list[str]:
    """Unpack ``archive`` into ``dest``: into a staging folder inside it, then each top entry renamed into place.

    Members that would land outside ``dest`` (absolute names, ``..``) are refused: a zip is
    data, and nothing in it may write elsewhere. An entry of ``dest`` that the archive also
    holds at its top level is never touched: that is a :class:`UsageError` before anything is
    unpacked or moved, unless ``replace``, which swaps it for the archive's; so is an archive
    without the top-level folder ``require``, read from its member list. Returns the top-level
    names extracted.
    """
    from hw2cli.io.atomic import make_staging_folder, remove_stale_temporaries, temporary_name

    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise RunError(f"{archive} is not a readable zip archive ({exc}); delete it and download it again.") from exc
    with zf:
        bad = zf.testzip()
        if bad is not None:
            raise RunError(f"{archive} is corrupt (member {bad} fails its CRC check); delete it and download again.")
        members = [m for m in zf.infolist() if not m.filename.startswith("__MACOSX/")]
        for member in members:
            name = member.filename
            parts = Path(name).parts
            if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise RunError(f"{archive} holds the member {name!r}, which would land outside {dest}; refusing it.")
        tops = sorted({Path(m.filename).parts[0] for m in members if Path(m.filename).parts})
        if require is not None and require not in tops:  # read from the member list: nothing is unpacked
            raise UsageError(
                f"{archive} holds {', '.join(tops) or 'nothing'} but no {require}/ folder; is it the homework's? "
                "Nothing was unpacked."
            )
        if not replace:
            _refuse_existing(archive, dest, tops)
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create the folder {dest}: {exc.strerror or exc}.") from exc
        remove_stale_temporaries(dest)  # what a killed run left: its staging folder, a replaced entry
        staging = make_staging_folder(dest / archive.stem)
        try:
            for i, member in enumerate(members, 1):
                zf.extract(member, staging)
                if on_progress is not None:
                    on_progress(i, len(members))
            if not replace:  # again: something may have appeared while unpacking
                _refuse_existing(archive, dest, tops)
            for top in tops:
                target = dest / top
                if replace and (target.exists() or target.is_symlink()):
                    old = dest / f"{temporary_name(target)}old.partial"
                    os.replace(target, old)
                    try:
                        os.replace(staging / top, target)
                    except OSError:
                        os.replace(old, target)  # put the user's entry back
                        raise
                    _remove(old)
                else:
                    os.replace(staging / top, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return tops
