"""Synthetic MNIST-M and SVHN look-alikes, written in the homework's folder layout.

``synthesize(OUT)`` writes ``OUT/digits/<dataset>/data/NNNNN.png`` (28x28 RGB), ``train.csv`` and
``val.csv`` (header ``image_name,label``) for ``mnistm`` and ``svhn``, so every task can run
without the course's download.

How the images are made:

* Glyphs: the digits 0-9 of the TTF fonts bundled with matplotlib (DejaVu, STIX, Computer
  Modern), at several stroke widths, pre-rendered once into a small atlas.
* Each image samples one glyph through a random affine map (rotation, scale, shear,
  aspect, translation) plus a smooth random elastic displacement field, in batches with
  ``affine_grid`` / ``grid_sample`` at twice the output size, then 2x2 average-pooled.
* MNIST-M: ``|texture - digit|`` with a procedural colour texture (multi-octave noise in
  random colours, gradients, stripes, hard region edges, grain), as MNIST-M blends MNIST
  digits with BSDS500 photo crops.
* SVHN: a house-number crop: the digit centred, neighbouring digits of the same font cut by
  the left/right edges, a foreground and a background colour (either polarity), a plate edge,
  shading, blur and sensor noise.

Everything random comes from generators seeded by ``(seed, dataset, batch)``, so two runs with
the same arguments write byte-identical files. The core never prints; it reports progress
through ``on_progress(n_images_written)``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hw2cli.data import DATASETS
from hw2cli.data.layout import val_mask, write_digit_folder
from hw2cli.errors import RunError, UsageError

SIZE = 28
_DATASET_CODE = {"mnistm": 1, "svhn": 2}
_BATCH = 500
_SUPER = 2  # render at 2x and average-pool: cheap anti-aliasing
_ATLAS = 64  # atlas cell size in pixels
_GLYPH_HEIGHT = 40  # glyph height inside a cell, in pixels
_FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmb10.ttf",
)
_STROKES = (0, 1, 2)  # Pillow stroke widths at the render size (about 50 px per glyph)


# --------------------------------------------------------------------------- glyph atlas


class _Atlas:
    """``images``: [G, 1, 64, 64] white-on-black glyphs; ``index[font, stroke, digit]`` -> row;
    ``width``: each glyph's width in the cell's normalized coordinates ([-1, 1] spans 64 px)."""

    def __init__(self, images: torch.Tensor, index: torch.Tensor, width: torch.Tensor) -> None:
        self.images = images
        self.index = index
        self.width = width
        self.n_fonts, self.n_strokes, _ = index.shape


@functools.lru_cache(maxsize=1)
def _atlas() -> _Atlas:
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    cells: list[np.ndarray] = []
    widths: list[float] = []
    per_font: list[list[list[int]]] = []
    for name in _FONT_FILES:
        path = font_dir / name
        if not path.is_file():
            continue
        try:
            font = ImageFont.truetype(str(path), 52)
        except OSError:
            continue
        rows: list[list[int]] = []
        ok = True
        for stroke in _STROKES:
            row = []
            for digit in range(10):
                canvas = Image.new("L", (128, 128), 0)
                ImageDraw.Draw(canvas).text(
                    (24, 16), str(digit), font=font, fill=255, stroke_width=stroke, stroke_fill=255
                )
                box = canvas.getbbox()
                if box is None or box[3] - box[1] < 20:  # the font has no proper digit glyphs
                    ok = False
                    break
                glyph = canvas.crop(box)
                w, h = glyph.size
                new_w = max(1, min(_ATLAS - 4, round(w * _GLYPH_HEIGHT / h)))
                glyph = glyph.resize((new_w, _GLYPH_HEIGHT), Image.LANCZOS)
                cell = Image.new("L", (_ATLAS, _ATLAS), 0)
                cell.paste(glyph, ((_ATLAS - new_w) // 2, (_ATLAS - _GLYPH_HEIGHT) // 2))
                row.append(len(cells))
                cells.append(np.asarray(cell, dtype=np.float32) / 255.0)
                widths.append(2.0 * new_w / _ATLAS)
            if not ok:
                break
            rows.append(row)
        if ok:
            per_font.append(rows)
        else:  # drop the cells this font added
            keep = sum(len(r) for rows_ in per_font for r in rows_)
            del cells[keep:], widths[keep:]
    if not per_font:
        raise RunError(f"no usable digit fonts found in {font_dir}; reinstall matplotlib.")
    images = torch.from_numpy(np.stack(cells))[:, None]
    return _Atlas(images, torch.tensor(per_font, dtype=torch.long), torch.tensor(widths))


# --------------------------------------------------------------------------- random helpers


def _u(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _coords(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in [-1, 1] (x, y), each [1, 1, size, size]."""
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(t, t, indexing="ij")
    return x[None, None], y[None, None]


