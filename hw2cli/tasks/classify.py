"""Training the digit classifiers that grade P1 (their use as graders is :mod:`hw2cli.tasks.grading`).

The grading rule (``HW2_SPEC.md``): label = first character of the file name; inputs
``Resize((28, 28))``, ``ToTensor``, ``Normalize(0.5, 0.5)``; score = mean of the two data sets'
accuracies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hw2cli.data.tensors import load_digit_tensors
from hw2cli.errors import UsageError
from hw2cli.io.atomic import save_safetensors, write_json
from hw2cli.models.classifiers import ARCHITECTURES, build_classifier
from hw2cli.tasks.grading import grader_tensor, predict

# ------------------------------------------------------------------------------------ training


@dataclass
class ClassifierTrainResult:
    path: Path
    val_accuracy: float
    train_accuracy: float
    epochs: int


def train_classifier(
    data: str | Path,
    dataset: str,
    out: str | Path,
    *,
    arch: str = "lenet",
    epochs: int = 10,
    batch: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: torch.device,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> ClassifierTrainResult:
    """Train a digit classifier on one data set's train split (light augmentation); report val accuracy."""
    if arch not in ARCHITECTURES:
        raise UsageError(f"{{opt:arch}} {arch!r} is not known; expected {' or '.join(ARCHITECTURES)}.")
    if epochs < 1 or batch < 1 or lr <= 0:
        raise UsageError(
            f"{{opt:epochs}} and {{opt:batch}} must be at least 1 and {{opt:lr}} positive "
            f"(got {epochs}, {batch}, {lr})."
        )
    train = load_digit_tensors(data, (dataset,), "train")
    try:
        val = load_digit_tensors(data, (dataset,), "val")
    except UsageError:
        val = None
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_classifier(arch).to(device)
    steps_per_epoch = max(1, len(train) // batch)
    total = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
    images = train.images
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=gen)
        model.train()
        for i in range(steps_per_epoch):
            idx = perm[i * batch : (i + 1) * batch]
            x = grader_tensor(_augment(images[idx], gen)).to(device)
            y = train.labels[idx].to(device)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if on_step is not None:
                on_step(step, {"loss": loss.item()})
    model.eval()
    train_acc = float((predict(model, images[:5000], device) == train.labels[:5000]).float().mean())
    val_acc = (
        float((predict(model, val.images, device) == val.labels).float().mean()) if val is not None else float("nan")
    )
    out = Path(out)
    meta = {
        "arch": arch,
        "dataset": dataset,
        "val_accuracy": f"{val_acc:.4f}",
        "epochs": str(epochs),
        "seed": str(seed),
    }
    save_safetensors(model.state_dict(), out, metadata=meta)
    write_json(out.with_suffix(".json"), {**meta, "train_accuracy": train_acc, "data": str(data)})
    return ClassifierTrainResult(out, val_acc, train_acc, epochs)


def _augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random affine warps (rotation ±12°, scale 0.9-1.1, shear ±0.15, shift ±2 px) and a
    colour gain jitter: handwriting varies in exactly these ways, and the classifier should not
    rely on incidental colours of the generated images."""
    b = images.shape[0]
    x = images.float()
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(12)
    scale = 0.9 + 0.2 * torch.rand(b, generator=gen)
    shear = (torch.rand(b, generator=gen) * 2 - 1) * 0.15
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (2 / 14)  # normalized coordinates: 14 px per unit
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear * cos, shift[:, 0]], 1), torch.stack([sin, cos + shear * sin, shift[:, 1]], 1)],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain = 0.8 + 0.4 * torch.rand(b, 3, 1, 1, generator=gen)
    x = (x * gain).clamp(0, 255)
    return x.round().to(torch.uint8)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
