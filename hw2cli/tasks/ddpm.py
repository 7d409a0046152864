"""P1 core: load a digit diffusion model, sample conditions, write the graded folders and the
report's figures. The CLI (``hw2cli.plugins.ddpm``) only parses options and prints results."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from hw2cli.data import DATASETS, DISPLAY_NAMES
from hw2cli.diffusion import guided_eps, sample
from hw2cli.diffusion.samplers import leading_gap
from hw2cli.errors import RunError, UsageError
from hw2cli.io.atomic import check_output_folder, confine, listed, remove_stale_temporaries, save_image
from hw2cli.io.checkpoints import DigitModel
from hw2cli.io.images import labelled_grid, to_uint8
from hw2cli.io.manifest import fingerprint, prepare_outputs

DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpm": 20, "unipc": 20}
GRADED_SEED = 2024


def default_batch(device: torch.device) -> int:
    """Images per forward pass: small batches keep a CPU's caches warm (measured: 100 is twice as
    fast as 500 on a 2-core machine); a GPU wants large ones."""
    return 500 if device.type == "cuda" else 100


def sample_digits(
    model: DigitModel,
    digits: Sequence[int],
    datasets: Sequence[str],
    **kwargs: Any,
) -> torch.Tensor:
    """Sample one image per (digit, data set) pair; returns uint8 ``[N, 3, 28, 28]`` on the CPU.

    Deterministic for a given seed: every starting noise comes from one generator over the whole
    set, so the batch size does not change which noise an image gets (the deterministic ``dpm``
    and ``ddim`` samplers then give the same images for any ``batch``); the per-step noise of
    ``ddpm`` comes from a generator per batch. Keyword arguments: those of :func:`iter_samples`.
    """
    return torch.cat([images for _, images in iter_samples(model, digits, datasets, **kwargs)])


def default_steps(model: DigitModel, sampler: str) -> int | None:
    """The sampler's steps recorded in the checkpoint (a distilled student's), else the sampler's default."""
    recorded = model.config.extra.get("sampler_steps", {})
    return int(recorded[sampler]) if isinstance(recorded, dict) and sampler in recorded else DEFAULT_STEPS[sampler]


def guidance_outside_training(model: DigitModel, guidance: float) -> str | None:
    """A sentence when a guidance-distilled student is asked for a weight outside the range it
    learned (it then extrapolates), else ``None``."""
    if not getattr(model.net, "guidance_distilled", False):
        return None
    lo, hi = model.config.extra.get("train", {}).get("guidance_range", (0.0, 4.0))
    if lo <= guidance <= hi:
        return None
    return (f"this distilled model learned guidance weights {lo:g} to {hi:g}; at w = {guidance:g} it "
            f"extrapolates (its teacher samples any weight).")  # fmt: skip


