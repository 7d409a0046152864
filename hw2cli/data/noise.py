"""The homework's noise files (``hw2_data/face/noise/00.pt`` …): read safely and checked.

Each file is a float tensor of shape ``[1, 3, H, W]`` (``[3, H, W]`` is accepted), read with
``torch.load(weights_only=True)``; anything else is one sentence naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from hw2cli.errors import UsageError
from hw2cli.io.checkpoints import torch_load


def load_noise_file(path: str | Path) -> torch.Tensor:
    """A noise file as ``[1, 3, H, W]`` float32; any other content is an error naming the file."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not a noise file; pass a .pt file of shape [1, 3, H, W].")
    if not path.is_file():
        raise UsageError(f"noise file {path} does not exist.")
    obj = torch_load(path, "a tensor file")
    if not isinstance(obj, torch.Tensor):
        raise UsageError(f"{path} holds a {type(obj).__name__}, not a tensor of shape [1, 3, H, W].")
    if obj.ndim == 3:
        obj = obj[None]
    if obj.ndim != 4 or obj.shape[0] != 1 or obj.shape[1] != 3:
        raise UsageError(f"{path} has shape {list(obj.shape)}; expected [1, 3, H, W] or [3, H, W].")
    if not obj.is_floating_point():
        raise UsageError(f"{path} holds {obj.dtype} values; expected floating-point noise.")
    if not torch.isfinite(obj).all():
        raise UsageError(f"{path} holds NaN or infinite values; noise must be finite.")
    peak = float(obj.abs().max()) if obj.numel() else 0.0
    if peak > 1e4:  # standard normal noise stays within about ±6; this would overflow into NaN images
        raise UsageError(
            f"{path} holds values up to {peak:.3g}; DDIM starts from standard normal noise (within about ±6)."
        )
    return obj.float()


def load_noise_dir(folder: str | Path) -> tuple[list[str], torch.Tensor]:
    """Every ``*.pt`` file in ``folder`` (folders so named are skipped), sorted by name, stacked to ``[N, 3, H, W]``."""
    folder = Path(folder)
    if folder.is_file():
        raise UsageError(f"the noise folder {folder} is a file; pass the folder holding 00.pt, 01.pt, ...")
    if not folder.is_dir():
        raise UsageError(f"the noise folder {folder} does not exist.")
    files = sorted(f for f in folder.glob("*.pt") if not f.is_dir())
    if not files:
        raise UsageError(f"{folder} holds no .pt noise files.")
    return [f.stem for f in files], stack_noise(files)


def stack_noise(files: Sequence[Path]) -> torch.Tensor:
    tensors = [load_noise_file(f) for f in files]
    for f, t in zip(files, tensors, strict=True):
        if t.shape != tensors[0].shape:
            raise UsageError(
                f"{f.name} is {t.shape[-2]}×{t.shape[-1]} but {files[0].name} is "
                f"{tensors[0].shape[-2]}×{tensors[0].shape[-1]}; one batch needs one size."
            )
    return torch.cat(tensors)


def seeded_noise(n: int, side: int, seed: int) -> torch.Tensor:
    return torch.randn((n, 3, side, side), generator=torch.Generator().manual_seed(seed))
