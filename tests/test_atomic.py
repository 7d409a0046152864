"""Atomic writes: a failure mid-write leaves the old file (or nothing) and no temporary files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hw2cli.errors import RunError, UsageError
from hw2cli.io import atomic_path, save_image, save_safetensors, write_json
from hw2cli.io.atomic import check_output_file, check_output_folder, remove_stale_temporaries


def test_crash_keeps_the_old_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("crash in the middle")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_interrupt_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "img.png"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"\x89PNG partial")
        raise KeyboardInterrupt
    assert list((tmp_path / "sub").iterdir()) == []


def test_image_formats_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    save_image(hwc, tmp_path / "a.png")
    save_image(torch.from_numpy(hwc).permute(2, 0, 1), tmp_path / "b.png")
    save_image(Image.fromarray(hwc), tmp_path / "c.png")
    for name in "abc":
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{name}.png")), hwc)
    with pytest.raises(UsageError, match="cannot tell the image format"):
        save_image(hwc, tmp_path / "a.unknownext")


def test_tensors_roundtrip(tmp_path):
    from safetensors.torch import load_file

    tensors = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    save_safetensors(tensors, tmp_path / "m.safetensors", metadata={"arch": "x"})
    loaded = load_file(tmp_path / "m.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunError, match="cannot write to"):
        write_json(blocker / "out.json", {})


def test_every_output_respects_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "m.safetensors")
        save_image(np.zeros((2, 2, 3), dtype=np.uint8), tmp_path / "i.png")
        write_json(tmp_path / "j.json", {})
    finally:
        os.umask(old)
    for name in ("m.safetensors", "i.png", "j.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".0_001.png.hw2-{dead.pid}-a1b2c3.tmp"
    stale.write_bytes(b"")
    staging = tmp_path / f".data.hw2-{dead.pid}-x9.partial"
    staging.mkdir()
    live = tmp_path / f".0_002.png.hw2-{os.getpid()}-zz.tmp"
    live.write_bytes(b"")
    other = tmp_path / ".notes.tmp"
    other.write_bytes(b"")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([stale.name, staging.name])
    assert live.exists() and other.exists() and not stale.exists() and not staging.exists()


def test_the_first_write_into_a_folder_removes_what_killed_runs_left_there(tmp_path):
    import subprocess
    import sys

    from hw2cli.io import atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "figures"
    folder.mkdir()
    stale = folder / f".grid.png.hw2-{dead.pid}-a1b2c3.tmp"
    stale.write_bytes(b"half an image")
    live = folder / f".x.png.hw2-{os.getpid()}-zz.tmp"  # this process's: it may be writing it
    live.write_bytes(b"")
    save_image(np.zeros((2, 2, 3), dtype=np.uint8), folder / "other.png")
    assert not stale.exists() and live.exists()
    stale.write_bytes(b"")
    write_json(folder / "j.json", {})
    assert stale.exists()  # once per folder and process: a folder of 1,000 images is not listed 1,000 times
    atomic._swept.discard(folder.resolve())
    write_json(folder / "j.json", {})
    assert not stale.exists()


def test_output_paths_are_checked_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for bad, message in (
        (blocker, "is an existing file"),
        (blocker / "sub", "is a file, not a folder"),
        (Path("/proc/hw2-out"), "lies under /proc"),
    ):
        with pytest.raises(UsageError, match=message):
            check_output_folder(bad)
    check_output_folder(tmp_path / "new" / "deeper")  # not made yet, but it can be
    assert not (tmp_path / "new").exists()
    with pytest.raises(UsageError, match="does not end in an image format"):
        check_output_file(tmp_path / "traj.txt", image=True)
    with pytest.raises(UsageError, match="is an existing folder"):
        check_output_file(tmp_path, image=True)
    check_output_file(tmp_path / "fig.webp", image=True)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UsageError, match="is not writable"):
            check_output_folder(locked / "out")


def test_safetensors_with_metadata_are_byte_identical_on_every_save(tmp_path):
    """The safetensors writer keeps metadata in a randomly seeded hash map; hw2 sorts it, so a
    checkpoint (a trained classifier, say) has the same bytes every time."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from hw2cli.io.atomic import save_safetensors

    tensors = {"w": torch.randn(3, 4), "steps": torch.arange(5)}
    metadata = {key: f'value {i} "é"\n' for i, key in enumerate("fedcbazyx")}
    files = [save_safetensors(tensors, tmp_path / f"{i}.safetensors", metadata=metadata) for i in range(5)]
    assert len({f.read_bytes() for f in files}) == 1
    with safe_open(str(files[0]), "pt") as fh:
        assert fh.metadata() == metadata
    loaded = load_file(files[0])
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_files_together_reports_an_error_of_the_block_as_itself(tmp_path):
    """Only the final moves are 'cannot write to the folder'; a file the block could not read is
    that error, and nothing is moved or left behind."""
    from hw2cli.io.atomic import files_together

    with pytest.raises(FileNotFoundError), files_together(tmp_path, ["a.txt", "b.txt"]) as staging:
        (staging / "a.txt").write_text("new")
        (tmp_path / "missing.png").read_bytes()
    assert list(tmp_path.iterdir()) == []


def test_a_dangling_link_and_an_overlong_name_are_refused_up_front(tmp_path):
    dangling = tmp_path / "out"
    dangling.symlink_to(tmp_path / "gone")
    for path in (dangling, dangling / "mnistm"):
        with pytest.raises(UsageError, match=r"is a link to .*gone, which does not exist"):
            check_output_folder(path)
    with pytest.raises(UsageError, match=r"is a link to .*gone, which does not exist"):
        check_output_file(dangling / "fig.png", image=True)
    (tmp_path / "gone").mkdir()
    assert check_output_folder(dangling / "mnistm") == dangling / "mnistm"
    with pytest.raises(UsageError, match="is 300 bytes long, and file systems allow 255"):
        check_output_folder(tmp_path / ("a" * 300))


def test_the_longest_name_a_file_system_takes_is_written_atomically(tmp_path):
    for name in ("n" * 251 + ".png", "é" * 125 + ".png"):  # 255 and 254 bytes: the temporary name is cut, not this
        save_image(torch.zeros(3, 4, 4, dtype=torch.uint8), tmp_path / name)
        assert (tmp_path / name).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["n" * 251 + ".png", "é" * 125 + ".png"])


def test_a_ram_disk_under_dev_is_a_place_for_outputs():
    if Path("/dev/shm").is_dir():
        assert check_output_folder(Path("/dev/shm") / "hw2-out") == Path("/dev/shm") / "hw2-out"
    with pytest.raises(UsageError, match="lies under /dev"):
        check_output_folder(Path("/dev") / "hw2-out")
