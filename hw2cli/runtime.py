"""Device, dtype and seeding: the small runtime facts every command shares.

Imports torch lazily; call these from inside commands, never at module import.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import TYPE_CHECKING, Any

from hw2cli.errors import RunError

if TYPE_CHECKING:
    import torch

# The one dtype table: the names hw2's options and settings use, and torch's
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(name: str) -> torch.dtype:
    """``fp32`` / ``bf16`` / ``fp16`` → the torch dtype."""
    import torch

    return getattr(torch, DTYPES[name])


def resolve_device(name: str | None = None) -> torch.device:
    """``auto`` → CUDA if available, else MPS, else CPU. A device that is not there is an error."""
    import torch

    from hw2cli import settings

    name = name or settings.get().device
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RunError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu.")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise RunError(
                f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)."
            )
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RunError("device 'mps' was asked for but MPS is not available here; use --device cpu.")
    return torch.device(name)


def resolve_dtype(name: str | None = None) -> torch.dtype:
    from hw2cli import settings

    return torch_dtype(name or settings.get().dtype)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


VERSIONED = ("torch", "triton", "diffusers", "transformers", "open_clip_torch", "accelerate", "safetensors", "timm")


def versions() -> dict[str, str]:
    """The one version reporter: Python, platform, and every library whose version changes results."""
    from hw2cli import __version__

    return {"hw2": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
            **{dist: _version(dist) for dist in VERSIONED}}  # fmt: skip


def environment_report() -> dict[str, Any]:
    """Versions, device and kernel backend, for ``hw2 env`` and bug reports."""
    import hw2kernels
    import torch

    from hw2cli import settings

    report: dict[str, Any] = {
        **versions(),
        "torch": torch.__version__,
        "cuda (torch build)": torch.version.cuda or "none",
        "cuda available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        report["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    current = settings.get()
    try:
        report["device"] = str(resolve_device(current.device))
    except RunError as exc:
        report["device"] = f"unavailable ({exc})"
    ok, reason = hw2kernels.triton_status()
    report["kernels setting"] = current.kernels
    report["triton kernels"] = "can run" if ok else f"cannot run ({reason})"
    device_type = report["device"].split(":")[0]
    report["kernel backend in use"] = hw2kernels.resolve_backend(current.kernels, device_type=device_type)
    if current.kernels == "auto" and device_type == "cuda" and ok:
        for v in hw2kernels.self_check(report["device"]):  # the first-call check, made now for each op
            key = f"auto: {v['op']} {v['dtype']} ({v['shape_class']})"
            report[key] = v["path"] + (f" ({v['reason']})" if v["reason"] else "")
    else:
        for op in ("group_norm", "attention"):
            report[f"auto: {op}"] = "PyTorch reference" + ("" if device_type == "cuda" else " (no CUDA device)")
    return report


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _kernel_warning(message: str) -> None:
    from hw2cli import ui

    ui.warn(message)


def setup(device: str | None = None) -> tuple[torch.device, torch.dtype]:
    """What every torch-using command does first: pick the device and dtype from the settings and
    point ``hw2kernels`` at the configured backend."""
    import hw2kernels

    from hw2cli import settings

    current = settings.get()
    hw2kernels.set_default_backend(current.kernels)
    hw2kernels.set_warning_handler(_kernel_warning)
    if current.kernels == "triton":
        ok, reason = hw2kernels.triton_status()
        if not ok:
            raise RunError(f"--kernels triton was asked for but the Triton kernels cannot run here: {reason}.")
    return resolve_device(device), resolve_dtype()


def other_rank() -> int | None:
    """This process's rank in a multi-process launch (``torchrun`` and ``accelerate launch`` set
    ``RANK`` and a ``WORLD_SIZE`` above 1) when it is not the first, else ``None``. Status,
    warning and result lines are the first process's to print, once; the others print only
    their errors, marked with their rank."""
    rank, world = os.environ.get("RANK", ""), os.environ.get("WORLD_SIZE", "")
    if not (rank.isdigit() and world.isdigit() and int(world) > 1):  # a RANK alone is some scheduler's
        return None
    return int(rank) if int(rank) > 0 else None
