"""The prepared GPU run works end to end on this CPU (``--dry-run``), so the GPU run needs no editing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_suite_dry_run_goes_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HW2_")}
    env |= {"OMP_NUM_THREADS": "1", "HW2_WEIGHTS_DIR": str(tmp_path / "cache"), "PYTHON": sys.executable}
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(tmp_path / "out"), "--dry-run",
           "--bundle", str(tmp_path / "bundle")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    suite = json.loads((tmp_path / "out" / "suite.json").read_text())
    steps = {s["step"]: s for s in suite["steps"]}
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_suite
    finally:
        sys.path.pop(0)
    assert list(steps) == [name for name, _ in gpu_suite.STEPS]
    assert all(s["status"] in ("ok", "skipped") for s in steps.values()), steps
    assert steps["cuda_tests"]["status"] == "skipped" and "need CUDA" in steps["cuda_tests"]["skipped"]
    for name in ("kernels_bf16", "generate", "train", "sample_face_bf16"):
        assert steps[name]["status"] == "ok" and steps[name]["rows"], name
    eager = next(r for r in steps["kernels_bf16"]["rows"] if r["path"] == "eager")
    assert eager["ms"] > 0 and eager["gbps"] > 0
    triton = next(r for r in steps["kernels_bf16"]["rows"] if r["path"] == "triton")
    assert triton["ms"] is None and triton["note"].startswith("not measured")  # never a number for the interpreter
    table = (tmp_path / "out" / "suite.md").read_text()
    assert table.count("\n| ") >= 10 and "| step | status |" in table
    # what comes back from the device machine (at most eight files): the table, the JSON, one archive
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == [
        "choices.json",
        "suite-files.tar.gz",
        "suite.json",
        "suite.md",
    ]
    # auto's table in kernels/choices.json's format; on a CPU nothing is measured, so nothing is chosen
    chosen = json.loads((tmp_path / "bundle" / "choices.json").read_text())
    shipped = json.loads((ROOT / "kernels" / "choices.json").read_text())
    assert chosen.keys() == shipped.keys() and chosen["choices"] == {} and "cpu (dry run)" in chosen["measured"]
    assert (tmp_path / "bundle" / "suite.md").read_text() == table
    with tarfile.open(tmp_path / "bundle" / "suite-files.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"out/steps/{name}.json" for name in steps if steps[name]["status"] == "ok"} <= names, names


def test_the_bundle_may_not_lie_inside_the_suite_folder(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), str(tmp_path / "out"), "--dry-run",
           "--bundle", str(tmp_path / "out" / "b")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "is inside OUTDIR" in proc.stderr
    assert not (tmp_path / "out").exists()


def _image_packages() -> set[str]:
    lines = (ROOT / "benchmarks" / "gpu_image_packages.txt").read_text().splitlines()
    return {canonicalize_name(line) for line in lines if line.strip() and not line.startswith("#")}


def test_the_gpu_wheels_carry_every_dependency_the_gpu_image_lacks():
    """Walk hw2's requirements as pip would on the GPU machine (Python 3.12, Linux): a distribution
    the image has stops the walk (its own needs are met there); one it lacks must travel in .whl/."""
    image = _image_packages()
    assert {"torch", "triton", "transformers", "accelerate", "safetensors", "timm"} <= image
    marker_env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                  "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}  # fmt: skip
    needed, todo = set(), ["hw2"]
    while todo:
        for text in metadata.distribution(todo.pop()).requires or []:
            req = Requirement(text)
            name = canonicalize_name(req.name)
            if (req.marker and not req.marker.evaluate(marker_env)) or name in image or name in needed:
                continue
            needed.add(name)
            todo.append(name)
    listed = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_wheels.sh"), "--list"], capture_output=True,
                            text=True, check=True).stdout.split()  # fmt: skip
    carried = {canonicalize_name(Requirement(spec).name) for spec in listed}
    assert {"diffusers", "pydantic-settings", "open-clip-torch"} <= needed
    assert needed <= carried, f"add to benchmarks/gpu_wheels.sh: {sorted(needed - carried)}"


def test_the_suite_without_hw2_or_wheels_says_what_to_run(tmp_path):
    # a checkout with no .whl/, run by an interpreter that has no hw2 (this venv's base Python)
    (tmp_path / "benchmarks").mkdir()
    for name in ("gpu_suite.sh", "gpu_suite.py"):
        shutil.copy(ROOT / "benchmarks" / name, tmp_path / "benchmarks" / name)
    base = Path(sys.base_prefix) / "bin" / "python3"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {"PYTHON": str(base)}
    proc = subprocess.run(["bash", str(tmp_path / "benchmarks" / "gpu_suite.sh"), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "hw2 is not importable" in proc.stderr and "run benchmarks/gpu_wheels.sh first" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the suite measures instead")
def test_the_gpu_suite_refuses_to_measure_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "no CUDA device here; use --dry-run" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the cuda tests run for real")
def test_the_cuda_test_step_streams_its_log_and_counts(tmp_path, monkeypatch):
    # without CUDA every cuda test skips: the step's own mechanics (log, counts, summary) are what is checked
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_suite
    finally:
        sys.path.pop(0)
    monkeypatch.setenv("HW2_SUITE_STEP_SECONDS", "300")
    result = gpu_suite.step_cuda_tests(False, tmp_path)
    log = (tmp_path / "cuda_tests.log").read_text()
    collected = int(re.search(r"(\d+) skipped", log).group(1))
    assert result["returncode"] == 0 and result["summary"].endswith(
        f"{collected} skipped in " + result["summary"].split(" in ")[-1]
    )
    assert collected >= 100 and result["passed"] == result["failed"] == result["errors"] == 0
    assert (tmp_path / "cuda_tests.xml").is_file()
