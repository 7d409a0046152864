"""MNIST-M by its original recipe (Ganin & Lempitsky, "Unsupervised Domain Adaptation by
Backpropagation", 2015): each MNIST digit ``d`` (28×28, in [0, 1]) blended with a random 28×28
crop ``p`` of a colour photograph, ``out = |p − d|`` per channel.

``make_mnistm(out, digits, photos)`` writes ``out/digits/mnistm/`` in the homework layout
(28×28 RGB PNG, ``train.csv``, ``val.csv``). Each source digit appears ``per_digit`` times, each
time over a new crop; the val split is drawn per source digit, so no digit shape is in both
splits. Two switches keep data sets honestly apart when one grades the other:

* ``digit_split``: ``all`` source digits, or a fixed 4-in-5 ``train`` part / 1-in-5 ``holdout``
  part of every class (chosen by position, the same for every seed);
* ``crop_region``: crops from the ``whole`` photo, or only from its ``first-half`` /
  ``second-half`` along the longer side, so two data sets made from the two halves share no
  pixel of any photo.

Everything random comes from generators seeded by ``(seed, batch)``: the same arguments give
byte-identical files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hw2cli.data.layout import content_digest, write_digit_folder
from hw2cli.data.sources import Digits, Photos
from hw2cli.errors import UsageError

SIZE = 28
DIGIT_SPLITS = ("all", "train", "holdout")
CROP_REGIONS = ("whole", "first-half", "second-half")
HOLDOUT_EVERY = 5  # the holdout part is every 5th digit of each class
_BATCH = 1000
_CODE = 7  # seeds of MNIST-M by recipe differ from the synthetic look-alikes' (codes 1, 2)


def select_digits(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices of the source digits in ``split`` (``all``, ``train`` = 4 in 5, ``holdout`` = 1 in 5)."""
    if split not in DIGIT_SPLITS:
        raise UsageError(f"the digit split {split!r} is not one of {', '.join(DIGIT_SPLITS)}.")
    if split == "all":
        return np.arange(len(labels))
    rank = np.zeros(len(labels), dtype=np.int64)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        rank[members] = np.arange(len(members))
    holdout = rank % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    return np.flatnonzero(holdout if split == "holdout" else ~holdout)


def crop_window(shape: tuple[int, ...], region: str) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the part of a photo of ``shape`` that crops may come from."""
    h, w = shape[:2]
    if region == "whole":
        return 0, h, 0, w
    first = region == "first-half"
    if w >= h:
        half = w // 2
        return (0, h, 0, half) if first else (0, h, w - half, w)
    half = h // 2
    return (0, half, 0, w) if first else (h - half, h, 0, w)


def blend(digits: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """``|p − d|`` per channel: uint8 digits ``[n, 28, 28]`` and patches ``[n, 28, 28, 3]`` → uint8."""
    d = digits.astype(np.float32)[..., None] / 255.0
    p = patches.astype(np.float32) / 255.0
    return (np.abs(p - d) * 255.0 + 0.5).astype(np.uint8)


def make_mnistm(
    out: str | Path,
    digits: Digits,
    photos: Photos,
    *,
    per_digit: int = 1,
    seed: int = 0,
    val_fraction: float = 0.1,
    digit_split: str = "all",
    crop_region: str = "whole",
    state_dir: Path | None = None,
    replace: bool = True,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Write MNIST-M made from ``digits`` and ``photos`` under ``out/digits/mnistm``; return split
    counts. An interrupted run continues where it stopped; ``state_dir``/``replace``/``note`` are
    :func:`~hw2cli.data.layout.write_digit_folder`'s."""
    if crop_region not in CROP_REGIONS:
        raise UsageError(f"the crop region {crop_region!r} is not one of {', '.join(CROP_REGIONS)}.")
    if per_digit < 1:
        raise UsageError(f"the number of crops per digit must be at least 1, got {per_digit}.")
    if not 0 <= val_fraction < 1:
        raise UsageError(f"the validation fraction must be at least 0 and below 1, got {val_fraction}.")
    windows = [crop_window(p.shape, crop_region) for p in photos.images]
    for (y0, y1, x0, x1), name in zip(windows, photos.names, strict=True):
        if y1 - y0 < SIZE or x1 - x0 < SIZE:
            raise UsageError(f"the photo {name} is too small for 28x28 crops from its {crop_region}.")
    chosen = select_digits(digits.labels, digit_split)
    if len(chosen) == 0:
        raise UsageError(f"the {digit_split} part of {digits.source} holds no digits.")

    rng = np.random.default_rng(np.random.SeedSequence([seed, _CODE]))
    # the val split is a set of source digits: every crop of a val digit is in val.csv
    val_digit = np.zeros(len(chosen), dtype=bool)
    for digit in range(10):
        members = np.flatnonzero(digits.labels[chosen] == digit)
        n_val = math.floor(len(members) * val_fraction + 0.5)
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val_digit[rng.permutation(members)[:n_val]] = True
    order = rng.permutation(np.repeat(np.arange(len(chosen)), per_digit))  # positions into ``chosen``
    source = chosen[order]
    labels = digits.labels[source]
    is_val = val_digit[order]

    def batch(b: int) -> np.ndarray:
        idx = source[b * _BATCH : (b + 1) * _BATCH]
        g = np.random.default_rng(np.random.SeedSequence([seed, _CODE, b]))
        which = g.integers(len(photos.images), size=len(idx))  # a photo at random, as the original script
        u = g.random((len(idx), 2))
        patches = np.empty((len(idx), SIZE, SIZE, 3), dtype=np.uint8)
        for i, k in enumerate(which):
            y0, y1, x0, x1 = windows[k]
            y = y0 + int(u[i, 0] * (y1 - y0 - SIZE + 1))
            x = x0 + int(u[i, 1] * (x1 - x0 - SIZE + 1))
            patches[i] = photos.images[k][y : y + SIZE, x : x + SIZE]
        return blend(digits.images[idx], patches)

    recipe = {
        "maker": "mnistm",
        "seed": seed,
        "crop_region": crop_region,
        "digits": content_digest([digits.images[source]]),
        "photos": content_digest(photos.images),
    }
    return write_digit_folder(
        Path(out) / "digits" / "mnistm",
        labels,
        is_val,
        batch,
        batch_size=_BATCH,
        what="MNIST-M",
        recipe=recipe,
        state_dir=state_dir,
        replace=replace,
        on_start=on_start,
        on_progress=on_progress,
        note=note,
    )
