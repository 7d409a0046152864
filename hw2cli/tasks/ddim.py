"""P2 core: DDIM on the homework's face UNet (or, without one, the embedded digit model), the
graded generation, the eta grid, slerp/lerp interpolation and the grader's MSE."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hw2cli.diffusion import NoiseSchedule, classifier_free_guidance, make_timesteps, sample_ddim
from hw2cli.diffusion.wrappers import EpsModel, autocast_eps
from hw2cli.errors import UsageError
from hw2cli.io.atomic import save_image
from hw2cli.io.checkpoints import load_state_into, torch_load
from hw2cli.io.images import labelled_grid, load_rgb, to_uint8
from hw2cli.models import FaceUNet


@dataclass
class EpsSource:
    """A network ready for the sampler: ``eps(x, t, None)``, its schedule and its image size."""

    eps: EpsModel
    schedule: NoiseSchedule
    side: int | None  # None: any multiple of 32 (the face UNet)
    description: str
    device: torch.device


@dataclass
class DDIMOptions:
    """The homework's DDIM: 50 steps on t = 981, 961, ..., 1; ᾱ_prev = ᾱ[t − 20], then ᾱ[0]."""

    steps: int = 50
    eta: float = 0.0
    alpha_prev: str = "next"  # or "t-1"
    final_alpha: str = "first"  # or "one"
    clip_x0: bool = False
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


def load_face_unet(path: str | Path, device: torch.device) -> FaceUNet:
    """The homework's ``UNet.pt`` (a plain state dict), loaded strictly."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"the face UNet {path} is a folder; pass the UNet.pt file inside it (hw2_data/face/UNet.pt).")
    if not path.is_file():
        raise UsageError(f"the face UNet {path} does not exist; pass the homework's hw2_data/face/UNet.pt.")
    state = torch_load(path, "a PyTorch state dict")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "down1.weight" not in state:
        raise UsageError(f"{path} is not a face UNet state dict (it has no 'down1.weight').")
    width = int(state["down1.weight"].shape[0])
    if width % 32:
        raise UsageError(f"{path} has width {width}; the face UNet's width is a multiple of 32 (official: 128).")
    model = FaceUNet(width=width)
    load_state_into(model, state, str(path))
    return model.to(device).eval()


def face_source(
    unet: str | Path, device: torch.device, dtype: torch.dtype = torch.float32, *, cuda_graph: bool = False
) -> EpsSource:
    """The face UNet as a sampler callable; on CUDA in channels_last, optionally replayed from a CUDA graph."""
    model = load_face_unet(unet, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    eps = autocast_eps(model, device, dtype)
    if cuda_graph:
        from hw2cli.diffusion.wrappers import GraphedEps

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
    from hw2cli.tasks.ddpm import check_digit, load_model

    check_digit(digit)
    model = load_model(checkpoint, device)
    cond = torch.tensor([model.config.condition_index(digit, model.dataset_index(dataset))], device=device)
    null = torch.tensor([model.null_condition], device=device)
    guided = classifier_free_guidance(autocast_eps(model.net, device, dtype), guidance, null)

    def eps(x: torch.Tensor, t: torch.Tensor, _: Any = None) -> torch.Tensor:
        return guided(x, t, cond.expand(x.shape[0]))

    return EpsSource(eps, model.schedule, 28, f"digit model, digit {digit} ({dataset}, {model.source})", device)


# ---------------------------------------------------------------------------- noise


def load_noise_file(path: str | Path) -> torch.Tensor:
    """A noise file as ``[1, 3, H, W]`` float32; any other content is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"noise file {path} does not exist.")
    obj = torch_load(path, "a tensor file")
    if not isinstance(obj, torch.Tensor):
        raise UsageError(f"{path} holds a {type(obj).__name__}, not a tensor of shape [1, 3, H, W].")
    if obj.ndim == 3:
        obj = obj[None]
    if obj.ndim != 4 or obj.shape[0] != 1 or obj.shape[1] != 3:
        raise UsageError(f"{path} has shape {list(obj.shape)}; expected [1, 3, H, W] or [3, H, W].")
    if not obj.is_floating_point():
        raise UsageError(f"{path} holds {obj.dtype} values; expected floating-point noise.")
    if not torch.isfinite(obj).all():
        raise UsageError(f"{path} holds NaN or infinite values; noise must be finite.")
    return obj.float()


def load_noise_dir(folder: str | Path) -> tuple[list[str], torch.Tensor]:
    """Every ``*.pt`` in ``folder``, sorted by name, stacked to ``[N, 3, H, W]``."""
    folder = Path(folder)
    if folder.is_file():
        raise UsageError(f"the noise folder {folder} is a file; pass the folder holding 00.pt, 01.pt, ...")
    if not folder.is_dir():
        raise UsageError(f"the noise folder {folder} does not exist.")
    files = sorted(folder.glob("*.pt"))
    if not files:
        raise UsageError(f"{folder} holds no .pt noise files.")
    return [f.stem for f in files], stack_noise(files)


def stack_noise(files: Sequence[Path]) -> torch.Tensor:
    tensors = [load_noise_file(f) for f in files]
    for f, t in zip(files, tensors, strict=True):
        if t.shape != tensors[0].shape:
            raise UsageError(
                f"{f.name} is {t.shape[-2]}×{t.shape[-1]} but {files[0].name} is "
                f"{tensors[0].shape[-2]}×{tensors[0].shape[-1]}; one batch needs one size."
            )
    return torch.cat(tensors)


