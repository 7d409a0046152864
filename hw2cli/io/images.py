"""Tensor ↔ image conversions and report figures (grids with row/column labels)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class GridLayout:
    """Where :func:`labelled_grid` puts things, in figure pixels from the top left."""

    width: int
    height: int
    boxes: list[tuple[int, int, int, int]]  # (left, top, right, bottom) of each image, row-major
    scale: int  # figure pixels per image pixel
    title_lines: list[str]


def png_metadata() -> dict[str, str]:
    """What a figure records of its making: hw2's version and, under the CLI, the command line."""
    from hw2cli import __version__, ui

    command = ui.command_line()
    return {"Software": f"hw2 {__version__}", **({"Description": command} if command else {})}


# fonts that draw what DejaVu Sans (matplotlib's own) does not: CJK and other scripts, on Linux,
# macOS and Windows; those installed are matplotlib's fallbacks after DejaVu Sans, in this order
FALLBACK_FONTS = (
    "Noto Sans CJK TC", "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK KR", "Source Han Sans TW",
    "Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "PingFang TC",
    "PingFang SC", "Hiragino Sans", "Heiti TC", "Microsoft JhengHei", "Microsoft YaHei", "Yu Gothic",
    "Malgun Gothic", "Apple SD Gothic Neo", "Arial Unicode MS", "Noto Sans", "Noto Sans Symbols",
    "Noto Sans Symbols 2",
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def _fonts() -> frozenset[int]:
    """Make every installed font of :data:`FALLBACK_FONTS` a fallback of DejaVu Sans for hw2's
    figures (matplotlib draws a character the first font lacks with the next that has it), and
    return the code points they draw together. Matplotlib's own one warning per missing glyph and
    drawing call is silenced: :func:`check_drawable` says it once, in words."""
    import warnings

    import matplotlib
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    installed: dict[str, str] = {}
    for entry in font_manager.fontManager.ttflist:
        installed.setdefault(entry.name, entry.fname)
    families = ["DejaVu Sans", *(name for name in FALLBACK_FONTS if name in installed)]
    matplotlib.rcParams["font.family"] = families  # named one by one: a generic name expands to one font only
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
    drawn: set[int] = set()
    for name in families:
        path = installed.get(name) or font_manager.findfont(name)
        try:
            drawn.update(FT2Font(path).get_charmap())
        except (OSError, RuntimeError, ValueError):  # a font file matplotlib listed but cannot open
            continue
    return frozenset(drawn)


def check_drawable(*texts: str | None) -> None:
    """Warn once, in words, when figure text holds characters no installed font draws (they come
    out as empty boxes): which ones, and what to install."""
    import warnings

    drawn = _fonts()
    missing = sorted({ch for text in texts if text for ch in text if not ch.isspace() and ord(ch) not in drawn})
    if missing:
        shown = "".join(missing[:12]) + ("…" if len(missing) > 12 else "")
        they = "it shows" if len(missing) == 1 else "they show"
        warnings.warn(
            f"no installed font draws {shown} (in a figure's text), so {they} as empty boxes; install a font "
            "that has them (for Chinese, Japanese or Korean: Noto Sans CJK, 'fonts-noto-cjk' on Debian and "
            "Ubuntu) and draw the figure again.",
            UserWarning,
            stacklevel=3,
        )


@functools.lru_cache(maxsize=4)
def _renderer(dpi: int) -> Any:
    from matplotlib.backends.backend_agg import RendererAgg

    _fonts()
    return RendererAgg(1, 1, dpi)


def _text_size(text: str, points: float, dpi: int) -> tuple[float, float]:
    """Width and height in pixels of one line of ``text`` as matplotlib draws it."""
    from matplotlib.font_manager import FontProperties

    if not text:
        return 0.0, 0.0
    w, h, _ = _renderer(dpi).get_text_width_height_descent(text, FontProperties(size=points), ismath=False)
    return w, h


def _wrap(text: str, points: float, dpi: int, width: float) -> list[str]:
    """Greedy word wrap of ``text`` into lines at most ``width`` pixels wide (a long word stays whole)."""
    lines: list[str] = []
    text = text.replace(" = ", "\u00a0=\u00a0")  # "η = 0" stays on one line
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and _text_size(trial, points, dpi)[0] > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


LABEL_PT, TITLE_PT, PAD = 8, 10, 10


def in_rows(images: Sequence[torch.Tensor], per_row: int, first: int = 0) -> tuple[list[torch.Tensor], list[str]]:
    """``images`` in rows of ``per_row`` for :func:`labelled_grid`: the last row filled with white,
    and each row's label naming the numbers of the images it holds ("0–4", "10"), the first
    image numbered ``first``."""
    tiles, labels = list(images), []
    for start in range(0, len(tiles), per_row):
        a, b = first + start, first + min(start + per_row, len(images)) - 1
        labels.append(str(a) if a == b else f"{a}–{b}")
    tiles += [torch.full_like(tiles[0], 255)] * (-len(tiles) % per_row)
    return tiles, labels


def grid_layout(
    n_rows: int,
    n_cols: int,
    image_size: tuple[int, int],
    *,
    rows: Sequence[str],
    cols: Sequence[str] | None = None,
    title: str | None = None,
    row_title: str | None = None,
    col_title: str | None = None,
    scale: int | None = None,
    dpi: int = 150,
) -> GridLayout:
    """The pixel layout of a labelled grid of ``n_rows`` × ``n_cols`` images of ``image_size``
    (H, W). ``scale`` defaults to the smallest whole number that draws an image at least 80
    pixels tall (3 for 28×28 digits, 1 for 256² faces), or wide enough for the widest column label."""
    h0, w0 = image_size
    widest = max((_text_size(c, LABEL_PT, dpi)[0] for c in cols or ()), default=0.0) + 6  # a column label
    if scale is None:  # at least 80 pixels tall, and as wide as the widest column label (up to 4× the 80)
        scale = max(1, -(-80 // h0), min(-(-int(widest) // w0), -(-320 // w0)))
    h, w = h0 * scale, w0 * scale
    gap = max(4, round(0.03 * h), int(widest) - w)  # labels wider than their image never touch
    line = _text_size("Ag", LABEL_PT, dpi)[1]
    left = PAD + max((_text_size(r, LABEL_PT, dpi)[0] for r in rows), default=0) + 8
    if row_title:
        left += _text_size(row_title, LABEL_PT + 1, dpi)[1] + PAD
    left = max(left, PAD + (widest - w) / 2)  # the first column label's overhang stays inside
    grid_w = n_cols * w + (n_cols - 1) * gap
    natural = int(round(left)) + grid_w + PAD + max(0, (int(widest) - w + 1) // 2)  # the last label's overhang
    # a title wider than the grid widens the figure (up to 4 inches) and the grid sits in the middle
    width = max(natural, min(int(_text_size(title or "", TITLE_PT, dpi)[0]) + 2 * PAD, 4 * dpi))
    left += (width - natural) // 2
    title_lines = _wrap(title, TITLE_PT, dpi, width - 2 * PAD) if title else []
    if title_lines:  # matplotlib spaces lines 1.3 font sizes apart
        pitch = 1.3 * TITLE_PT * dpi / 72
        top = 2 * PAD + _text_size("Ag", TITLE_PT, dpi)[1] + (len(title_lines) - 1) * pitch
    else:
        top = PAD
    top += line + 6 if cols is not None else 0
    grid_h = n_rows * h + (n_rows - 1) * gap
    bottom = PAD + (_text_size(col_title, LABEL_PT + 1, dpi)[1] + PAD if col_title else 0)
    x0, y0 = int(round(left)), int(round(top))
    boxes = [
        (x0 + c * (w + gap), y0 + r * (h + gap), x0 + c * (w + gap) + w, y0 + r * (h + gap) + h)
        for r in range(n_rows)
        for c in range(n_cols)
    ]
    return GridLayout(width, y0 + grid_h + int(round(bottom)), boxes, scale, title_lines)


def labelled_grid(
    images: torch.Tensor,
    path: str | Path,
    *,
    rows: Sequence[str],
    cols: Sequence[str] | None = None,
    title: str | None = None,
    row_title: str | None = None,
    col_title: str | None = None,
    scale: int | None = None,
    dpi: int = 150,
) -> Path:
    """A report-ready PNG: ``images`` uint8 ``[len(rows)·len(cols), C, H, W]`` in row-major order,
    each row and column labelled. Every image is drawn pixel for pixel, each of its pixels a
    ``scale`` × ``scale`` block (see :func:`grid_layout`): no resampling filter blurs a 28×28
    digit, no 256² face loses resolution, and equal images look equal wherever they sit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_drawable(title, row_title, col_title, *rows, *(cols or ()))
    n_rows = len(rows)
    n_cols = images.shape[0] // n_rows
    layout = grid_layout(
        n_rows, n_cols, tuple(images.shape[-2:]), rows=rows, cols=cols, title=title,
        row_title=row_title, col_title=col_title, scale=scale, dpi=dpi,
    )  # fmt: skip
    canvas = np.full((layout.height, layout.width, 3), 255, dtype=np.uint8)
    k = layout.scale
    for image, (x0, y0, x1, y1) in zip(images, layout.boxes, strict=True):
        array = image.permute(1, 2, 0).numpy()
        if array.shape[2] == 1:
            array = np.repeat(array, 3, axis=2)
        canvas[y0:y1, x0:x1] = array.repeat(k, axis=0).repeat(k, axis=1)
    fig = plt.figure(figsize=(layout.width / dpi, layout.height / dpi), dpi=dpi)
    fig.figimage(canvas, 0, 0, origin="upper", resize=False)

    def text(x: float, y: float, s: str, **kw: Any) -> None:  # pixel coordinates from the top left
        fig.text(x / layout.width, 1 - y / layout.height, s, **kw)

    first = layout.boxes[0]
    for r, label in enumerate(rows):
        _, top, _, bottom = layout.boxes[r * n_cols]
        text(first[0] - 8, (top + bottom) / 2, label, ha="right", va="center", fontsize=LABEL_PT)
    if cols is not None:
        for c, label in enumerate(cols):
            x0, top, x1, _ = layout.boxes[c]
            text((x0 + x1) / 2, top - 6, label, ha="center", va="baseline", fontsize=LABEL_PT)
    grid_bottom = layout.boxes[-1][3]
    if row_title:
        text(PAD, (first[1] + grid_bottom) / 2, row_title, ha="left", va="center", rotation=90, fontsize=LABEL_PT + 1)
    if col_title:
        text((first[0] + layout.boxes[-1][2]) / 2, grid_bottom + PAD, col_title, ha="center", va="top",
             fontsize=LABEL_PT + 1)  # fmt: skip
    if layout.title_lines:
        text(layout.width / 2, PAD, "\n".join(layout.title_lines), ha="center", va="top", fontsize=TITLE_PT,
             linespacing=1.3)  # fmt: skip
    return save_figure(fig, path, dpi)


def captioned_rows(
    rows: Sequence[tuple[str, str, Sequence[tuple[str | Path, str]]]],
    path: str | Path,
    *,
    title: str = "",
    per_line: int = 5,
) -> Path:
    """A report-ready PNG of captioned image files, one row per ``(label, colour, [(file, caption), …])``:
    each image framed and captioned in the row's colour, the label on the left; an empty row says
    ``no <label> examples``; a row of more than ``per_line`` images goes on over several lines
    (the figure stays page-wide). (CLIP's correct / incorrect predictions.)"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    check_drawable(title, *(label for label, _, _ in rows), *(caption for _, _, items in rows for _, caption in items))
    rows = [
        (label if start == 0 else "", colour, items[start : start + per_line])
        for label, colour, items in rows
        for start in (range(0, len(items), per_line) if items else [0])
    ]
    cols = max(1, *(len(items) for _, _, items in rows))
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols + 0.8, 3.2 * len(rows)), squeeze=False)
    for r, (label, colour, items) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(items):
                ax.axis("off")
                if c == 0 and not items:
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
    top = 1.0
    if title:
        lines = _wrap(title, 9, 120, fig.get_figwidth() * 120 - 2 * PAD)
        fig.suptitle("\n".join(lines), fontsize=9)
        top = 1 - (len(lines) * 9 * 1.4 / 72 + 0.15) / fig.get_figheight()  # the axes start below the title
    fig.tight_layout(rect=(0, 0, 1, top))
    return save_figure(fig, path, 120)


def save_figure(fig: Any, path: str | Path, dpi: int) -> Path:
    """Write a matplotlib figure atomically in the format its name asks for (.png keeps the
    metadata of :func:`png_metadata`; another image suffix is converted by Pillow), then close it."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata=png_metadata())
    plt.close(fig)
    if Path(path).suffix.lower() == ".png":
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
        return Path(path)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return save_image(image.convert("RGB"), path)


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as an ``H×W×3`` uint8 array (as the graders open them: ``convert('RGB')``)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