def iter_samples(
    model: DigitModel,
    digits: Sequence[int],
    datasets: Sequence[str],
    *,
    sampler: str = "dpm",
    steps: int | None = None,
    guidance: float = 2.0,
    seed: int = 0,
    batch: int | None = None,
    dtype: torch.dtype = torch.float32,
    clip_x0: bool = True,
    cuda_graph: bool = False,
    channels_last: bool | None = None,
    skip: Callable[[int, int], bool] | None = None,
    on_batch: Callable[[int], None] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, uint8 images)`` batch by batch; ``skip(start, stop)`` true leaves a batch out
    (it is then not sampled at all, and the others are unchanged). ``cuda_graph`` replays each
    guided network evaluation from one CUDA graph. ``channels_last`` (default: on a CPU, where
    oneDNN's convolutions are ~1.15× faster on NHWC) runs the network on NHWC tensors."""
    if sampler not in DEFAULT_STEPS:
        raise UsageError(f"the sampler {sampler!r} is not known; expected ddpm, ddim, dpm or unipc.")
    if len(digits) != len(datasets):
        raise ValueError("one data set per digit")
    if not math.isfinite(guidance):
        raise UsageError(f"the guidance weight must be a finite number, got {guidance}.")
    steps = steps if steps is not None else default_steps(model, sampler)
    batch = batch or default_batch(model.device)
    if batch < 1:
        raise UsageError(f"the batch size must be at least 1, got {batch}.")
    most = model.schedule.max_sampler_steps
    if steps is not None and not 1 <= steps <= most:
        raise UsageError(f"{{opt:steps}} {steps}: this model's schedule allows 1 to {most} sampler steps.")
    if sampler == "ddim" and steps is not None and (gap := leading_gap(model.schedule, steps)) is not None:
        raise UsageError(f"{{opt:steps}} {steps}: {gap}.")
    cond_all = torch.tensor([model.condition(d, n) for d, n in zip(digits, datasets, strict=True)])
    device = model.device
    null = torch.tensor([model.null_condition], device=device)
    channels_last = device.type == "cpu" if channels_last is None else channels_last
    model.net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    eps_model = guided_eps(model.net, guidance, null, device, dtype, channels_last=channels_last)
    if cuda_graph:
        from hw2cli.diffusion.wrappers import GraphedEps

        eps_model = GraphedEps(eps_model)
    lo, hi = model.config.data_range
    shape = (3, 28, 28)
    x_all = torch.randn((len(digits), *shape), generator=torch.Generator().manual_seed(seed))
    for k, start in enumerate(range(0, len(digits), batch)):
        stop = min(start + batch, len(digits))
        if skip is not None and skip(start, stop):
            if on_batch is not None:
                on_batch(stop - start)
            continue
        cond = cond_all[start:stop].to(device)
        x = x_all[start:stop].to(device)
        dev_gen = torch.Generator(device).manual_seed(seed * 1_000_003 + k)
        # pixel-space model: keep the predicted x0 inside the data range (Ho et al. clip it too)
        kwargs: dict[str, Any] = {"cond": cond, "callback": callback, "clip_x0": clip_x0}
        if sampler in ("ddpm", "ddim"):  # the two that draw noise
            kwargs["generator"] = dev_gen
        with torch.inference_mode():
            x = sample(sampler, eps_model, x, model.schedule, steps, **kwargs)
        if not torch.isfinite(x).all():
            reduced = (
                ""
                if dtype == torch.float32
                else f" in {str(dtype).removeprefix('torch.')} ({{opt:dtype}} fp32 may hold it)"
            )
            raise RunError(
                f"the {sampler} sampler produced NaN or infinite values at guidance {guidance:g}{reduced}: the "
                "network's outputs overflow, as a checkpoint of a diverged training run's does; sample another "
                "checkpoint."
            )
        yield start, to_uint8(x, (lo, hi))
        if on_batch is not None:
            on_batch(cond.shape[0])


def earlier_samples(out: Path, digit: int, datasets: Sequence[str], n: int) -> list[Path]:
    """Samples of an earlier, larger run that a run of ``n`` leaves beside its own:
    ``<dataset>_<digit>_NNN.png`` numbered past ``n``."""
    if not out.is_dir():
        return []
    pattern = re.compile(rf"^({'|'.join(map(re.escape, datasets))})_{digit}_(\d+)\.png$")
    found = ((p, pattern.match(p.name)) for p in out.iterdir())
    return sorted(p for p, m in found if m and int(m.group(2)) > n)


def sample_folder(
    model: DigitModel,
    digit: int,
    datasets: Sequence[str],
    n: int,
    out: Path,
    **kwargs: Any,
) -> tuple[list[Path], Path]:
    """``n`` samples of ``digit`` per data set as ``out/<dataset>_<digit>_001.png`` …, plus one grid
    (a row per data set) ``out/grid_digit<digit>.png``. Keyword arguments: :func:`iter_samples`'s.
    Files of an earlier run that this one does not overwrite are kept (see :func:`earlier_samples`)."""
    out = check_output_folder(Path(out))
    images = sample_digits(model, [digit] * (n * len(datasets)), [d for d in datasets for _ in range(n)], **kwargs)
    files: list[Path] = []
    with confine(out):
        for k, name in enumerate(datasets):
            chunk = images[k * n : (k + 1) * n]
            files += write_samples(chunk, [f"{name}_{digit}_{i:03d}.png" for i in range(1, n + 1)], out)
        title = f"digit {digit}: {n} per data set ({sampler_words(model, kwargs)}, seed {kwargs.get('seed', 0)})"
        grid = sample_grid(images, datasets, n, out / f"grid_digit{digit}.png", title)
    return files, grid


def sample_grid(
    images: torch.Tensor, datasets: Sequence[str], n: int, path: Path, title: str, per_row: int = 10
) -> Path:
    """The samples ``[len(datasets)·n, 3, H, W]`` in rows of ``per_row``, each row labelled with its
    data set (and which samples, past ten); more than 100 per data set go in a plain grid, a row
    per data set, unlabelled."""
    from hw2cli.io.images import in_rows, save_grid

    if n > 100:
        return save_grid(images, path, nrow=n)
    tiles, labels = [], []
    for k, name in enumerate(datasets):
        chunk, spans = in_rows(list(images[k * n : (k + 1) * n]), min(n, per_row), first=1)  # as mnistm_3_001.png
        tiles += chunk
        labels += [DISPLAY_NAMES.get(name, name) + (f" {span}" if n > per_row else "") for span in spans]
    return labelled_grid(torch.stack(tiles), path, rows=labels, title=title)


def write_samples(images: torch.Tensor, names: Sequence[str], folder: Path) -> list[Path]:
    return [save_image(img, folder / name) for img, name in zip(images, names, strict=True)]


def generate_graded(
    model: DigitModel,
    out: Path,
    *,
    per_digit: int = 50,
    sampler: str = "dpm",
    steps: int | None = None,
    guidance: float = 2.0,
    seed: int = GRADED_SEED,
    batch: int | None = None,
    dtype: torch.dtype = torch.float32,
    clip_x0: bool = True,
    cuda_graph: bool = False,
    channels_last: bool | None = None,
    resume: bool = True,
    state_dir: Path | None = None,
    on_batch: Callable[[int], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """The ``hw2_1.sh`` contract: ``out/{mnistm,svhn}/{digit}_{001..050}.png``, nothing else there.

    With ``resume`` (the default) a rerun after an interruption keeps the finished images of a
    run with the same settings and samples only the batches that are missing: the result is
    byte-identical to an uninterrupted run. Returns ``{dataset: images written}`` and, under
    ``"reused"``, how many finished images were kept. ``state_dir`` keeps the record of the
    settings (default: ``out``'s parent).
    """
    if not 1 <= per_digit <= 999:
        raise UsageError(f"the number of images per digit must be 1 to 999, got {per_digit}.")
    names = [f"{d}_{i:03d}.png" for d in range(10) for i in range(1, per_digit + 1)]
    check_output_folder(out)
    for dataset in DATASETS:
        folder = out / dataset
        if folder.exists():
            if not folder.is_dir():
                raise UsageError(f"{folder} exists and is not a folder.")
            remove_stale_temporaries(folder)
            stray = sorted(p.name for p in folder.iterdir() if p.name not in set(names))
            if stray:
                raise UsageError(
                    f"{folder} already holds {listed(stray)}; the grader reads every file "
                    "there, so use an empty output folder."
                )
    digits = [int(n[0]) for n in names]
    batch = batch or default_batch(model.device)
    settings = {
        "command": "ddpm generate",
        "model": model.source if model.path is None else f"{model.source}:{fingerprint(model.path)}",
        "sampler": sampler,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "per_digit": per_digit,
        "clip_x0": clip_x0,
        "dtype": str(dtype),
        "device": model.device.type,
        "batch": batch if sampler == "ddpm" else None,  # only DDPM's per-batch noise depends on it
        "channels_last": model.device.type == "cpu" if channels_last is None else channels_last,
    }
    files = [out / dataset / name for dataset in DATASETS for name in names]
    done = prepare_outputs(out, settings, files, state_dir=state_dir or out.parent, resume=resume, note=note)
    written = {"reused": len(done)}
    with confine(out):
        for k, dataset in enumerate(DATASETS):
            paths = [out / dataset / name for name in names]
            written[dataset] = 0
            for start, images in iter_samples(
                model,
                digits,
                [dataset] * len(digits),
                sampler=sampler,
                steps=steps,
                guidance=guidance,
                seed=seed + 7919 * k,
                batch=batch,
                dtype=dtype,
                clip_x0=clip_x0,
                cuda_graph=cuda_graph,
                channels_last=channels_last,
                skip=lambda a, b, paths=paths: all(p in done for p in paths[a:b]),
                on_batch=on_batch,
            ):
                # a batch that a kill cut short holds kept files too: only the missing ones are written
                # (the kept ones are these very bytes) and counted, so written + kept is the whole set
                missing = [i for i, p in enumerate(paths[start : start + len(images)]) if p not in done]
                chosen = images[missing] if len(missing) < len(images) else images
                written[dataset] += len(write_samples(chosen, [names[start + i] for i in missing], out / dataset))
    return written


def grid_figure(
    model: DigitModel, dataset: str, path: Path, *, columns: int = 10, seed: int = 0, **sample_kw: Any
) -> Path:
    """Rows: digits 0–9; columns: different noise. Labelled PNG."""
    digits = [d for d in range(10) for _ in range(columns)]
    images = sample_digits(model, digits, [dataset] * len(digits), seed=seed, **sample_kw)
    return labelled_grid(
        images,
        path,
        rows=[str(d) for d in range(10)],
        cols=None,
        title=f"{DISPLAY_NAMES[dataset]}: {columns} samples per digit ({sampler_words(model, sample_kw)}, "
        f"seed {seed}; {model.source})",
        row_title="digit",
    )


def sampler_words(model: DigitModel, sample_kw: dict[str, Any]) -> str:
    """How the images were sampled, for a figure's title: "DPM-Solver++, 6 steps, w = 2"."""
    sampler = sample_kw.get("sampler", "dpm")
    steps = sample_kw.get("steps") or default_steps(model, sampler) or model.schedule.max_sampler_steps
    name = {"dpm": "DPM-Solver++", "unipc": "UniPC", "ddim": "DDIM", "ddpm": "DDPM"}[sampler]
    return f"{name}, {steps} steps, w = {sample_kw.get('guidance', 2.0):g}"


def trajectory_figure(
    model: DigitModel,
    path: Path,
    *,
    timesteps: Sequence[int] | None = None,
    digit: int = 0,
    guidance: float = 2.0,
    seed: int = 0,
    clip_x0: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> Path:
    """Six snapshots of the reverse process (full-length DDPM) of the first ``digit`` of each data set.
    ``on_step(1)`` hears every step (``len(DATASETS)`` × the schedule's length in all).

    The column for ``t`` shows ``x`` right after the denoising step at timestep ``t``, so the
    column of the schedule's first timestep (0; 1 for TeaPearce's) is the finished image and
    t = T − 1 is one step from pure noise. Columns follow the order of ``timesteps`` (default:
    six evenly spaced over the schedule, from noise to image).
    """
    first, last = model.schedule.first_timestep, model.schedule.num_steps - 1
    if timesteps is None:
        timesteps = [first + round((last - first) * k / 5) for k in range(5, -1, -1)]
    timesteps = list(dict.fromkeys(int(t) for t in timesteps))  # the user's order, each once
    bad = [t for t in timesteps if not first <= t <= last]
    if bad:
        raise UsageError(f"the timestep {bad[0]} is outside this model's schedule ({first} to {last}).")
    wanted = set(timesteps)
    rows = []
    for dataset in DATASETS:
        snaps: dict[int, torch.Tensor] = {}

        def grab(info: dict[str, Any], snaps: dict[int, torch.Tensor] = snaps) -> None:
            if info["t"] in wanted:
                snaps[info["t"]] = info["x"][:1].detach().clone()
            if on_step is not None:
                on_step(1)

        x_start = torch.randn((1, 3, 28, 28), generator=torch.Generator().manual_seed(seed)).to(model.device)
        null = torch.tensor([model.null_condition], device=model.device)
        cond = torch.tensor([model.condition(digit, dataset)], device=model.device)
        eps = guided_eps(model.net, guidance, null, model.device, torch.float32)
        with torch.inference_mode():
            sample(
                "ddpm",
                eps,
                x_start,
                model.schedule,
                None,
                cond=cond,
                callback=grab,
                generator=torch.Generator(model.device).manual_seed(seed),
                clip_x0=clip_x0,
            )
        lo, hi = model.config.data_range
        rows.append(torch.cat([to_uint8(snaps[t], (lo, hi)) for t in timesteps]))
    steps = model.schedule.max_sampler_steps
    return labelled_grid(
        torch.cat(rows),
        path,
        rows=[DISPLAY_NAMES[d] for d in DATASETS],
        cols=[f"t = {t}" for t in timesteps],
        title=f"Reverse process of the first {digit}: x after the DDPM step at t ({steps} steps, "
        f"w = {guidance:g}, seed {seed}{'' if clip_x0 else ', x0 not clipped'}; {model.source})",
        scale=5,
    )
