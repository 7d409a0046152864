"""Tensor ↔ image conversions and report figures (grids with row/column labels)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hw2cli.io.atomic import atomic_path, save_image


def to_uint8(x: torch.Tensor, data_range: tuple[float, float] = (-1.0, 1.0), mode: str = "clip") -> torch.Tensor:
    """``[B, C, H, W]`` floats → uint8 on the CPU.

    ``clip``: map ``data_range`` to 0..255 and clamp. ``minmax``: per image, ``(x − min)/(max − min)``
    (what every passing P2 solution saved). Rounds as ``floor(v·255 + 0.5)``.
    """
    x = x.detach().float().cpu()
    if mode == "minmax":
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        v = (x - lo) / (hi - lo).clamp_min(1e-12)
    elif mode == "clip":
        lo_r, hi_r = data_range
        v = ((x - lo_r) / (hi_r - lo_r)).clamp(0, 1)
    else:
        raise ValueError(f"mode must be 'clip' or 'minmax', got {mode!r}")
    return torch.floor(v * 255 + 0.5).clamp(0, 255).to(torch.uint8)


def make_grid(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: int = 255) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` → one uint8 ``[C, H', W']`` grid with ``nrow`` images per row."""
    from torchvision.utils import make_grid as tv_make_grid

    return tv_make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, padding: int = 2) -> Path:
    return save_image(make_grid(images, nrow, padding), path)


def labelled_grid(
    images: torch.Tensor,
    path: str | Path,
    *,
    rows: Sequence[str],
    cols: Sequence[str] | None = None,
    title: str | None = None,
    row_title: str | None = None,
    col_title: str | None = None,
    cell_inches: float = 0.6,
    dpi: int = 150,
) -> Path:
    """A report-ready PNG: ``images`` uint8 ``[len(rows)·len(cols), C, H, W]`` in row-major order,
    each row and column labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows = len(rows)
    n_cols = images.shape[0] // n_rows
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(cell_inches * n_cols + 1.2, cell_inches * n_rows + (0.7 if title else 0.3)),
        squeeze=False,
    )
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            img = images[r * n_cols + c].permute(1, 2, 0).numpy()
            ax.imshow(img if img.shape[2] == 3 else img[:, :, 0], cmap=None if img.shape[2] == 3 else "gray")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                ax.set_ylabel(rows[r], rotation=0, ha="right", va="center", fontsize=8)
            if r == 0 and cols is not None:
                ax.set_title(cols[c], fontsize=8)
    if row_title:
        fig.supylabel(row_title, fontsize=9)
    if col_title:
        fig.supxlabel(col_title, fontsize=9)
    if title:
        import textwrap

        # about 13 characters per inch at 10 pt: wrap rather than run off a narrow figure
        width_chars = max(20, int(fig.get_figwidth() * 13))
        fig.suptitle(textwrap.fill(title, width_chars), fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)


def captioned_rows(
    rows: Sequence[tuple[str, str, Sequence[tuple[str | Path, str]]]], path: str | Path, *, title: str = ""
) -> Path:
    """A report-ready PNG of captioned image files, one row per ``(label, colour, [(file, caption), …])``:
    each image framed and captioned in the row's colour, the label on the left; an empty row says
    ``no <label> examples``. (CLIP's correct / incorrect predictions.)"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    cols = max(1, *(len(items) for _, _, items in rows))
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols + 0.8, 3.2 * len(rows)), squeeze=False)
    for r, (label, colour, items) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(items):
                ax.axis("off")
                if c == 0:
                    ax.text(0.5, 0.5, f"no {label} examples", ha="center", va="center", fontsize=8)
                continue
            file, caption = items[c]
            with Image.open(file) as im:
                ax.imshow(im.convert("RGB"))
            ax.set_title(caption, fontsize=8, color=colour)
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as an ``H×W×3`` uint8 array (as the graders open them: ``convert('RGB')``)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
