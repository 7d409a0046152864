"""The homework's own data archive, ``hw2_data.zip``: fetched, verified, unpacked and checked.

The course's script runs ``gdown 1W6Y1OmjzNw2qHoGDCpGOwGpw27wLg1fi -O hw2_data.zip`` and unzips it
in place. :func:`fetch_homework` does the same with ``gdown`` (which knows Google Drive's
confirmation pages), or with hw2's own resumable downloader for a mirror URL; then it tests
every member's CRC, unpacks into a staging folder renamed into place (a member that would land
outside the destination is refused), and :func:`check_homework` opens every part the way the
commands will read it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hw2cli.data.download import Progress, copy_file, extract_zip, fetch, file_digest, local_source
from hw2cli.errors import RunError, UsageError, as_option

DRIVE_ID = "1W6Y1OmjzNw2qHoGDCpGOwGpw27wLg1fi"
ARCHIVE = "hw2_data.zip"


@dataclass
class PartCheck:
    part: str
    ok: bool
    detail: str


def _drive_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("drive.google.com", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _gdown(archive: Path, on_progress: Progress | None) -> None:
    try:
        import gdown
    except ImportError:
        from hw2cli.data.sources import extra_command

        raise RunError(
            f"fetching from Google Drive needs the Python package 'gdown' (the 'data' extra: {extra_command()})."
        ) from None
    part = archive.with_name(archive.name + ".part")
    try:
        gdown.download(id=DRIVE_ID, output=str(part), quiet=True, resume=True, progress=on_progress, timeout=30)
    except Exception as exc:  # gdown raises its own errors and requests'; all mean the same here
        raise RunError(
            f"cannot download {ARCHIVE} from Google Drive ({type(exc).__name__}: {exc}); run again to resume, "
            "or pass {opt:url} with a mirror."
        ) from None
    if not part.is_file():
        raise RunError(f"gdown finished without writing {part}; Google Drive may be refusing the download.")
    os.replace(part, archive)


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    probe = folder.absolute()
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    return missing


def fetch_homework(
    dest: str | os.PathLike[str],
    *,
    url: str | None = None,
    sha256: str | None = None,
    offline: bool = False,
    replace: bool = False,
    on_progress: Progress | None = None,
    on_extract: Callable[[int, int], None] | None = None,
) -> Path:
    """Download (or reuse) ``dest/hw2_data.zip``, verify it, and unpack ``dest/hw2_data``; return that folder.

    ``url``: an http(s) mirror, a ``file://`` URL or a path to a copy on disk (copied in); an
    archive already in ``dest`` (an interrupted run's) is reused, except with ``replace``, which
    takes the one ``url`` names.
    An entry of ``dest`` the archive also holds is refused unless ``replace`` (see
    :func:`extract_zip`). A failed call leaves no folder it created empty behind.
    """
    dest = Path(dest)
    archive = dest / ARCHIVE
    source = local_source(url) if url is not None else None
    created = _missing_folders(dest)
    copied = False
    if replace and url is not None and archive.is_file():  # replace with what --url names, not the old archive
        if source is None or source.resolve() != archive.resolve():
            archive.unlink()
    try:
        if not archive.is_file():
            if source is not None and not source.is_file():  # said before any folder is made
                state = "is a folder" if source.is_dir() else "does not exist"
                raise UsageError(
                    f"{{opt:url}} {url} {state}; pass an http(s) address, a file:// URL or the path of a zip file."
                )
            if source is not None:  # a copy on disk is checked where it lies, before it is copied in
                import zipfile

                if not zipfile.is_zipfile(source):
                    raise UsageError(
                        f"{{opt:url}} {url} is not a zip archive (or is cut short); pass the homework's {ARCHIVE}."
                    )
            if source is None and offline:
                raise RunError(
                    f"{archive} is not on disk and offline mode is on; download it by hand (gdown {DRIVE_ID} -O "
                    f"{archive}) and run this again."
                )
            try:
                dest.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RunError(f"cannot create the folder {dest}: {exc.strerror or exc}.") from exc
            if source is not None:
                copy_file(source, archive, on_progress=on_progress, what=ARCHIVE)
                copied = True
            elif url is not None:
                hint = "pass the path of that copy as {opt:url}"
                fetch(url, archive, sha256=sha256, on_progress=on_progress, what=ARCHIVE, hint=hint)
            else:
                if not _drive_reachable():
                    raise RunError(
                        f"Google Drive cannot be reached from here; download {ARCHIVE} elsewhere (gdown {DRIVE_ID}) "
                        f"and put it at {archive}, or pass {{opt:url}} with a mirror or the path of that copy."
                    )
                _gdown(archive, on_progress)
        if sha256 is not None and file_digest(archive) != sha256.lower():
            if copied:  # our copy goes; the user's file stays where it was
                archive.unlink()
                raise RunError(f"{source} does not match the SHA-256 given; check the file and the checksum.")
            raise RunError(f"{archive} does not match the SHA-256 given; delete it and fetch again.")
        try:
            tops = extract_zip(archive, dest, replace=replace, on_progress=on_extract, require="hw2_data")
        except UsageError:
            if copied:  # our copy of the user's file goes; the file stays where it was
                archive.unlink()
            raise
    except BaseException:
        for folder in created:  # only empty ones go: a partial download stays for the next run to resume
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    root = dest / "hw2_data"
    if not root.is_dir():
        raise RunError(f"{archive} holds {', '.join(tops) or 'nothing'} but no hw2_data/ folder; is it the homework's?")
    return root


def check_homework(root: str | os.PathLike[str]) -> list[PartCheck]:
    """Open every part of ``hw2_data`` the way hw2's commands read it; one line per part."""
    from hw2cli.data.digits import DigitsDataset

    root = Path(root)
    checks: list[PartCheck] = []

    def record(part: str, run: Callable[[], str]) -> None:
        try:
            checks.append(PartCheck(part, True, run()))
        except (UsageError, RunError) as exc:  # an option it names is one of hw2's commands' (clip's --data)
            checks.append(PartCheck(part, False, exc.render(as_option)))
        except (OSError, ValueError) as exc:
            checks.append(PartCheck(part, False, str(exc)))

    for name in ("mnistm", "svhn"):

        def digits(name: str = name) -> str:
            folder = root / "digits" / name
            if not folder.is_dir():
                raise UsageError(f"{folder} is missing")
            counts = []
            for split in ("train", "val"):
                if (folder / f"{split}.csv").is_file():
                    ds = DigitsDataset(folder, split)
                    ds.verify()
                    bad = f", {len(ds.off_spec)} not 28x28 RGB" if ds.off_spec else ""
                    counts.append(f"{split} {len(ds):,}{bad}")
            if not counts:
                raise UsageError(f"{folder} has no train.csv")
            return "; ".join(counts)

        record(f"digits/{name}", digits)

    def face() -> str:
        folder = root / "face"
        noise = sorted((folder / "noise").glob("*.pt"))
        gt = sorted((folder / "GT").glob("*.png"))
        if not noise or not gt:
            raise UsageError(f"{folder} needs noise/*.pt and GT/*.png")
        from hw2cli.data.noise import load_noise_file

        for f in noise:
            load_noise_file(f)
        if not (folder / "UNet.pt").is_file():
            raise UsageError(f"{folder} has no UNet.pt")
        return f"{len(noise)} noise files, {len(gt)} ground-truth images, UNet.pt"

    record("face", face)

    def clip() -> str:
        from hw2cli.data.labelled import load_dataset

        folder = root / "clip_zeroshot" / "val"
        if not folder.is_dir():
            raise UsageError(f"{folder} is missing")
        data = load_dataset(folder)
        return f"{len(data.files):,} images, {len(data.classnames)} classes"

    record("clip_zeroshot", clip)

    def textual_inversion() -> str:
        from hw2cli.data.prompts import read_input_json

        folder = root / "textual_inversion"
        entries = read_input_json(folder / "input.json")
        missing = [k for k in entries if not (folder / k).is_dir()]
        if missing:
            raise UsageError(f"{folder} has no image folder for concept {missing[0]!r}")
        prompts = sum(len(e["prompt"]) for e in entries.values())
        return f"{len(entries)} concepts, {prompts} prompts ({json.dumps(sorted(entries))})"

    record("textual_inversion", textual_inversion)
    return checks
