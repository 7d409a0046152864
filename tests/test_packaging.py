"""What a user installs: the wheel and the sdist built from the tracked files hold what they must.

CI installs the checkout in editable mode, where every file is found in place; a wheel holds only
what pyproject.toml's package data names, so a forgotten pattern (a new assets folder) would ship
a broken install while every other test stays green.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout: the tracked files are what is packaged")
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A copy of the tracked tree, with an assets subfolder added as a later release would
    (learned embeddings), built into a wheel and an sdist by setuptools' own PEP 517 backend."""
    src = tmp_path_factory.mktemp("src")
    files = tracked_files()
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    planted = ["hw2cli/assets/embeddings/embeddings.json", "hw2cli/assets/embeddings/new1/learned_embeds.safetensors"]
    for name in planted:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"{}")
    dist = tmp_path_factory.mktemp("dist")  # outside the tree, which the sdist is made of
    for kind in ("sdist", "wheel"):  # one process each: setuptools keeps state between two builds
        code = f"import sys; from setuptools import build_meta; build_meta.build_{kind}(sys.argv[1])"
        proc = subprocess.run([sys.executable, "-c", code, str(dist)], cwd=src, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,), (sdist,) = dist.glob("*.whl"), dist.glob("*.tar.gz")
    return files, planted, wheel, sdist


def test_the_wheel_holds_every_tracked_asset_and_any_new_assets_folder(built):
    files, planted, wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [f for f in files if f.startswith("hw2cli/") and not f.endswith(".py")] + planted
    wanted += [f"hw2kernels/{f.removeprefix('kernels/')}" for f in files if f.startswith("kernels/")]
    assert wanted and [f for f in wanted if f not in names] == []
    assert [f for f in files if f.startswith("hw2cli/") and f.endswith(".py") and f not in names] == []


def test_the_wheel_carries_its_licence(built):
    _, _, wheel, _ = built
    with zipfile.ZipFile(wheel) as whl:
        info = next(n.split("/")[0] for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(f"{info}/METADATA").decode()
        licence = whl.read(f"{info}/licenses/LICENSE").decode()
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    from hw2cli import __version__

    assert f"\nVersion: {__version__}\n" in metadata and wheel.name.startswith(f"hw2-{__version__}-")
    assert licence == (ROOT / "LICENSE").read_text() and licence.startswith("MIT License")


def test_the_sdist_holds_a_test_suite_that_can_run_and_the_graded_scripts(built):
    files, _, _, sdist = built
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    wanted = [f for f in files if f.startswith(("tests/", "scripts/", "hw2cli/", "kernels/"))] + ["LICENSE"]
    wanted += [f for f in files if f.startswith("benchmarks/") and not f.startswith("benchmarks/results/")]
    assert [f for f in wanted if f not in names] == []
    assert "tests/conftest.py" in names and "scripts/_hw2.sh" in names
