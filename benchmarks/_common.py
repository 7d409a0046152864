"""Shared helpers for the benchmark scripts: timing, environment facts, result files."""

from __future__ import annotations

import datetime as _dt
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def median_time(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs (whole
    commands and loops, timed by ``hw2cli.tasks.bench.run_times_ms``; kernels by ``kernel_ms``)."""
    from hw2cli.tasks.bench import run_times_ms

    times = [ms / 1000 for ms in run_times_ms(fn, repeats=repeats, warmup=warmup)]
    return statistics.median(times), times


def machine() -> dict[str, Any]:
    """hw2's own version report plus the date, CPU count and device."""
    import os

    import torch

    from hw2cli.runtime import versions

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        **versions(),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path
