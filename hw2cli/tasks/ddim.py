"""P2 core: DDIM on the homework's face UNet (or, without one, the embedded digit model): the
graded generation (:func:`graded_sample`), the eta grid (:func:`eta_grid_figure`) and slerp/lerp
interpolation (:func:`interpolation_figure`), one call per command. The grader's MSE is in
:mod:`hw2cli.tasks.grading`."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hw2cli.data import DISPLAY_NAMES, IMAGE_SUFFIXES
from hw2cli.data.noise import load_noise_dir, load_noise_file, seeded_noise, stack_noise
from hw2cli.diffusion import NoiseSchedule, make_timesteps, sample_ddim
from hw2cli.diffusion.samplers import leading_gap
from hw2cli.diffusion.wrappers import EpsModel, GraphedEps, autocast_eps, guided_eps
from hw2cli.errors import RunError, UsageError
from hw2cli.io.atomic import (
    check_output_file,
    check_output_folder,
    confine,
    listed,
    remove_stale_temporaries,
    save_image,
    save_safetensors,
)
from hw2cli.io.checkpoints import load_face_unet, load_model
from hw2cli.io.images import labelled_grid, to_uint8
from hw2cli.io.manifest import fingerprint, prepare_outputs


@dataclass
class EpsSource:
    """A network ready for the sampler: ``eps(x, t, None)``, its schedule and its image size."""

    eps: EpsModel
    schedule: NoiseSchedule
    side: int | None  # None: any multiple of 32 (the face UNet)
    description: str
    device: torch.device
    data_range: tuple[float, float] = (-1.0, 1.0)  # the pixel values the network was trained on


@dataclass
class DDIMOptions:
    """The homework's DDIM: 50 steps on t = 981, 961, ..., 1; ᾱ_prev = ᾱ[t − 20], then ᾱ[0]."""

    steps: int = 50
    eta: float = 0.0
    alpha_prev: str = "next"  # or "t-1"
    final_alpha: str = "first"  # or "one"
    clip_x0: bool | None = None  # None: on for the (guided) digit model, off for the face UNet (the homework's)
    offset: int = 1

    def validate(self) -> None:
        if not 1 <= self.steps <= 1000:
            raise UsageError(f"the number of DDIM steps is {self.steps}; expected 1 to 1000.")
        if not (math.isfinite(self.eta) and self.eta >= 0):
            raise UsageError(f"eta is {self.eta}; expected a finite value >= 0 (0 is deterministic DDIM, 1 DDPM-like).")
        if self.alpha_prev not in ("next", "t-1"):
            raise UsageError(f"the alpha-prev rule {self.alpha_prev!r} is not known; expected next or t-1.")
        if self.final_alpha not in ("first", "one"):
            raise UsageError(f"the final-alpha rule {self.final_alpha!r} is not known; expected first or one.")


# ---------------------------------------------------------------------------- models


@dataclass
class SourceSpec:
    """Which network a DDIM command runs: the face UNet at ``unet``, else the digit model
    (``checkpoint`` or the embedded one) conditioned on ``digit`` of ``dataset``."""

    unet: Path | None = None
    checkpoint: Path | None = None
    digit: int = 0
    dataset: str = "mnistm"
    cuda_graph: bool = False


def open_source(spec: SourceSpec, device: torch.device, dtype: torch.dtype = torch.float32) -> EpsSource:
    if spec.cuda_graph and device.type != "cuda":
        from hw2cli.errors import RunError

        raise RunError("a CUDA graph needs a CUDA device; there is none here.")
    if spec.unet is not None:
        return face_source(spec.unet, device, dtype, cuda_graph=spec.cuda_graph)
    return digit_source(device, digit=spec.digit, dataset=spec.dataset, dtype=dtype, checkpoint=spec.checkpoint)


def _with_clip_default(opts: DDIMOptions, source: EpsSource) -> DDIMOptions:
    """Unset ``clip_x0``: clip for the guided digit model (unclipped, guided DDIM diverges at
    0 < η < 1), not for the face UNet, whose graded outputs are made without clipping."""
    if opts.clip_x0 is not None:
        return opts
    return DDIMOptions(**{**opts.__dict__, "clip_x0": source.side is not None})