def _smooth_noise(g: torch.Generator, n: int, channels: int, res: int, size: int) -> torch.Tensor:
    noise = torch.randn(n, channels, res, res, generator=g)
    return F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)


def _octaves(g: torch.Generator, n: int, channels: int, size: int, persistence: torch.Tensor) -> torch.Tensor:
    """Multi-octave smooth noise normalized to unit std per image; ``persistence`` is [n]."""
    out = torch.zeros(n, channels, size, size)
    amp = torch.ones(n, 1, 1, 1)
    for res in (2, 3, 5, 8, 14, 28):
        out += amp * _smooth_noise(g, n, channels, res, size)
        amp = amp * persistence.view(n, 1, 1, 1)
    return out / out.flatten(1).std(dim=1).clamp_min(1e-6).view(n, 1, 1, 1)


# Hues of natural and built scenes (sky, foliage, bark, sand, brick, stone, water, skin, paint);
# about one colour in seven gets a uniformly random hue instead.
_PALETTE = torch.tensor(
    [
        [0.53, 0.70, 0.90],
        [0.35, 0.55, 0.20],
        [0.20, 0.35, 0.15],
        [0.45, 0.32, 0.20],
        [0.85, 0.75, 0.55],
        [0.65, 0.30, 0.22],
        [0.55, 0.55, 0.50],
        [0.15, 0.35, 0.50],
        [0.90, 0.70, 0.58],
        [0.80, 0.45, 0.15],
        [0.10, 0.15, 0.35],
        [0.90, 0.80, 0.20],
        [0.75, 0.10, 0.10],
        [0.20, 0.45, 0.35],
    ]
)


