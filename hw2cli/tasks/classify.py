"""Training the digit classifiers that grade P1 (their use as graders is :mod:`hw2cli.tasks.grading`).

The grading rule (``HW2_SPEC.md``): label = first character of the file name; inputs
``Resize((28, 28))``, ``ToTensor``, ``Normalize(0.5, 0.5)``; score = mean of the two data sets'
accuracies.
"""

from __future__ import annotations

import contextlib
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
from hw2cli.io.atomic import remove_stale_temporaries, save_safetensors, write_json
from hw2cli.io.checkpoints import load_error
from hw2cli.io.locks import claim
from hw2cli.models.classifiers import ARCHITECTURES, build_classifier
from hw2cli.tasks.grading import grader_tensor, predict
from hw2cli.tasks.training import (
    STATE_MARK,
    StopRequest,
    capture_rng,
    check_run_folder,
    deferred_interrupts,
    discard_states,
    interrupted_twice,
    load_state_folder,
    release,
    remove_state_debris,
    restore_rng,
    resume_state,
    save_state,
    state_folders,
    stop_here,
)

# ------------------------------------------------------------------------------------ training


@dataclass
class ClassifierTrainResult:
    path: Path
    val_accuracy: float
    train_accuracy: float
    epochs: int


def run_folder(out: str | Path) -> Path:
    """Where an unfinished classifier run keeps its resume state: ``NAME.run/`` beside ``NAME.safetensors``."""
    return Path(out).with_suffix(".run")


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
    resume: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> ClassifierTrainResult:
    """Train a digit classifier on one data set's train split (light augmentation); report val accuracy.

    The state is saved after every epoch and when Ctrl-C or SIGTERM arrives (the running step
    finishes first), in :func:`run_folder`; ``resume`` continues it bit for bit (model, optimizer,
    one-cycle schedule, the epoch's order, random state). The folder is removed once the
    classifier is written.
    """
    if arch not in ARCHITECTURES:
        raise UsageError(f"{{opt:arch}} {arch!r} is not known; expected {' or '.join(ARCHITECTURES)}.")
    if epochs < 1 or batch < 1 or lr <= 0:
        raise UsageError(
            f"{{opt:epochs}} and {{opt:batch}} must be at least 1 and {{opt:lr}} positive "
            f"(got {epochs}, {batch}, {lr})."
        )
    options = {"arch": arch, "dataset": dataset, "epochs": epochs, "batch": batch, "lr": lr, "seed": seed}
    run = run_folder(out)
    claim(run, "run folder")  # a second trainer is refused before it reads or writes the run
    remove_stale_temporaries(run)
    remove_state_debris(run)
    saved = state_folders(run)
    if resume and not saved and Path(out).is_file():
        raise UsageError(
            f"{out} is a finished classifier and {run} holds nothing to resume; pass {{opt:overwrite}} without "
            "{opt:resume} to train it again."
        )
    if run.exists() and not saved and (not run.is_dir() or any(run.iterdir())):
        raise UsageError(
            f"{run} already exists and is not an unfinished classifier run (it is where this run would keep its "
            "resume state, beside --out); move it away or choose another {opt:out}."
        )
    check_run_folder(run, bool(saved), resume, "unfinished classifier run")
    mark, folder = None, None
    if resume:  # checked before anything is built: a bad or foreign state fails at once
        folder, mark = resume_state(run, note)
        if mark.get("options") != options:
            raise UsageError(
                f"{run} was started with {mark.get('options')}; resume it with the same options, or delete it."
            )
    train = load_digit_tensors(data, (dataset,), "train")
    if batch > len(train):
        raise UsageError(f"{{opt:batch}} {batch} is larger than the {len(train)} {dataset} training images.")
    try:
        val = load_digit_tensors(data, (dataset,), "val")
    except UsageError:
        val = None
    if val is not None and len(val) == 0:  # a tiny synthetic set: nothing to measure on
        val = None
    with deferred_interrupts() as stop:
        model = _train(train, options, run, folder, mark, device, stop, on_start, on_step)
    model.eval()
    images = train.images
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
    save_safetensors(model.state_dict(), out, metadata=meta)  # safetensors metadata holds strings only
    measured = None if math.isnan(val_acc) else val_acc  # JSON has no NaN: not measured is null
    record = {**meta, "val_accuracy": measured, "epochs": epochs, "seed": seed}
    write_json(out.with_suffix(".json"), {**record, "train_accuracy": train_acc, "data": str(data)})
    _remove_run(run)
    return ClassifierTrainResult(out, val_acc, train_acc, epochs)