def normalize_default(normalize: str | None, source: EpsSource) -> str:
    """Unset ``normalize``: minmax for the face UNet (what passing P2 solutions saved), clip to the
    model's data range for the digit model (as every digit command renders it)."""
    return normalize or ("minmax" if source.side is None else "clip")


def face_source(
    unet: str | Path, device: torch.device, dtype: torch.dtype = torch.float32, *, cuda_graph: bool = False
) -> EpsSource:
    """The face UNet as a sampler callable, in channels_last on CUDA and on a CPU (oneDNN's
    convolutions: a 256² step 1.14× faster on a 2-core CPU, ``benchmarks/RESULTS.md``),
    optionally replayed from a CUDA graph."""
    model = load_face_unet(unet, device)
    net: EpsModel = model
    if device.type in ("cuda", "cpu"):
        model = model.to(memory_format=torch.channels_last)

        def net(x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
            return model(x.contiguous(memory_format=torch.channels_last), t, cond).contiguous()

    eps = autocast_eps(net, device, dtype)
    if cuda_graph:
        eps = GraphedEps(eps)
    return EpsSource(eps, NoiseSchedule.linear(), None, f"face UNet ({unet})", device)


def digit_source(
    device: torch.device,
    *,
    digit: int = 0,
    dataset: str = "mnistm",
    guidance: float = 2.0,
    checkpoint: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> EpsSource:
    """The embedded digit model conditioned on one digit, so the P2 commands work right after install."""
    model = load_model(checkpoint, device)
    cond = torch.tensor([model.condition(digit, dataset)], device=device)
    null = torch.tensor([model.null_condition], device=device)
    guided = guided_eps(model.net, guidance, null, device, dtype)

    def eps(x: torch.Tensor, t: torch.Tensor, _: Any = None) -> torch.Tensor:
        return guided(x, t, cond.expand(x.shape[0]))

    return EpsSource(
        eps,
        model.schedule,
        28,
        f"digit model, digit {digit} ({DISPLAY_NAMES.get(dataset, dataset)}, {model.source})",
        device,
        data_range=tuple(model.config.data_range),
    )


# ---------------------------------------------------------------------------- noise


class NoiseDoesNotFit(UsageError):
    """Noise of another size than the network makes (face noise given to the digit model)."""


def check_noise(noise: torch.Tensor, source: EpsSource, names: Sequence[str]) -> None:
    h, w = noise.shape[-2:]
    if source.side is not None and (h, w) != (source.side, source.side):
        raise NoiseDoesNotFit(
            f"{names[0]} is {h}×{w}, but the {source.description} makes {source.side}×{source.side} images"
        )
    if source.side is None and (h % 32 or w % 32):
        raise UsageError(f"{names[0]} is {h}×{w}; the face UNet needs sides divisible by 32.")


# ---------------------------------------------------------------------------- sampling


class _StepProgress:
    """Reports a batch of ``n`` images to ``on_batch`` a step at a time (``n / steps`` each), so a
    progress bar moves while a face takes minutes on a CPU; the batch's reports add up to ``n``."""

    def __init__(self, n: int, steps: int, on_batch: Callable[[float], None] | None) -> None:
        self.n, self.per, self.sent, self.on_batch = n, n / max(steps, 1), 0.0, on_batch

    def step(self, _: Any = None) -> None:
        if self.on_batch is not None and self.sent + self.per < self.n - 1e-9:
            self.on_batch(self.per)
            self.sent += self.per

    def finish(self) -> None:
        if self.on_batch is not None:
            self.on_batch(self.n - self.sent)


def iter_ddim(
    source: EpsSource,
    noise: torch.Tensor,
    opts: DDIMOptions,
    *,
    seed: int = 0,
    batch: int = 10,
    skip: Callable[[int, int], bool] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """DDIM from ``x_T = noise`` (``[N, 3, H, W]``), batch by batch: yields ``(start, x_0)`` as float32
    on the CPU. ``skip(start, stop)`` true leaves a batch out (a resumed run); batch ``k`` draws its
    per-step noise (η > 0) from its own seed, so a skipped batch changes no other."""
    opts.validate()
    if batch < 1:
        raise UsageError(f"the batch size is {batch}; expected at least 1.")
    try:
        timesteps = make_timesteps(source.schedule, opts.steps, "leading", opts.offset)
    except ValueError as exc:
        raise UsageError(f"{opts.steps} DDIM steps do not fit this model's schedule: {exc}.") from None
    gap = leading_gap(source.schedule, opts.steps, opts.offset)
    if gap is not None:
        raise UsageError(f"{{opt:steps}} {opts.steps}: {gap}.")
    for k, start in enumerate(range(0, noise.shape[0], batch)):
        stop = min(start + batch, noise.shape[0])
        if skip is not None and skip(start, stop):
            if on_batch is not None:
                on_batch(stop - start)
            continue
        x = noise[start:stop].to(source.device)
        gen = torch.Generator(source.device).manual_seed(seed * 1_000_003 + k) if opts.eta > 0 else None
        progress = _StepProgress(stop - start, len(timesteps), on_batch)
        x = sample_ddim(
            source.eps,
            x,
            source.schedule,
            timesteps,
            generator=gen,
            eta=opts.eta,
            clip_x0=bool(opts.clip_x0),
            alpha_prev=opts.alpha_prev,
            final_alpha=opts.final_alpha,
            callback=progress.step if on_batch is not None else None,
        )
        progress.finish()
        if not bool(torch.isfinite(x).all()):  # min–max would save NaN as a black image, and exit 0
            raise RunError(
                f"the {source.description} produced NaN or infinite values from noise {start}–{stop - 1}; nothing of "
                "this batch is written. Check that the noise is standard normal and the weights are the trained ones."
            )
        yield start, x.float().cpu()


def run_ddim(
    source: EpsSource,
    noise: torch.Tensor,
    opts: DDIMOptions,
    *,
    seed: int = 0,
    batch: int = 10,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """DDIM from ``x_T = noise`` (``[N, 3, H, W]``); returns the final ``x_0`` as float32 on the CPU."""
    return torch.cat([x for _, x in iter_ddim(source, noise, opts, seed=seed, batch=batch, on_batch=on_batch)])


NORMALIZE = ("minmax", "clip")


def to_images(
    x: torch.Tensor, normalize: str = "minmax", data_range: tuple[float, float] = (-1.0, 1.0)
) -> torch.Tensor:
    """Per-image min–max to [0, 1] (what passing solutions saved) or clipping ``data_range`` → uint8."""
    if normalize not in NORMALIZE:
        raise UsageError(f"the normalization {normalize!r} is not known; expected minmax or clip.")
    return to_uint8(x, data_range, mode=normalize)


def save_named(images: torch.Tensor, names: Sequence[str], out: Path) -> list[Path]:
    return [save_image(img, out / f"{name}.png") for img, name in zip(images, names, strict=True)]


class FinishedBatches:
    """The finished batches of a figure, kept as safetensors (uint8 images) in
    ``state_dir/outputs/figure-<key of its settings>/`` until the figure is written, so an
    interrupted figure continues where it stopped: on a CPU one face takes minutes, and the
    report's η grid is 20 of them. ``state_dir`` None keeps nothing."""

    def __init__(self, state_dir: Path | None, settings: dict[str, Any], *, resume: bool = True) -> None:
        key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:24]
        self.folder = None if state_dir is None else Path(state_dir) / "outputs" / f"figure-{key}"
        self.reused = 0
        if self.folder is not None:
            self._forget_abandoned(self.folder.parent)
        if self.folder is not None and not resume:
            shutil.rmtree(self.folder, ignore_errors=True)

    KEEP_DAYS = 14

    def _forget_abandoned(self, outputs: Path) -> None:
        """Rows of figures never finished (nor rerun with their settings) for ``KEEP_DAYS`` go."""
        import time

        cutoff = time.time() - self.KEEP_DAYS * 86400
        for folder in outputs.glob("figure-*") if outputs.is_dir() else []:
            try:
                if folder != self.folder and folder.is_dir() and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue

    def load(self, name: str, on_batch: Callable[[int], None] | None = None) -> torch.Tensor | None:
        """The images of batch ``name`` if an earlier run with these settings finished it."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = None if self.folder is None else self.folder / f"{name}.safetensors"
        if path is None or not path.is_file():
            return None
        try:
            images = load_file(str(path))["images"]
        except (SafetensorError, KeyError, OSError):
            return None
        self.reused += images.shape[0]
        if on_batch is not None:
            on_batch(images.shape[0])
        return images

    def save(self, name: str, images: torch.Tensor) -> torch.Tensor:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            with confine(self.folder):
                save_safetensors({"images": images}, self.folder / f"{name}.safetensors")
        return images

    def finish(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------------------- figures


def eta_grid(
    source: EpsSource,
    noise: torch.Tensor,
    names: Sequence[str],
    etas: Sequence[float],
    path: Path,
    opts: DDIMOptions,
    *,
    seed: int = 0,
    normalize: str = "minmax",
    on_batch: Callable[[int], None] | None = None,
    kept: FinishedBatches | None = None,
) -> Path:
    """Rows: eta; columns: noise. Each row uses the same starting noise and the same seed."""
    kept = kept or FinishedBatches(None, {})
    rows = []
    for k, eta in enumerate(etas):
        images = kept.load(f"row-{k}", on_batch)
        if images is None:
            row_opts = DDIMOptions(**{**opts.__dict__, "eta": eta})
            x = run_ddim(source, noise, row_opts, seed=seed, batch=len(names))
            images = kept.save(f"row-{k}", to_images(x, normalize, source.data_range))
            if on_batch is not None:
                on_batch(len(names))
        rows.append(images)
    return labelled_grid(
        torch.cat(rows),
        path,
        rows=[f"η = {eta:g}" for eta in etas],
        cols=list(names),
        title=f"DDIM, {opts.steps} steps, rows η, columns noise: {source.description}",
    )


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985) between two noise tensors; falls back to lerp when
    they are (nearly) parallel, where sin θ → 0 would divide by zero."""
    a64, b64 = a.double(), b.double()
    cos = (a64.flatten() @ b64.flatten()) / (a64.norm() * b64.norm())
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    if sin.abs() < eps:
        return lerp(a, b, alpha)
    out = torch.sin((1 - alpha) * theta) / sin * a64 + torch.sin(alpha * theta) / sin * b64
    return out.to(a.dtype)


def lerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    return (1 - alpha) * a + alpha * b


def interpolate(
    source: EpsSource,
    a: torch.Tensor,
    b: torch.Tensor,
    alphas: Sequence[float],
    modes: Sequence[str],
    path: Path,
    opts: DDIMOptions,
    *,
    normalize: str = "minmax",
    batch: int = 11,
    on_batch: Callable[[int], None] | None = None,
    kept: FinishedBatches | None = None,
    ends: tuple[str, str] = ("a", "b"),
) -> Path:
    """Rows: slerp and/or lerp; columns: alpha. DDIM (eta = 0 unless set) from each mixed noise;
    ``ends`` names the two noises in the title."""
    kept = kept or FinishedBatches(None, {})
    rows = []
    for mode in modes:
        if mode not in ("slerp", "lerp"):
            raise UsageError(f"the interpolation {mode!r} is not known; expected slerp or lerp.")
        mix = slerp if mode == "slerp" else lerp
        for name, x in zip(ends, (a, b), strict=True):
            if mode == "slerp" and not bool(x.any()):
                raise UsageError(f"{name} is all zeros: slerp needs a direction from each noise; use --mode lerp.")
        noise = torch.cat([mix(a, b, alpha) for alpha in alphas])
        starts = range(0, noise.shape[0], batch)
        done = {start: kept.load(f"{mode}-{start // batch}") for start in starts}  # iter_ddim counts them
        for start, x in iter_ddim(
            source, noise, opts, batch=batch, on_batch=on_batch, skip=lambda a, _, done=done: done[a] is not None
        ):
            done[start] = kept.save(f"{mode}-{start // batch}", to_images(x, normalize, source.data_range))
        rows.append(torch.cat([done[start] for start in starts]))
    return labelled_grid(
        torch.cat(rows),
        path,
        rows=list(modes),
        cols=[f"α = {alpha:g}" for alpha in alphas],
        title=f"{' and '.join(modes)} from {ends[0]} (α = 0) to {ends[1]} (α = 1): DDIM, {opts.steps} steps, "
        f"η = {opts.eta:g}; {source.description}",
    )


# ---------------------------------------------------------------------------- the commands


def graded_sample(
    noise_dir: str | Path,
    out: str | Path,
    spec: SourceSpec,
    opts: DDIMOptions,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    batch: int | None = None,
    normalize: str | None = None,
    resume: bool = True,
    state_dir: Path | None = None,
    on_start: Callable[[int, str], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> GradedImages:
    """The ``hw2_2.sh`` contract: ``out/<name>.png`` for every ``<name>.pt`` in ``noise_dir``.

    Each batch's images are written as soon as it is done (``batch`` default: 10 on a GPU, 1 on a
    CPU, where one face takes minutes). With ``resume`` (the default) a rerun after an
    interruption keeps the images a run with the same settings (network, noise, DDIM options,
    seed, batch, normalisation, device, dtype) finished and makes only the missing ones, byte for
    byte what an uninterrupted run writes; the settings are recorded in ``state_dir`` (default:
    ``out``'s parent), so ``out`` holds only images.
    """
    out = check_output_folder(Path(out))
    names, noise = load_noise_dir(noise_dir)
    files = [out / f"{name}.png" for name in names]
    if out.is_dir():
        remove_stale_temporaries(out)
        stray = sorted(p.name for p in out.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p not in set(files))
        if stray:  # the grader pairs OUT/<name>.png with GT/<name>.png: an old image would pass for a new one
            raise UsageError(
                f"{out} already holds {listed(stray)}, which this run does not make (its noise "
                "folder has no such .pt); use an empty output folder or remove them."
            )
    source = open_source(spec, device, dtype)
    opts = _with_clip_default(opts, source)
    normalize = normalize_default(normalize, source)
    check_noise(noise, source, names)
    batch = batch or (10 if device.type == "cuda" else 1)
    settings = {"command": "ddim sample", **_ddim_settings(spec, noise, opts, device, dtype), "seed": seed,
                "batch": batch, "normalize": normalize}  # fmt: skip
    done = prepare_outputs(out, settings, files, state_dir=state_dir or out.parent, resume=resume, note=note)
    if on_start is not None:
        on_start(len(names), source.description)
    with confine(out):
        for start, x in iter_ddim(
            source, noise, opts, seed=seed, batch=batch, on_batch=on_batch,
            skip=lambda a, b: all(f in done for f in files[a:b]),
        ):  # fmt: skip
            save_named(to_images(x, normalize, source.data_range), names[start : start + x.shape[0]], out)
    return GradedImages(files, reused=len(done))


@dataclass
class GradedImages:
    """What :func:`graded_sample` wrote: every image's path, and how many a previous run had finished."""

    paths: list[Path]
    reused: int = 0


def _digit_identity(spec: SourceSpec) -> str:
    model = "embedded" if spec.checkpoint is None else fingerprint(spec.checkpoint)
    return f"digit model {model}, digit {spec.digit} of {spec.dataset}"


GRID_COLUMNS = 4  # the report's eta grid: noises 00-03


def _grid_noise(
    source: EpsSource,
    files: Sequence[Path],
    noise_dir: Path | None,
    default_dir: Path | None,
    count: int | None,
    seed: int,
) -> tuple[list[str], torch.Tensor]:
    """The columns of the eta grid: given files, else the first ``count`` of a folder (the homework's
    by default with the face UNet), else ``count`` seeded noises for the digit model."""
    if files:
        return [Path(f).stem for f in files], stack_noise([Path(f) for f in files])
    folder = noise_dir or (default_dir if source.side is None else None)
    if folder is not None:
        names, x = load_noise_dir(folder)
        if count is None:  # the report's four (00-03), or all of a smaller folder
            count = min(GRID_COLUMNS, len(names))
        if len(names) < count:
            raise UsageError(
                f"{folder} holds {len(names)} noise file(s), fewer than the {count} columns asked; lower {{opt:count}}."
            )
        return names[:count], x[:count]
    count = count or GRID_COLUMNS
    return [f"seed {seed}, #{i}" for i in range(count)], seeded_noise(count, source.side or 256, seed)


def eta_grid_figure(
    out: str | Path,
    spec: SourceSpec,
    etas: Sequence[float],
    opts: DDIMOptions,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    noise_files: Sequence[Path] = (),
    noise_dir: Path | None = None,
    default_noise_dir: Path | None = None,
    count: int | None = None,
    seed: int = 0,
    normalize: str | None = None,
    resume: bool = True,
    state_dir: Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Path:
    """The report's grid: rows η, columns noise (the homework's 00–03 by default). With a
    ``state_dir``, finished rows are kept there until the figure is written (:class:`FinishedBatches`)."""
    out = check_output_file(Path(out), "figure", image=True)
    for eta in etas:
        DDIMOptions(**{**opts.__dict__, "eta": eta}).validate()
    source = open_source(spec, device, dtype)
    opts = _with_clip_default(opts, source)
    normalize = normalize_default(normalize, source)
    names, x = _grid_noise(source, noise_files, noise_dir, default_noise_dir, count, seed)
    check_noise(x, source, names)
    if on_start is not None:
        on_start(len(etas) * len(names))
    figure = {"command": "ddim eta-grid", "etas": list(etas), "seed": seed, "normalize": normalize}
    kept = FinishedBatches(state_dir, {**figure, **_ddim_settings(spec, x, opts, device, dtype)}, resume=resume)
    with confine(out.parent):
        path = eta_grid(source, x, names, etas, out, opts, seed=seed, normalize=normalize, on_batch=on_batch, kept=kept)
    kept.finish()
    return path


def _ddim_settings(
    spec: SourceSpec, noise: torch.Tensor, opts: DDIMOptions, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """What decides the pixels of any DDIM output besides its command's own options: network, noise, DDIM options."""
    return {
        "network": fingerprint(spec.unet) if spec.unet is not None else _digit_identity(spec),
        "noise": hashlib.sha256(noise.contiguous().numpy().tobytes()).hexdigest()[:32],
        "options": opts.__dict__,
        "device": device.type,
        "dtype": str(dtype),
    }


def interpolation_figure(
    out: str | Path,
    spec: SourceSpec,
    alphas: Sequence[float],
    modes: Sequence[str],
    opts: DDIMOptions,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    a: Path | None = None,
    b: Path | None = None,
    default_noise_dir: Path | None = None,
    seed: int = 0,
    normalize: str | None = None,
    resume: bool = True,
    state_dir: Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Path:
    """Slerp and/or lerp between two noises (the homework's 00 and 01 by default with the face UNet,
    two seeded noises for the digit model), DDIM from each mix, one labelled figure."""
    out = check_output_file(Path(out), "figure", image=True)
    if (a is None) != (b is None):
        raise UsageError("give both noise files A and B, or neither.")
    source = open_source(spec, device, dtype)
    opts = _with_clip_default(opts, source)
    normalize = normalize_default(normalize, source)
    if a is None and source.side is None and default_noise_dir is not None:
        a, b = default_noise_dir / "00.pt", default_noise_dir / "01.pt"
    if a is not None and b is not None:
        xa, xb = load_noise_file(a), load_noise_file(b)
        if xa.shape != xb.shape:
            raise UsageError(f"{a.name} has shape {list(xa.shape)} but {b.name} has {list(xb.shape)}.")
        names = [a.name, b.name]
    else:
        pair = seeded_noise(2, source.side or 256, seed)
        xa, xb = pair[:1], pair[1:]
        names = [f"seed {seed}"]
    check_noise(xa, source, names)
    ends = (names[0], names[1]) if len(names) == 2 else (f"noise 1 of seed {seed}", f"noise 2 of seed {seed}")
    if on_start is not None:
        on_start(len(alphas) * len(modes))
    batch = 11 if device.type == "cuda" else 1  # on a CPU a face takes minutes: keep each one as it is done
    figure = {"command": "ddim interpolate", "alphas": list(alphas), "modes": list(modes), "normalize": normalize,
              "batch": batch}  # fmt: skip
    settings = {**figure, **_ddim_settings(spec, torch.cat([xa, xb]), opts, device, dtype)}
    kept = FinishedBatches(state_dir, settings, resume=resume)
    with confine(out.parent):
        path = interpolate(
            source,
            xa,
            xb,
            alphas,
            modes,
            out,
            opts,
            normalize=normalize,
            batch=batch,
            on_batch=on_batch,
            kept=kept,
            ends=ends,
        )
    kept.finish()
    return path