def _rand_colour(g: torch.Generator, n: int, lum: torch.Tensor, sat: torch.Tensor) -> torch.Tensor:
    """[n, 3, 1, 1] colours of luminance about ``lum`` and saturation about ``sat``."""
    palette = _PALETTE[torch.randint(len(_PALETTE), (n,), generator=g)]
    random = torch.rand(n, 3, generator=g)
    use_random = (torch.rand(n, generator=g) < 0.15).view(n, 1)
    chroma = torch.where(use_random, random, palette + 0.08 * torch.randn(n, 3, generator=g))
    chroma = chroma - chroma.mean(dim=1, keepdim=True)
    chroma = chroma / chroma.abs().amax(dim=1, keepdim=True).clamp_min(1e-6)
    return (lum[:, None] + sat[:, None] * chroma).clamp(0, 1).view(n, 3, 1, 1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (separable, 7 taps); ``sigma`` is [n]."""
    n, c, h, w = x.shape
    t = torch.arange(-3, 4, dtype=torch.float32)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [n*c, 7]
    y = F.pad(x.reshape(1, n * c, h, w), (3, 3, 3, 3), mode="replicate")
    y = F.conv2d(y, k.view(n * c, 1, 1, 7), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, 7, 1), groups=n * c)
    return y.view(n, c, h, w)


# --------------------------------------------------------------------------- glyph rendering


def _render(
    g: torch.Generator,
    glyphs: torch.Tensor,
    *,
    scale: torch.Tensor,
    rotation: torch.Tensor,
    shear: torch.Tensor,
    aspect: torch.Tensor,
    shift: torch.Tensor,
    elastic: torch.Tensor,
    neighbours: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = (),
) -> torch.Tensor:
    """Warp atlas glyph rows ``glyphs`` [n] into [n, 1, 28, 28] coverage in [0, 1].

    The forward map (glyph cell -> output, both in normalized coordinates) is
    ``out = scale * R(rotation) @ Shear(shear) @ diag(aspect, 1) @ g + shift``; ``elastic`` is
    the displacement amplitude (glyph units). Each neighbour is ``(rows, x_offset, present)``:
    another glyph drawn at ``g + (x_offset, 0)`` in the same warped frame, where ``present``.
    """
    atlas = _atlas()
    n = glyphs.shape[0]
    size = SIZE * _SUPER
    cos, sin = torch.cos(rotation), torch.sin(rotation)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shr = torch.eye(2).repeat(n, 1, 1)
    shr[:, 0, 1] = shear
    asp = torch.eye(2).repeat(n, 1, 1)
    asp[:, 0, 0] = aspect
    fwd = scale.view(n, 1, 1) * rot @ shr @ asp
    inv = torch.linalg.inv(fwd)
    theta = torch.cat([inv, -(inv @ shift.view(n, 2, 1))], dim=2)
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    disp = torch.randn(n, 2, 4, 4, generator=g) * elastic.view(n, 1, 1, 1)
    disp = F.interpolate(disp, size=(size, size), mode="bicubic", align_corners=False)
    grid = grid + disp.permute(0, 2, 3, 1)
    out = F.grid_sample(atlas.images[glyphs], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    for rows, offset, present in neighbours:
        shifted = grid.clone()
        shifted[..., 0] -= offset.view(n, 1, 1)
        other = F.grid_sample(atlas.images[rows], shifted, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = torch.maximum(out, other * present.view(n, 1, 1, 1))
    return F.avg_pool2d(out, _SUPER).clamp(0, 1)


def _pick_glyphs(g: torch.Generator, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    atlas = _atlas()
    n = labels.shape[0]
    font = torch.randint(atlas.n_fonts, (n,), generator=g)
    stroke = torch.randint(atlas.n_strokes, (n,), generator=g)
    return atlas.index[font, stroke, labels], font, stroke


# --------------------------------------------------------------------------- the two looks


def _texture(g: torch.Generator, n: int) -> torch.Tensor:
    """[n, 3, 28, 28] photo-like colour patches in [0, 1] (stand-ins for BSDS500 crops)."""
    x, y = _coords(SIZE)
    base = _rand_colour(g, n, _u(g, n, 0.2, 0.8), _u(g, n, 0.0, 0.35))
    tint = _rand_colour(g, n, torch.full((n,), 0.5), _u(g, n, 0.0, 0.5)) - 0.5 + 1.0  # around grey 1
    lum = _octaves(g, n, 1, SIZE, _u(g, n, 0.35, 0.85))
    chroma = _octaves(g, n, 3, SIZE, _u(g, n, 0.3, 0.7))
    tex = base + _u(g, n, 0.05, 0.28).view(n, 1, 1, 1) * lum * tint
    tex = tex + _u(g, n, 0.0, 0.08).view(n, 1, 1, 1) * chroma
    # a linear gradient in a second colour
    phi = _u(g, n, 0, 2 * math.pi).view(n, 1, 1, 1)
    ramp = x * torch.cos(phi) + y * torch.sin(phi)
    second = _rand_colour(g, n, _u(g, n, 0.2, 0.8), _u(g, n, 0.0, 0.4))
    tex = tex + _u(g, n, 0.0, 0.25).view(n, 1, 1, 1) * ramp * (second - 0.5)
    # stripes (bark, fabric, water) on about a quarter of the patches
    phi2 = _u(g, n, 0, math.pi).view(n, 1, 1, 1)
    freq = _u(g, n, 1.5, 5.0).view(n, 1, 1, 1)
    stripes = torch.sin(
        math.pi * freq * (x * torch.cos(phi2) + y * torch.sin(phi2)) + _u(g, n, 0, 6.3).view(n, 1, 1, 1)
    )
    has_stripes = (torch.rand(n, generator=g) < 0.25).float().view(n, 1, 1, 1)
    warp = 1 + 0.3 * _smooth_noise(g, n, 1, 3, SIZE)
    tex = tex + has_stripes * _u(g, n, 0.05, 0.2).view(n, 1, 1, 1) * (stripes * warp) * tint
    # an object boundary: a soft or hard edge to a second textured region on 40 % of patches
    phi3 = _u(g, n, 0, 2 * math.pi).view(n, 1, 1, 1)
    edge_pos = _u(g, n, -0.7, 0.7).view(n, 1, 1, 1)
    wobble = 0.15 * _smooth_noise(g, n, 1, 3, SIZE)
    sharp = _u(g, n, 4, 30).view(n, 1, 1, 1)
    region = torch.sigmoid((x * torch.cos(phi3) + y * torch.sin(phi3) + wobble - edge_pos) * sharp)
    other = _rand_colour(g, n, _u(g, n, 0.1, 0.9), _u(g, n, 0.0, 0.45))
    other = other + _u(g, n, 0.03, 0.2).view(n, 1, 1, 1) * _octaves(g, n, 1, SIZE, _u(g, n, 0.4, 0.9))
    has_edge = (torch.rand(n, generator=g) < 0.4).float().view(n, 1, 1, 1)
    tex = tex * (1 - has_edge * region) + other * has_edge * region
    # film grain
    tex = tex + _u(g, n, 0.0, 0.04).view(n, 1, 1, 1) * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return tex.clamp(0, 1)


def _mnistm(g: torch.Generator, labels: torch.Tensor) -> torch.Tensor:
    n = labels.shape[0]
    glyphs, _, _ = _pick_glyphs(g, labels)
    digit = _render(
        g,
        glyphs,
        scale=_u(g, n, 0.95, 1.25),
        rotation=_u(g, n, -0.3, 0.3),
        shear=_u(g, n, -0.35, 0.35),
        aspect=_u(g, n, 0.75, 1.25),
        shift=torch.stack([_u(g, n, -0.12, 0.12), _u(g, n, -0.1, 0.1)], 1),
        elastic=_u(g, n, 0.015, 0.05),
    )
    return (_texture(g, n) - digit).abs()


def svhn_style(g: torch.Generator, labels: torch.Tensor, texture: torch.Tensor | None = None) -> torch.Tensor:
    """``texture``: an optional ``[n, 1, 28, 28]`` luminance pattern added to the background (photo
    crops for :mod:`hw2cli.data.svhn`); it draws nothing from ``g``, so the rest stays as without it."""
    atlas = _atlas()
    n = labels.shape[0]
    x, y = _coords(SIZE)
    glyphs, font, stroke = _pick_glyphs(g, labels)
    width = atlas.width[glyphs]
    neighbours = []
    for side in (-1.0, 1.0):
        digit = torch.randint(10, (n,), generator=g)
        rows = atlas.index[font, stroke, digit]
        gap = _u(g, n, 0.08, 0.4)
        offset = side * (width / 2 + atlas.width[rows] / 2 + gap)
        neighbours.append((rows, offset, (torch.rand(n, generator=g) < 0.75).float()))
    scale = _u(g, n, 0.95, 1.3)
    mask = _render(
        g,
        glyphs,
        scale=scale,
        rotation=_u(g, n, -0.15, 0.15),
        shear=_u(g, n, -0.25, 0.25),
        aspect=_u(g, n, 0.8, 1.3),
        shift=torch.stack([_u(g, n, -0.08, 0.08), _u(g, n, -0.1, 0.1)], 1),
        elastic=_u(g, n, 0.0, 0.02),
        neighbours=neighbours,
    )
    # colours: either polarity, a clear but varied contrast
    bg_lum = _u(g, n, 0.05, 0.95)
    contrast = _u(g, n, 0.25, 0.75)
    up = bg_lum + contrast
    down = bg_lum - contrast
    go_up = torch.where((up <= 1) & (down >= 0), torch.rand(n, generator=g) < 0.5, up <= 1)
    fg_lum = torch.where(go_up, up, down).clamp(0, 1)
    bg = _rand_colour(g, n, bg_lum, _u(g, n, 0.0, 0.3))
    fg = _rand_colour(g, n, fg_lum, _u(g, n, 0.0, 0.25))
    bg = bg + _u(g, n, 0.02, 0.1).view(n, 1, 1, 1) * _octaves(g, n, 1, SIZE, _u(g, n, 0.3, 0.7))
    if texture is not None:
        bg = bg + texture
    # the edge of the plate or a wall seam on 35 % of crops, near one border
    vertical = torch.rand(n, generator=g) < 0.5
    coord = torch.where(vertical.view(n, 1, 1, 1), x, y)
    edge_at = _u(g, n, 0.6, 0.95) * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    beyond = torch.sigmoid((coord - edge_at.view(n, 1, 1, 1)) * 25 * torch.sign(edge_at).view(n, 1, 1, 1))
    plate = _rand_colour(g, n, _u(g, n, 0.05, 0.95), _u(g, n, 0.0, 0.4))
    has_plate = (torch.rand(n, generator=g) < 0.35).float().view(n, 1, 1, 1)
    bg = bg * (1 - has_plate * beyond) + plate * has_plate * beyond
    img = bg * (1 - mask) + fg * mask
    # lighting: a shading gradient and an overall exposure
    phi = _u(g, n, 0, 2 * math.pi).view(n, 1, 1, 1)
    shade = 1 + _u(g, n, 0.0, 0.35).view(n, 1, 1, 1) * (x * torch.cos(phi) + y * torch.sin(phi))
    img = img * shade * _u(g, n, 0.75, 1.15).view(n, 1, 1, 1)
    img = _gaussian_blur(img, _u(g, n, 0.35, 1.1))
    img = img + _u(g, n, 0.005, 0.04).view(n, 1, 1, 1) * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return img.clamp(0, 1)


_STYLES: dict[str, Callable[[torch.Generator, torch.Tensor], torch.Tensor]] = {
    "mnistm": _mnistm,
    "svhn": svhn_style,
}


def render_batch(dataset: str, labels: Sequence[int], *, seed: int = 0) -> torch.Tensor:
    """[n, 3, 28, 28] float images in [0, 1] of ``dataset``'s look for ``labels`` (previews, tests)."""
    if dataset not in _STYLES:
        raise UsageError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}.")
    g = torch.Generator().manual_seed(seed_for(seed, dataset, 0))
    with torch.no_grad(), single_threaded_torch():
        return _STYLES[dataset](g, torch.as_tensor(list(labels), dtype=torch.long))


