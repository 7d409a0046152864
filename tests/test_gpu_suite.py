"""The prepared GPU run works end to end on this CPU (``--dry-run``), so the GPU run needs no editing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_suite_dry_run_goes_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HW2_")}
    env |= {"OMP_NUM_THREADS": "1", "HW2_WEIGHTS_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(tmp_path / "out"), "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the suite measures instead")
def test_the_gpu_suite_refuses_to_measure_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "no CUDA device here; use --dry-run" in proc.stderr
