"""Samplers with one signature, in the manner of k-diffusion::

    sample_x(model, x, schedule, steps=None, *, cond=None, callback=None, generator=None, noise=None, ...)

``model(x, t, cond) -> eps`` is any callable (a network, or one wrapped for guidance); ``x`` is the
starting noise ``x_T``; ``steps`` is a number of steps or an explicit descending list of integer
timesteps; ``noise(i, shape)`` may inject the per-step noise ``z`` (tests drive steps with it),
otherwise it is drawn from ``generator``; ``callback(info)`` (``info`` holds ``i``, ``t``, ``x``,
``x0``) sees every intermediate ``x_t`` and costs nothing when it is ``None``.

Per-step coefficients come from the schedule's float64 tables as Python floats, so the loop has
no host-device synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hw2cli.diffusion.schedules import NoiseSchedule
from hw2cli.diffusion.wrappers import EpsModel

NoiseFn = Callable[[int, torch.Size], torch.Tensor]


def make_timesteps(
    schedule: NoiseSchedule, num_steps: int, spacing: str = "leading", offset: int | None = None
) -> list[int]:
    """Descending integer timesteps for a sampler of ``num_steps`` steps.

    ``leading`` (DDIM paper, diffusers' default): ``k·T/S + offset``; for T = 1000, S = 50 and
    offset 1 this is 981, 961, ..., 1, the homework's sequence. ``trailing``: ends at T − 1.
    ``linspace``: evenly spaced over the valid range, rounded. The default offset is the first
    valid timestep (0, or 1 for the TeaPearce schedule, whose entry 0 is unused).
    """
    t_min = schedule.first_timestep
    total = schedule.num_steps
    if offset is None:
        offset = t_min
    if not 1 <= num_steps <= total - t_min:
        raise ValueError(f"number of steps must be between 1 and {total - t_min}, got {num_steps}")
    if spacing == "leading":
        stride = (total - t_min) // num_steps
        ts = [k * stride + offset for k in range(num_steps)]
    elif spacing == "trailing":
        stride = (total - t_min) / num_steps
        ts = [round(total - 1 - k * stride) for k in range(num_steps)][::-1]
    elif spacing == "linspace":
        ts = [round(v) for v in torch.linspace(t_min, total - 1, num_steps, dtype=torch.float64).tolist()]
    else:
        raise ValueError(f"spacing must be leading, trailing or linspace, got {spacing!r}")
    ts = [min(max(t, t_min), total - 1) for t in ts]
    return sorted(set(ts), reverse=True)


def leading_gap(schedule: NoiseSchedule, num_steps: int, offset: int | None = None) -> str | None:
    """Why ``num_steps`` leading-spaced steps leave much of ``schedule`` unused, or None. The
    stride is ``(T − t_min) // num_steps``: 50 steps of 1000 have stride 20 and start at 981, as
    DDIM intends, but 400 have stride 2 and start at 799, and 600 have stride 1 and start at 600,
    so the first step would treat pure noise as a far cleaner image. Refused when the rounding
    loses more than a tenth of the schedule."""
    t_min, total = schedule.first_timestep, schedule.num_steps
    span = total - t_min
    if not 1 <= num_steps <= span:
        return None  # make_timesteps says so
    stride = span // num_steps
    if span - stride * num_steps <= span // 10:
        return None
    first = (num_steps - 1) * stride + (t_min if offset is None else offset)
    fits = sorted((n for n in range(1, span + 1) if span % n == 0), key=lambda n: abs(n - num_steps))[:2]
    return (
        f"{num_steps} steps spaced every {stride} timestep(s) start at t = {first} of {total - 1}, so the first "
        f"step would treat pure noise as a far cleaner image; use a count that divides {span}, such as "
        f"{' or '.join(str(n) for n in sorted(fits))}"
    )


def _timesteps(
    schedule: NoiseSchedule, steps: int | Sequence[int] | None, spacing: str, offset: int | None = None
) -> list[int]:
    if steps is None:
        t_min = schedule.first_timestep
        return list(range(schedule.num_steps - 1, t_min - 1, -1))
    if isinstance(steps, int):
        return make_timesteps(schedule, steps, spacing, offset)
    ts = [int(t) for t in steps]
    if any(a <= b for a, b in zip(ts, ts[1:], strict=False)) or ts[-1] < 0 or ts[0] >= schedule.num_steps:
        raise ValueError("timesteps must be strictly decreasing integers inside the schedule")
    return ts


def _draw(noise: NoiseFn | None, generator: torch.Generator | None, i: int, x: torch.Tensor) -> torch.Tensor:
    if noise is not None:
        return noise(i, x.shape).to(device=x.device, dtype=x.dtype)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _t_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


# ---------------------------------------------------------------------------------------- DDPM


def ddpm_step(
    eps: torch.Tensor,
    x: torch.Tensor,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    z: torch.Tensor | None,
    *,
    variance: str = "posterior",
    clip_x0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step x_t → x_{t_prev} (Ho et al. 2020, eq. 6-7 and Algorithm 2).

    For strided timesteps the step's beta is ``1 − ᾱ_t/ᾱ_prev`` (Nichol & Dhariwal's respacing).
    ``variance``: ``posterior`` (σ² = β̃, eq. 7) or ``beta`` (σ² = β, as TeaPearce). ``z=None``
    means no noise (the last step). Returns ``(x_prev, x0_pred)``.
    """
    # 1. the step's beta and alpha
    beta = 1.0 - alpha_bar_t / alpha_bar_prev
    # 2. predicted x_0 from ε (eq. 15 rearranged)
    x0 = (x - math.sqrt(1.0 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    # 3. posterior mean μ̃(x_t, x_0), eq. 7
    coef_x0 = math.sqrt(alpha_bar_prev) * beta / (1.0 - alpha_bar_t)
    coef_xt = math.sqrt(1.0 - beta) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)
    mean = coef_x0 * x0 + coef_xt * x
    if z is None:
        return mean, x0
    # 4. add σ_t z
    var = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) if variance == "posterior" else beta
    return mean + math.sqrt(var) * z, x0


@torch.inference_mode()
def sample_ddpm(
    model: EpsModel,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int | Sequence[int] | None = None,
    *,
    cond: Any = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    generator: torch.Generator | None = None,
    noise: NoiseFn | None = None,
    variance: str = "posterior",
    clip_x0: bool = False,
    spacing: str = "leading",
) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2); all steps unless ``steps`` is given.

    ᾱ_prev is that of the next timestep; after the last one, ᾱ[t−1] (1.0 when t = 0), so the
    TeaPearce schedule (t = n_T..1) reproduces its original sampler exactly.
    """
    if variance not in ("posterior", "beta"):
        raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")
    ts = _timesteps(schedule, steps, spacing)
    alpha_bar = schedule.alpha_bar.tolist()
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else t - 1
        a_prev = alpha_bar[t_prev] if t_prev >= 0 else 1.0
        eps = model(x, _t_batch(t, x), cond)
        last = i + 1 == len(ts)
        z = None if last else _draw(noise, generator, i, x)
        x, x0 = ddpm_step(eps, x, alpha_bar[t], a_prev, z, variance=variance, clip_x0=clip_x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x


# ---------------------------------------------------------------------------------------- DDIM


def ddim_step(
    eps: torch.Tensor,
    x: torch.Tensor,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    eta: float,
    z: torch.Tensor | None,
    *,
    clip_x0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step (Song et al. 2021, eq. 12), numbered as the paper's terms.

    Returns ``(x_prev, x0_pred)``. ``z`` may be ``None`` when ``eta == 0``.
    """
    # 1. "predicted x_0": (x_t − √(1−ᾱ_t) ε) / √ᾱ_t
    x0 = (x - math.sqrt(1.0 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    # 2. σ_t(η), eq. 16
    sigma = (
        eta * math.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)) * math.sqrt(1.0 - alpha_bar_t / alpha_bar_prev)
    )
    # 3. "direction pointing to x_t": √(1 − ᾱ_prev − σ²) ε
    direction = math.sqrt(max(1.0 - alpha_bar_prev - sigma**2, 0.0)) * eps
    # 4. x_prev = √ᾱ_prev x_0 + direction + σ z
    x_prev = math.sqrt(alpha_bar_prev) * x0 + direction
    if sigma > 0:
        if z is None:
            raise ValueError("eta > 0 needs noise z")
        x_prev = x_prev + sigma * z
    return x_prev, x0