def seed_for(seed: int, dataset: str, batch: int) -> int:
    state = np.random.SeedSequence([seed, _DATASET_CODE[dataset], batch]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


# --------------------------------------------------------------------------- writing


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _validate(out: Path, per_class: int, seed: int, val_fraction: float, datasets: Sequence[str]) -> list[str]:
    if not _is_int(per_class):
        raise UsageError(f"{{opt:per_class}} must be a whole number, got {per_class!r}.")
    if per_class < 1:
        raise UsageError(f"{{opt:per_class}} must be at least 1, got {per_class}.")
    if not _is_int(seed) or seed < 0:
        raise UsageError(f"{{opt:seed}} must be a whole number of at least 0, got {seed!r}.")
    if not isinstance(val_fraction, (int, float, np.floating)) or not (0 <= val_fraction < 1):
        raise UsageError(f"{{opt:val_fraction}} must be at least 0 and below 1, got {val_fraction}.")
    if isinstance(datasets, str):
        datasets = [datasets]
    chosen: list[str] = []
    for name in datasets:
        if name not in _STYLES:
            raise UsageError(f"{{opt:datasets}} must list some of {', '.join(DATASETS)}, got {name!r}.")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise UsageError(f"{{opt:datasets}} must list at least one of {', '.join(DATASETS)}.")
    if out.exists() and not out.is_dir():
        raise UsageError(f"the output folder {out} is an existing file; give a folder.")
    return chosen


def _val_count(per_class: int, val_fraction: float) -> int:
    """Validation images per class: rounded, and at least one when asked for any (and possible)."""
    n_val = math.floor(per_class * val_fraction + 0.5)
    if val_fraction > 0 and per_class >= 2:
        n_val = max(n_val, 1)
    return min(n_val, per_class - 1) if per_class >= 2 else 0


def synthesize(
    out: Path,
    *,
    per_class: int = 500,
    seed: int = 0,
    val_fraction: float = 0.1,
    datasets: Sequence[str] = DATASETS,
    state_dir: Path | None = None,
    replace: bool = True,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> dict[str, dict[str, int]]:
    """Write the synthetic digit datasets under ``out/digits/``; return ``{dataset: {split: count}}``.

    Each dataset gets ``per_class`` images of every digit; per class, ``round(per_class *
    val_fraction)`` of them (at least one when ``val_fraction > 0`` and ``per_class >= 2``) are
    listed in ``val.csv``, the rest in ``train.csv``. A dataset folder that already exists gets a
    fresh ``data/`` holding exactly the new images (the new set is written to a staging folder
    beside it and swapped in, so an interrupted run leaves the old set whole, and the same call
    again continues it). Other files in the dataset folder are left alone. ``state_dir``,
    ``replace``, ``on_start`` (once per data set) and ``note`` are
    :func:`~hw2cli.data.layout.write_digit_folder`'s.

    Raises :class:`UsageError` for bad arguments and :class:`RunError` when ``out`` cannot be
    written.
    """
    out = Path(out)
    chosen = _validate(out, per_class, seed, val_fraction, datasets)
    _atlas()  # fail early if no font works
    counts: dict[str, dict[str, int]] = {}
    with single_threaded_torch():
        for name in chosen:
            counts[name] = _write_dataset(
                out / "digits" / name,
                name,
                per_class,
                seed,
                val_fraction,
                state_dir=state_dir,
                replace=replace,
                on_start=on_start,
                on_progress=on_progress,
                note=note,
            )
    return counts


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """One intra-op thread while generating: the tensors are small, so extra threads buy little,
    and they slow everything down several-fold when another process is busy on the same cores.
    One thread also keeps every float reduction in the same order on every machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_dataset(
    folder: Path,
    name: str,
    per_class: int,
    seed: int,
    val_fraction: float,
    **writing: Any,
) -> dict[str, int]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, _DATASET_CODE[name]]))
    labels = rng.permutation(np.repeat(np.arange(10), per_class))
    is_val = val_mask(labels, _val_count(per_class, val_fraction), rng)
    style = _STYLES[name]

    def batch(b: int) -> np.ndarray:
        batch_labels = torch.from_numpy(labels[b * _BATCH : (b + 1) * _BATCH].astype(np.int64))
        g = torch.Generator().manual_seed(seed_for(seed, name, b))
        with torch.no_grad():
            images = style(g, batch_labels)
        return (images * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()

    recipe = {"maker": f"synthetic {name}", "seed": seed}
    return write_digit_folder(folder, labels, is_val, batch, batch_size=_BATCH, what=name, recipe=recipe, **writing)
