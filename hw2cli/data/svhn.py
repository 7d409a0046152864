"""SVHN in the homework layout: the real training split resized to 28×28, or, offline, the
synthetic house-number look-alike with textures taken from real photographs.

``make_svhn_real(out, svhn)`` writes the real crops (``torchvision``'s 32×32 ``train`` split,
resized with PIL's bicubic filter, as the homework's own data is 28×28); ``per_class`` keeps at
most that many of each digit, in a seeded random choice. ``make_svhn_lookalike(out, photos)``
renders the font-based look-alike of :mod:`hw2cli.data.synth` and, on about 60 % of the images,
adds the luminance texture of a random photo crop (walls, bark, fabric, plates at a distance) to
the background, which the procedural noise alone does not have. Both write
``out/digits/svhn/`` and are byte-identical for the same arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hw2cli.data import synth
from hw2cli.data.layout import content_digest, val_mask, write_digit_folder
from hw2cli.data.sources import Digits, Photos
from hw2cli.errors import UsageError

SIZE = 28
_BATCH = 500
_CODE = 8


def _val_count(n: int, val_fraction: float) -> int:
    n_val = math.floor(n * val_fraction + 0.5)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    return min(n_val, n - 1) if n >= 2 else 0


def _check(per_class: int | None, val_fraction: float) -> None:
    if per_class is not None and per_class < 1:
        raise UsageError(f"the number of images per digit must be at least 1, got {per_class}.")
    if not 0 <= val_fraction < 1:
        raise UsageError(f"the validation fraction must be at least 0 and below 1, got {val_fraction}.")


def make_svhn_real(
    out: str | Path,
    svhn: Digits,
    *,
    per_class: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    state_dir: Path | None = None,
    replace: bool = True,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Write the real SVHN crops ``svhn`` (``[N, 32, 32, 3]``) at 28×28 under ``out/digits/svhn``
    (an interrupted run continues where it stopped: see :func:`~hw2cli.data.layout.write_digit_folder`)."""
    from PIL import Image

    _check(per_class, val_fraction)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _CODE]))
    keep = []
    for digit in range(10):
        members = np.flatnonzero(svhn.labels == digit)
        if per_class is not None:
            members = np.sort(rng.permutation(members)[:per_class])
        keep.append(members)
    order = rng.permutation(np.concatenate(keep))
    labels = svhn.labels[order]
    is_val = np.zeros(len(order), dtype=bool)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        is_val[rng.permutation(members)[: _val_count(len(members), val_fraction)]] = True

    def batch(b: int) -> np.ndarray:
        crops = svhn.images[order[b * _BATCH : (b + 1) * _BATCH]]
        return np.stack([np.asarray(Image.fromarray(c, "RGB").resize((SIZE, SIZE), Image.BICUBIC)) for c in crops])

    return write_digit_folder(
        Path(out) / "digits" / "svhn",
        labels,
        is_val,
        batch,
        batch_size=_BATCH,
        what="SVHN",
        recipe={"maker": "svhn", "crops": content_digest([svhn.images[order]])},
        state_dir=state_dir,
        replace=replace,
        on_start=on_start,
        on_progress=on_progress,
        note=note,
    )


def photo_textures(photos: Photos, n: int, g: torch.Generator) -> torch.Tensor:
    """``[n, 1, 28, 28]`` zero-mean luminance patterns: crops of 28-112 px from random photos,
    shrunk to 28×28, scaled by a random amplitude, and zero on about 40 % of the images."""
    which = torch.randint(len(photos.images), (n,), generator=g).tolist()
    side = torch.randint(SIZE, 4 * SIZE + 1, (n,), generator=g).tolist()
    u = torch.rand(n, 2, generator=g)
    out = torch.empty(n, 1, SIZE, SIZE)
    for i, (k, s) in enumerate(zip(which, side, strict=True)):
        photo = photos.images[k]
        h, w = photo.shape[:2]
        s = min(s, h, w)
        y, x = int(u[i, 0] * (h - s + 1)), int(u[i, 1] * (w - s + 1))
        crop = torch.from_numpy(np.ascontiguousarray(photo[y : y + s, x : x + s])).permute(2, 0, 1).float() / 255
        lum = (0.299 * crop[0] + 0.587 * crop[1] + 0.114 * crop[2])[None, None]
        out[i] = F.interpolate(lum, size=(SIZE, SIZE), mode="area")[0]
    out = out - out.mean(dim=(2, 3), keepdim=True)
    amplitude = 0.3 + 0.7 * torch.rand(n, generator=g)
    present = (torch.rand(n, generator=g) < 0.6).float()
    return out * (amplitude * present).view(n, 1, 1, 1)


def make_svhn_lookalike(
    out: str | Path,
    photos: Photos | None,
    *,
    per_class: int = 1000,
    seed: int = 0,
    val_fraction: float = 0.1,
    state_dir: Path | None = None,
    replace: bool = True,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Write the SVHN look-alike (with photo textures when ``photos`` are given) under ``out/digits/svhn``."""
    _check(per_class, val_fraction)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _CODE, 1]))
    labels = rng.permutation(np.repeat(np.arange(10), per_class))
    is_val = val_mask(labels, _val_count(per_class, val_fraction), rng)

    def batch(b: int) -> np.ndarray:
        digits = torch.from_numpy(labels[b * _BATCH : (b + 1) * _BATCH].astype(np.int64))
        g = torch.Generator().manual_seed(synth.seed_for(seed, "svhn", b) ^ _CODE)
        texture = None
        if photos is not None:
            texture = photo_textures(photos, len(digits), torch.Generator().manual_seed(seed * 7919 + b))
        images = synth.svhn_style(g, digits, texture)
        return (images * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()

    recipe = {
        "maker": "svhn look-alike",
        "seed": seed,
        "photos": None if photos is None else content_digest(photos.images),
    }
    with synth.single_threaded_torch(), torch.no_grad():
        return write_digit_folder(
            Path(out) / "digits" / "svhn",
            labels,
            is_val,
            batch,
            batch_size=_BATCH,
            what="SVHN look-alike",
            recipe=recipe,
            state_dir=state_dir,
            replace=replace,
            on_start=on_start,
            on_progress=on_progress,
            note=note,
        )