def check_noise(noise: torch.Tensor, source: EpsSource, names: Sequence[str]) -> None:
    h, w = noise.shape[-2:]
    if source.side is not None and (h, w) != (source.side, source.side):
        raise UsageError(
            f"{names[0]} is {h}×{w}, but the {source.description} makes {source.side}×{source.side} images; "
            "pass --unet UNet.pt for face noise."
        )
    if source.side is None and (h % 32 or w % 32):
        raise UsageError(f"{names[0]} is {h}×{w}; the face UNet needs sides divisible by 32.")


def seeded_noise(n: int, side: int, seed: int) -> torch.Tensor:
    return torch.randn((n, 3, side, side), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- sampling


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
    opts.validate()
    if batch < 1:
        raise UsageError(f"the batch size is {batch}; expected at least 1.")
    try:
        timesteps = make_timesteps(source.schedule, opts.steps, "leading", opts.offset)
    except ValueError as exc:
        raise UsageError(f"{opts.steps} DDIM steps do not fit this model's schedule: {exc}.") from None
    out = []
    for k, start in enumerate(range(0, noise.shape[0], batch)):
        x = noise[start : start + batch].to(source.device)
        gen = torch.Generator(source.device).manual_seed(seed * 1_000_003 + k) if opts.eta > 0 else None
        x = sample_ddim(
            source.eps,
            x,
            source.schedule,
            timesteps,
            generator=gen,
            eta=opts.eta,
            clip_x0=opts.clip_x0,
            alpha_prev=opts.alpha_prev,
            final_alpha=opts.final_alpha,
        )
        out.append(x.float().cpu())
        if on_batch is not None:
            on_batch(x.shape[0])
    return torch.cat(out)


NORMALIZE = ("minmax", "clip")


def to_images(x: torch.Tensor, normalize: str = "minmax") -> torch.Tensor:
    """Per-image min–max to [0, 1] (what passing solutions saved) or clipping [−1, 1] → uint8."""
    if normalize not in NORMALIZE:
        raise UsageError(f"the normalization {normalize!r} is not known; expected minmax or clip.")
    return to_uint8(x, (-1.0, 1.0), mode=normalize)


def save_named(images: torch.Tensor, names: Sequence[str], out: Path) -> list[Path]:
    return [save_image(img, out / f"{name}.png") for img, name in zip(images, names, strict=True)]


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
) -> Path:
    """Rows: eta; columns: noise. Each row uses the same starting noise and the same seed."""
    rows = []
    for eta in etas:
        row_opts = DDIMOptions(**{**opts.__dict__, "eta": eta})
        rows.append(to_images(run_ddim(source, noise, row_opts, seed=seed, batch=len(names)), normalize))
        if on_batch is not None:
            on_batch(len(names))
    return labelled_grid(
        torch.cat(rows),
        path,
        rows=[f"η = {eta:g}" for eta in etas],
        cols=list(names),
        title=f"DDIM, {opts.steps} steps: {source.description}",
        cell_inches=1.3 if noise.shape[-1] > 64 else 0.8,
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
) -> Path:
    """Rows: slerp and/or lerp; columns: alpha. DDIM (eta = 0 unless set) from each mixed noise."""
    rows = []
    for mode in modes:
        if mode not in ("slerp", "lerp"):
            raise UsageError(f"the interpolation {mode!r} is not known; expected slerp or lerp.")
        mix = slerp if mode == "slerp" else lerp
        noise = torch.cat([mix(a, b, alpha) for alpha in alphas])
        rows.append(to_images(run_ddim(source, noise, opts, batch=batch, on_batch=on_batch), normalize))
    return labelled_grid(
        torch.cat(rows),
        path,
        rows=list(modes),
        cols=[f"α = {alpha:g}" for alpha in alphas],
        title=f"Interpolation between two noises: {source.description}",
        cell_inches=1.1 if a.shape[-1] > 64 else 0.7,
    )


# ---------------------------------------------------------------------------- grading


@dataclass
class MSEReport:
    per_image: dict[str, float]
    mean: float
    extra: list[str]


def mse_eval(out: str | Path, gt: str | Path) -> MSEReport:
    """The P2 grader: per image ``mean((gen − gt)²)`` on the 0–255 scale (both opened as RGB), and the mean."""
    out, gt = Path(out), Path(gt)
    for folder, what in ((out, "generated"), (gt, "ground-truth")):
        if not folder.is_dir():
            raise UsageError(f"{folder} is not a folder of {what} images.")
    gt_files = sorted(p for p in gt.iterdir() if p.suffix.lower() == ".png")
    if not gt_files:
        raise UsageError(f"{gt} holds no .png ground-truth images.")
    missing = [p.name for p in gt_files if not (out / p.name).is_file()]
    if missing:
        raise UsageError(
            f"{out} lacks {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "") + "."
        )
    names = {p.name for p in gt_files}
    extra = sorted(p.name for p in out.iterdir() if p.is_file() and p.name not in names)
    per_image = {}
    for p in gt_files:
        try:
            a = load_rgb(out / p.name).astype(np.float64)
            b = load_rgb(p).astype(np.float64)
        except Exception as exc:
            raise UsageError(f"cannot open {p.name}: {exc}.") from exc
        if a.shape != b.shape:
            raise UsageError(f"{out / p.name} is {a.shape[1]}×{a.shape[0]} but {p} is {b.shape[1]}×{b.shape[0]}.")
        per_image[p.name] = float(np.mean((a - b) ** 2))
    return MSEReport(per_image, float(np.mean(list(per_image.values()))), extra)