@torch.inference_mode()
def sample_ddim(
    model: EpsModel,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int | Sequence[int] | None = 50,
    *,
    cond: Any = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    generator: torch.Generator | None = None,
    noise: NoiseFn | None = None,
    eta: float = 0.0,
    clip_x0: bool = False,
    alpha_prev: str = "next",
    final_alpha: str = "first",
    spacing: str = "leading",
    offset: int | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12); ``eta = 0`` is deterministic, ``eta = 1`` is DDPM-like.

    ``steps=50, offset=1`` on the 1000-step linear schedule walks 981, 961, ..., 1, the homework's
    sequence (see :func:`make_timesteps`). ``alpha_prev``: ``next`` uses ᾱ of the next timestep in the walk (ᾱ[t − 20]),
    ``t-1`` uses ᾱ[t − 1]. After the last step ᾱ_prev is ᾱ[0] (``final_alpha="first"``, as
    diffusers' ``set_alpha_to_one=False``) or 1.0 (``"one"``).
    """
    if alpha_prev not in ("next", "t-1"):
        raise ValueError(f"alpha_prev must be 'next' or 't-1', got {alpha_prev!r}")
    if final_alpha not in ("first", "one"):
        raise ValueError(f"final_alpha must be 'first' or 'one', got {final_alpha!r}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    ts = _timesteps(schedule, steps, spacing, offset)
    alpha_bar = schedule.alpha_bar.tolist()
    final = alpha_bar[0] if final_alpha == "first" else 1.0
    for i, t in enumerate(ts):
        # after the last step the final rule holds in both conventions (ᾱ[t − 1] = ᾱ[0] at t = 1
        # would otherwise make final_alpha="one" a no-op under "t-1")
        t_prev = -1 if i + 1 == len(ts) else ts[i + 1] if alpha_prev == "next" else t - 1
        a_prev = alpha_bar[t_prev] if t_prev >= 0 else final
        eps = model(x, _t_batch(t, x), cond)
        z = _draw(noise, generator, i, x) if eta > 0 else None
        x, x0 = ddim_step(eps, x, alpha_bar[t], a_prev, eta, z, clip_x0=clip_x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x


# ------------------------------------------------------------------------------- DPM-Solver++


def dpm_scheduler(schedule: NoiseSchedule, num_steps: int, order: int = 2, clip_x0: bool = False) -> Any:
    """diffusers' ``DPMSolverMultistepScheduler`` (Lu et al. 2022, DPM-Solver++(2M)) on our betas.

    ``clip_x0`` turns on diffusers' dynamic thresholding of the predicted x0 (Saharia et al. 2022),
    the data-prediction solver's counterpart of clipping x0 to [-1, 1].
    """
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=schedule.num_steps,
        trained_betas=schedule.betas.float().numpy(),
        algorithm_type="dpmsolver++",
        solver_order=order,
        prediction_type="epsilon",
        timestep_spacing="trailing",
        lower_order_final=True,
        final_sigmas_type="zero",
        thresholding=clip_x0,
        sample_max_value=1.0,
    )
    scheduler.set_timesteps(num_steps)
    return scheduler


def _run_scheduler(
    model: EpsModel, x: torch.Tensor, scheduler: Any, cond: Any, callback: Callable[[dict[str, Any]], None] | None
) -> torch.Tensor:
    """The loop of a deterministic diffusers multistep scheduler: one ε evaluation and one ``step`` per timestep."""
    for i, t in enumerate(scheduler.timesteps.tolist()):
        eps = model(x, _t_batch(int(t), x), cond)
        x = scheduler.step(eps, int(t), x).prev_sample
        if callback is not None:
            callback({"i": i, "t": int(t), "x": x, "x0": None})
    return x


@torch.inference_mode()
def sample_dpm(
    model: EpsModel,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int | Sequence[int] | None = 20,
    *,
    cond: Any = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    generator: torch.Generator | None = None,
    noise: NoiseFn | None = None,
    order: int = 2,
    clip_x0: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(2M) through diffusers; deterministic (no noise is drawn)."""
    if not isinstance(steps, int):
        raise ValueError("the dpm sampler takes a number of steps, not explicit timesteps")
    return _run_scheduler(model, x, dpm_scheduler(schedule, steps, order, clip_x0), cond, callback)


def unipc_scheduler(schedule: NoiseSchedule, num_steps: int, order: int = 2, clip_x0: bool = False) -> Any:
    """diffusers' ``UniPCMultistepScheduler`` (Zhao et al. 2023, UniPC with the bh2 variant, data
    prediction) on our betas; ``clip_x0`` as for :func:`dpm_scheduler`."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=schedule.num_steps,
        trained_betas=schedule.betas.float().numpy(),
        solver_order=order,
        prediction_type="epsilon",
        predict_x0=True,
        solver_type="bh2",
        timestep_spacing="trailing",
        lower_order_final=True,
        final_sigmas_type="zero",
        thresholding=clip_x0,
        sample_max_value=1.0,
    )
    scheduler.set_timesteps(num_steps)
    return scheduler


@torch.inference_mode()
def sample_unipc(
    model: EpsModel,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int | Sequence[int] | None = 10,
    *,
    cond: Any = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    generator: torch.Generator | None = None,
    noise: NoiseFn | None = None,
    order: int = 2,
    clip_x0: bool = False,
) -> torch.Tensor:
    """UniPC (predictor-corrector, one network evaluation per step) through diffusers; deterministic."""
    if not isinstance(steps, int):
        raise ValueError("the unipc sampler takes a number of steps, not explicit timesteps")
    return _run_scheduler(model, x, unipc_scheduler(schedule, steps, order, clip_x0), cond, callback)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpm": sample_dpm,
    "unipc": sample_unipc,
}


def sample(name: str, model: EpsModel, x: torch.Tensor, schedule: NoiseSchedule, steps: Any = None, **kw: Any):
    """Dispatch to ``sample_<name>``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](model, x, schedule, steps, **kw)
