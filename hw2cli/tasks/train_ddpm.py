"""Training the conditional digit DDPM (Ho et al. 2020, Algorithm 1, with classifier-free
guidance's label dropout), on ``accelerate``.

The run folder holds ``model.safetensors`` + ``config.json`` (the EMA weights, ready for
``hw2 ddpm sample --checkpoint``), ``state-NNNNNNN/`` (everything needed to resume bit-exactly:
``accelerator.save_state``'s raw weights, optimizer and RNG states, ``ema.safetensors``, and
``hw2_state.json`` with the step, the options and hw2's own batch generator), ``log.jsonl`` and
``samples/``. All training randomness (batch order, timesteps, noise, label dropout) comes from
one seeded CPU generator, so a resumed run continues exactly where it stopped; under
``accelerate launch`` or ``torchrun`` every process draws the same global batch and keeps its
own slice, so N processes train the model one process trains on the same batches.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hw2cli.data.tensors import load_digit_tensors
from hw2cli.diffusion import NoiseSchedule, guided_eps, sample_dpm
from hw2cli.diffusion.wrappers import build_network
from hw2cli.errors import UsageError
from hw2cli.io.atomic import remove_stale_temporaries
from hw2cli.io.checkpoints import DiffusionConfig, save_checkpoint
from hw2cli.io.images import save_grid, to_uint8
from hw2cli.io.locks import claim
from hw2cli.tasks.training import (
    STATE_MARK,
    StopRequest,
    TrainingInterrupted,
    append_log,
    capture_rng,
    check_run_folder,
    deferred_interrupts,
    interrupted_twice,
    load_state_folder,
    release,
    restore_rng,
    resume_state,
    save_state,
    state_folders,
    stop_here,
    truncate_log,
)

__all__ = ["TrainOptions", "TrainResult", "TrainingInterrupted", "train_ddpm"]


@dataclass
class TrainOptions:
    data: str
    out: str
    datasets: tuple[str, ...] = ("mnistm", "svhn")
    steps: int = 12000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 500
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    drop_prob: float = 0.1
    grad_clip: float = 1.0
    checkpoint_every: int = 1000
    sample_every: int = 2000
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=lambda: {"kind": "linear", "num_steps": 1000})
    # guidance distillation (Meng et al. 2023, stage one): a student initialised from ``teacher``
    # learns the teacher's guided ε at a weight w drawn per image from ``guidance_range``
    teacher: str | None = None
    guidance_range: tuple[float, float] = (0.0, 4.0)
    sampler_steps: int | None = None  # DPM-Solver++ / UniPC steps recorded as the student's default

    def validate(self) -> None:
        checks = [
            (self.steps >= 1, f"{{opt:steps}} must be at least 1, got {self.steps}."),
            (self.batch >= 1, f"{{opt:batch}} must be at least 1, got {self.batch}."),
            (self.lr > 0, f"{{opt:lr}} must be positive, got {self.lr}."),
            (0 <= self.drop_prob < 1, f"{{opt:drop_prob}} must be in [0, 1), got {self.drop_prob}."),
            (0 <= self.ema_decay < 1, f"{{opt:ema}} must be in [0, 1), got {self.ema_decay}."),
            (self.checkpoint_every >= 1, f"{{opt:checkpoint_every}} must be at least 1, got {self.checkpoint_every}."),
            (
                0 <= self.guidance_range[0] <= self.guidance_range[1] <= 10,
                f"{{opt:guidance_range}} must be two weights 0 ≤ low ≤ high ≤ 10, got {list(self.guidance_range)}.",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


@dataclass
class TrainResult:
    step: int
    loss: float
    out: Path
    checkpoint: Path
    model: torch.nn.Module | None = None  # this rank's raw weights
    ema: torch.nn.Module | None = None


def lr_at(step: int, opts: TrainOptions) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio · lr``."""
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    progress = min(1.0, (step - opts.warmup) / max(1, opts.steps - opts.warmup))
    return opts.lr * (opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def _diffusion_config(opts: TrainOptions, model_cfg: dict[str, Any]) -> DiffusionConfig:
    return DiffusionConfig(
        architecture="DigitUNet",
        model=model_cfg,
        schedule=dict(opts.schedule),
        datasets=list(opts.datasets),
        condition_layout="dataset-major",
        data_range=(-1.0, 1.0),
        extra={
            "train": {k: v for k, v in asdict(opts).items() if k not in ("data", "out")},
            # the two multistep solvers hold the student's accuracy at the same few steps
            **({"sampler_steps": dict.fromkeys(("dpm", "unipc"), opts.sampler_steps)} if opts.sampler_steps else {}),
        },
    )


def _data_identity(data: Any) -> dict[str, Any]:
    """The training set by content (its images, labels and data sets, in order), wherever it lies."""
    import hashlib

    digest = hashlib.sha256()
    for tensor in (data.images, data.labels, data.dataset):
        digest.update(tensor.contiguous().numpy().tobytes())
    return {"images": len(data), "sha256": digest.hexdigest()}


def train_ddpm(
    opts: TrainOptions,
    *,
    device: torch.device,
    resume: bool = False,
    steps: int | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train (or resume) a DigitUNet; returns where the EMA checkpoint is.

    On ``resume`` the saved options are used (the data and run folder may move); ``steps``
    extends or shortens the run. Otherwise ``steps`` overrides ``opts.steps`` if given.
    ``note`` hears of a resume that falls back to the older state (:func:`resume_state`).
    """
    out = Path(opts.out)
    claim(out, "run folder")  # a second trainer is refused before it reads or writes the run
    remove_stale_temporaries(out)
    saved = state_folders(out)
    check_run_folder(out, bool(saved), resume)
    folder, mark = None, None
    if resume:  # read and check the state before anything is built: a bad file fails in a second
        folder, mark = resume_state(out, note)
        try:
            saved_opts = {**mark["options"], "data": opts.data, "out": opts.out}
            saved_opts["datasets"] = tuple(saved_opts["datasets"])
            saved_opts["guidance_range"] = tuple(saved_opts.get("guidance_range", (0.0, 4.0)))
            opts = TrainOptions(**saved_opts)
            float(mark["loss_window"][0]), int(mark["loss_window"][1])  # noqa: B018
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise UsageError(f"{folder} is not a DigitUNet training state ({type(exc).__name__}: {exc}).") from None
    if steps is not None:
        opts.steps = steps
    opts.validate()
    with deferred_interrupts() as stop:
        return _train(opts, folder, mark, device, stop, on_start, on_step)


def _train(
    opts: TrainOptions,
    folder: Path | None,
    mark: dict[str, Any] | None,
    device: torch.device,
    stop: StopRequest,
    on_start: Callable[[int, int], None] | None,
    on_step: Callable[[int, dict[str, float]], None] | None,
) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(opts.out)
    cuda = device.type == "cuda"
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda and torch.cuda.is_bf16_supported() else "no")
    device = accelerator.device
    teacher: torch.nn.Module | None = None
    if opts.teacher is not None:  # checked first: a wrong teacher fails before the data loads
        teacher = _load_teacher(opts, device)
    data = load_digit_tensors(opts.data, tuple(opts.datasets), "train")
    data_id = _data_identity(data)
    if mark is not None and mark.get("data") not in (None, data_id):  # the data may move, not change
        then = mark["data"].get("images") if isinstance(mark["data"], dict) else None
        counts = f"{data_id['images']:,} images now, {then:,} then" if isinstance(then, int) else "other content"
        raise UsageError(
            f"{{opt:data}} {opts.data} holds other training images than the run in {out} began with ({counts}); "
            "resume it with the data it began on, or start a new run in another {opt:out}."
        )
    world, rank = accelerator.num_processes, accelerator.process_index
    if opts.batch % world:
        raise UsageError(f"{{opt:batch}} {opts.batch} must be divisible by the number of processes ({world}).")
    if len(data) < opts.batch:
        raise UsageError(f"{{opt:batch}} {opts.batch} is larger than the {len(data)} training images.")
    schedule = NoiseSchedule.from_config(opts.schedule)
    t_min = schedule.first_timestep

    # the global generators (numpy takes < 2**32); dropout masks differ per process, like any DDP run
    set_seed((opts.seed + rank) % 2**32)
    gen = torch.Generator().manual_seed(opts.seed)
    config = _diffusion_config(opts, opts.model)
    model = build_network(config).to(device)
    config.model = model.config.to_dict()  # type: ignore[union-attr]
    if teacher is not None and folder is None:  # the student starts as its teacher (w enters at zero)
        missing, unexpected = model.load_state_dict(teacher.state_dict(), strict=False)
        if unexpected or any(not k.startswith("guidance_mlp.") for k in missing):
            raise UsageError(f"the teacher {opts.teacher} does not fit the student network.")
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    step = 0
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    if folder is not None and mark is not None:
        process = load_state_folder(accelerator, folder, mark)
        try:
            from safetensors.torch import load_file

            # read on the CPU and copied onto the EMA's device: safetensors refuses accelerate's "cpu:0"
            ema.load_state_dict(load_file(folder / "ema.safetensors", device="cpu"))
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UsageError(f"{folder / 'ema.safetensors'} does not fit this network ({reason}).") from None
        step = int(mark["step"])
        restore_rng(process["rng"], gen, source=folder / STATE_MARK)
        loss_sum += float(mark["loss_window"][0])  # the logged mean spans a resume unchanged
        loss_count = int(mark["loss_window"][1])

    images = data.images.to(device)
    cond_all = (10 * data.dataset + data.labels).to(device)
    null = config.model["num_conditions"]
    n = len(data)
    per_epoch = n // opts.batch
    local = opts.batch // world
    lo, hi = rank * local, (rank + 1) * local
    perm: torch.Tensor | None = None
    perm_epoch = -1
    last_loss = float("nan")
    checkpoint = out / "model.safetensors"

    def save(step_done: int) -> Path:
        # the resume state first, then the sampling weights: a kill between the two leaves a state
        # one save ahead of model.safetensors, which the resume rewrites (never the reverse)
        save_state(
            accelerator,
            out,
            step_done,
            {"rng": capture_rng(gen)},
            {"options": asdict(opts), "loss_window": [float(loss_sum), loss_count], "data": data_id},
            {"ema.safetensors": ema.state_dict()},
        )
        if accelerator.is_main_process:
            config.extra["step"] = step_done
            save_checkpoint(ema, config, out)
        accelerator.wait_for_everyone()
        return checkpoint

    if folder is not None and accelerator.is_main_process:
        truncate_log(out / "log.jsonl", step)  # steps after the saved one will be redone
        if _saved_step(checkpoint) != step:
            config.extra["step"] = step
            save_checkpoint(ema, config, out)
        grid = out / "samples" / f"step_{step:07d}.png"
        if opts.sample_every and step % opts.sample_every == 0 and not grid.is_file():
            _sample_grid(ema, schedule, null, device, grid)  # a kill came between the state and its grid
    if on_start is not None and accelerator.is_main_process:
        on_start(step, opts.steps)
    try:
        model.train()
        while step < opts.steps:
            # 1. the batch: a seeded permutation per epoch, so the order depends only on (seed, step)
            epoch, within = divmod(step, per_epoch)
            if epoch != perm_epoch:
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(opts.seed * 100003 + epoch))
                perm_epoch = epoch
            assert perm is not None
            idx = perm[within * opts.batch : (within + 1) * opts.batch]
            # 2. timesteps, noise and label dropout for the whole global batch, then this process's slice
            t = torch.randint(t_min, schedule.num_steps, (opts.batch,), generator=gen)
            noise = torch.randn((opts.batch, *images.shape[1:]), generator=gen)
            drop = torch.rand(opts.batch, generator=gen) < opts.drop_prob
            idx, t, noise, drop = idx[lo:hi].to(device), t[lo:hi].to(device), noise[lo:hi].to(device), drop[lo:hi]
            x0 = images[idx].float() / 127.5 - 1.0
            cond = torch.where(drop.to(device), torch.full_like(cond_all[idx], null), cond_all[idx])
            x_t = schedule.q_sample(x0, t, noise)
            # 3. ε-prediction loss, Ho et al. eq. 14 (bf16 autocast on a GPU, via accelerate)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, opts)
            if teacher is None:
                target = noise
                eps = model(x_t, t, cond)
            else:  # the teacher's guided ε at a weight drawn per image, in one batched pair of passes
                w_lo, w_hi = opts.guidance_range
                w = (w_lo + (w_hi - w_lo) * torch.rand(opts.batch, generator=gen))[lo:hi].to(device)
                with accelerator.autocast():
                    target = guided_target(teacher, x_t, t, cond, null, w)
                eps = model(x_t, t, cond, w)
            loss = F.mse_loss(eps.float(), target)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if opts.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), opts.grad_clip)
            optimizer.step()
            ema_update(ema, raw, min(opts.ema_decay, (1 + step) / (10 + step)))
            step += 1
            loss_sum += loss.detach()
            loss_count += 1
            if step % 25 == 0 or step == opts.steps:  # one host sync every 25 steps
                last_loss = float(accelerator.reduce(loss_sum / loss_count, "mean"))
                loss_sum.zero_()
                loss_count = 0
                if accelerator.is_main_process:
                    append_log(out / "log.jsonl", {"step": step, "loss": last_loss, "lr": lr_at(step - 1, opts)})
            if on_step is not None and accelerator.is_main_process:
                metrics = {"lr": lr_at(step - 1, opts)}
                if not math.isnan(last_loss):
                    metrics["loss"] = last_loss
                on_step(step, metrics)
            saved_now = step % opts.checkpoint_every == 0 or step == opts.steps
            if saved_now:
                checkpoint = save(step)
            if opts.sample_every and step % opts.sample_every == 0 and accelerator.is_main_process:
                _sample_grid(ema, schedule, null, device, out / "samples" / f"step_{step:07d}.png")
            # 4. a Ctrl-C or SIGTERM that arrived during the step (on any process): it is complete; save and stop
            requested = bool(stop)
            if world > 1:
                requested = bool(accelerator.reduce(torch.tensor(float(requested), device=device), "sum").item())
            stop_here(requested, stop, step, opts.steps, saved_now, save, out)
    except KeyboardInterrupt:  # a second Ctrl-C: stop now; the last checkpoint stays consistent
        raise interrupted_twice(out) from None
    finally:
        release(accelerator)
    return TrainResult(step=step, loss=last_loss, out=out, checkpoint=checkpoint, model=raw, ema=ema)


@torch.no_grad()
def guided_target(
    teacher: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, null: int, w: torch.Tensor
) -> torch.Tensor:
    """The teacher's classifier-free-guided ε ``(1 + w)·ε(c) − w·ε(∅)`` with a weight per image
    (``w`` is ``[B]``), from one batched pair of passes; fp32."""
    both = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, torch.full_like(cond, null)]))
    e_cond, e_null = both.float().chunk(2)
    return e_cond + w.float()[:, None, None, None] * (e_cond - e_null)


def _load_teacher(opts: TrainOptions, device: torch.device) -> torch.nn.Module:
    """The frozen teacher; sets the student's network (the teacher's, with a guidance input) and
    schedule in ``opts``."""
    from hw2cli.io.checkpoints import load_model

    teacher = load_model(opts.teacher, device)
    if teacher.config.architecture != "DigitUNet" or getattr(teacher.net, "guidance_distilled", False):
        raise UsageError(
            f"the teacher {opts.teacher} must be a DigitUNet trained with label dropout (hw2 ddpm train), "
            "not a TeaPearce ContextUnet or an already distilled student."
        )
    opts.datasets = tuple(teacher.config.datasets)  # the student learns the teacher's conditions, no others
    opts.model = {**teacher.config.model, "guidance_embedding": True}
    opts.schedule = dict(teacher.config.schedule)
    return teacher.net.eval().requires_grad_(False)


def _saved_step(path: Path) -> int | None:
    """The training step recorded in a model.safetensors we wrote (``None`` if unreadable)."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return int(json.loads((fh.metadata() or {})["hw2"])["extra"]["step"])
    except Exception:
        return None


@torch.no_grad()
def _sample_grid(ema: torch.nn.Module, schedule: NoiseSchedule, null: int, device: torch.device, path: Path) -> None:
    """One sample per condition (rows: data sets, columns: digits), DPM-Solver++ 20 steps, w = 2, x0 clipped."""
    gen = torch.Generator().manual_seed(1234)
    cond = torch.arange(20, device=device)
    x = torch.randn((20, 3, 28, 28), generator=gen).to(device)
    eps = guided_eps(ema, 2.0, torch.tensor([null], device=device), device, torch.float32)
    images = sample_dpm(eps, x, schedule, 20, cond=cond, clip_x0=True)  # as `hw2 ddpm sample` does by default
    save_grid(to_uint8(images), path, nrow=10)