def _remove_run(run: Path) -> None:
    """Remove the resume state a finished run no longer needs: its state folders and temporaries,
    then the folder if nothing else is in it (nothing this run did not write is deleted)."""
    discard_states(run)
    remove_stale_temporaries(run)
    with contextlib.suppress(OSError):
        run.rmdir()


def _train(
    train: Any,
    options: dict[str, Any],
    run: Path,
    folder: Path | None,
    mark: dict[str, Any] | None,
    device: torch.device,
    stop: StopRequest,
    on_start: Callable[[int, int], None] | None,
    on_step: Callable[[int, dict[str, float]], None] | None,
) -> torch.nn.Module:
    from accelerate import Accelerator

    batch, seed = options["batch"], options["seed"]
    accelerator = Accelerator(cpu=device.type != "cuda")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_classifier(options["arch"]).to(accelerator.device)
    steps_per_epoch = max(1, len(train) // batch)
    total = options["epochs"] * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=options["lr"], weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=options["lr"], total_steps=total)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    step, perm = 0, None
    if folder is not None and mark is not None:
        process = load_state_folder(accelerator, folder, mark)
        restore_rng(process["rng"], gen, source=folder / STATE_MARK)
        step = int(mark["step"])
        perm = _saved_order(folder / "epoch.safetensors", len(train))

    def save(step_done: int) -> None:
        save_state(accelerator, run, step_done, {"rng": capture_rng(gen)}, {"options": options},
                   {"epoch.safetensors": {"perm": perm}})  # fmt: skip

    if on_start is not None:
        on_start(step, total)
    images = train.images
    try:
        model.train()
        while step < total:
            within = step % steps_per_epoch
            if within == 0:  # each epoch's order from the run's generator, as it stood at the epoch's start
                perm = torch.randperm(len(train), generator=gen)
            assert perm is not None
            idx = perm[within * batch : (within + 1) * batch]
            x = grader_tensor(_augment(images[idx], gen)).to(accelerator.device)
            y = train.labels[idx].to(accelerator.device)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            step += 1
            if on_step is not None:
                on_step(step, {"loss": loss.item()})
            saved_now = step % steps_per_epoch == 0 and step < total
            if saved_now:
                save(step)
            stop_here(bool(stop), stop, step, total, saved_now, save, run)
    except KeyboardInterrupt:  # a second Ctrl-C: stop now; the last saved epoch stays consistent
        raise interrupted_twice(run) from None
    finally:
        release(accelerator)
    return accelerator.unwrap_model(model).to(device)


def _saved_order(path: Path, n: int) -> torch.Tensor:
    """The epoch's order a state saved: a permutation of the ``n`` training images, or a sentence."""
    from safetensors.torch import load_file

    try:
        perm = load_file(str(path))["perm"]
    except FileNotFoundError:
        raise UsageError(f"{path} is missing; it is not a state hw2 wrote. Delete {path.parent}, or start a "
                         "new run without {opt:resume}.") from None  # fmt: skip
    except Exception as exc:
        raise load_error(path, "a resume state written by hw2", exc) from None
    if perm.dtype != torch.int64 or perm.ndim != 1 or not torch.equal(perm.sort().values, torch.arange(n)):
        raise UsageError(f"{path} does not hold an order of the {n} training images (it has {perm.numel()} "
                         "entries); it is not a state of this run. Delete it, or start a new run without "
                         "{opt:resume}.")  # fmt: skip
    return perm


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
