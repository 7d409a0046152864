"""The digit data sets held in memory as tensors.

28×28 images are small (20,000 RGB images are 47 MB as uint8), so training and evaluation read
each split once into one uint8 tensor instead of decoding PNGs in every epoch; this also makes
the data order a pure function of a seeded generator, which bit-exact resuming relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hw2cli.data import DATASETS
from hw2cli.errors import UsageError


@dataclass
class DigitTensors:
    """``images`` uint8 ``[N, 3, 28, 28]``, ``labels`` int64 ``[N]`` digits, ``dataset`` int64 ``[N]``
    (index into ``names``)."""

    images: torch.Tensor
    labels: torch.Tensor
    dataset: torch.Tensor
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def resolve_dataset_root(root: Path, name: str) -> Path:
    """``root`` may be the ``digits`` folder, the ``hw2_data`` folder above it, or a data set itself."""
    for candidate in (root / name, root / "digits" / name):
        if (candidate / "data").is_dir():
            return candidate
    if root.name == name and (root / "data").is_dir():
        return root
    raise UsageError(
        f"no {name} data under {root}: expected {root / name}/data and train.csv "
        f"(run `hw2 data synth {root}` to make look-alikes)."
    )


def load_digit_tensors(root: str | Path, datasets: tuple[str, ...] = DATASETS, split: str = "train") -> DigitTensors:
    """Read one split of each data set in the homework layout into memory."""
    from hw2cli.data.digits import DigitsDataset, load_image

    root = Path(root)
    for name in datasets:
        if name not in DATASETS:
            raise UsageError(f"unknown data set {name!r}; expected {' or '.join(DATASETS)}.")
    images, labels, which = [], [], []
    for index, name in enumerate(datasets):
        ds = DigitsDataset(resolve_dataset_root(root, name), split=split)
        folder = ds.root / "data"
        for file_name, label in zip(ds.names, ds.labels, strict=True):
            image = load_image(folder / file_name).resize((28, 28))
            images.append(np.asarray(image, dtype=np.uint8))
            labels.append(label)
            which.append(index)
    if not images:
        raise UsageError(f"the {split} split under {root} holds no images.")
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return DigitTensors(stacked, torch.tensor(labels), torch.tensor(which), tuple(datasets))
