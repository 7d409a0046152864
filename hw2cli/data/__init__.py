"""Data in the homework's layouts, and how to get it.

* ``digits`` / ``tensors`` / ``layout``: P1's ``digits/<dataset>/{train,val}.csv + data/``
  (:class:`DigitsDataset`, whole-split tensors for training, the layout checks);
* ``mnistm`` / ``svhn`` / ``sources`` / ``download`` / ``homework``: building the real data sets
  (torchvision's MNIST and SVHN, photo textures, verified downloads, the course's archive);
* ``synth``: synthetic look-alikes (:func:`synthesize`) for tests and offline demos;
* ``labelled``: CLIP's labelled-image folders; ``noise``: P2's noise files; ``prompts``: P3's
  ``input.json``.

Importing this package is cheap: the submodules (and torch) load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

DATASETS = ("mnistm", "svhn")  # P1's two data sets, in their condition order (index = dataset)
DISPLAY_NAMES = {"mnistm": "MNIST-M", "svhn": "SVHN"}  # as figures and reports spell them
# Image files the readers accept (what Pillow opens and people keep images in)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"})

if TYPE_CHECKING:
    from hw2cli.data.digits import DigitsDataset, find_dataset_roots, load_image
    from hw2cli.data.synth import synthesize

_LAZY = {
    "DigitsDataset": "hw2cli.data.digits",
    "find_dataset_roots": "hw2cli.data.digits",
    "load_image": "hw2cli.data.digits",
    "synthesize": "hw2cli.data.synth",
}

__all__ = [
    "DATASETS",
    "DISPLAY_NAMES",
    "IMAGE_SUFFIXES",
    "DigitsDataset",
    "find_dataset_roots",
    "load_image",
    "synthesize",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
