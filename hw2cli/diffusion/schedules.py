"""Variance schedules (Ho et al. 2020, §4; Nichol & Dhariwal 2021, eq. 17 for cosine).

All tables are computed once, in float64, when the schedule is made; :meth:`NoiseSchedule.table`
hands out device/dtype copies, cached, so sampling loops never recompute them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """``betas`` ``[T]`` float64 and the tables derived from it, indexed by integer timestep."""

    betas: torch.Tensor
    kind: str = "linear"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        betas = self.betas.to(torch.float64)
        object.__setattr__(self, "betas", betas)
        alphas = 1.0 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        alpha_bar_prev = torch.cat([betas.new_ones(1), alpha_bar[:-1]])
        tables = {
            "betas": betas,
            "alphas": alphas,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1.0 - alpha_bar).sqrt(),
            # q(x_{t-1} | x_t, x_0), Ho et al. eq. 7
            "posterior_variance": betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar),
        }
        object.__setattr__(self, "_tables", tables)
        object.__setattr__(self, "_cache", {})

    # ------------------------------------------------------------------ constructors
    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> NoiseSchedule:
        """The homework's schedule: ``linspace(1e-4, 2e-2, 1000)`` in float64."""
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        return cls(betas, "linear", {"num_steps": num_steps, "beta_start": beta_start, "beta_end": beta_end})

    @classmethod
    def teapearce(cls, n_T: int = 400, beta1: float = 1e-4, beta2: float = 0.02) -> NoiseSchedule:
        """TeaPearce/Conditional_Diffusion_MNIST: ``n_T + 1`` entries, t = 1..n_T used, fed as ``t / n_T``."""
        betas = (beta2 - beta1) * torch.arange(0, n_T + 1, dtype=torch.float64) / n_T + beta1
        return cls(betas, "teapearce", {"n_T": n_T, "beta1": beta1, "beta2": beta2})

    @classmethod
    def cosine(cls, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal's cosine schedule, eq. 17, betas clipped at ``max_beta``."""
        t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls(betas, "cosine", {"num_steps": num_steps, "s": s, "max_beta": max_beta})

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NoiseSchedule:
        kind = config.get("kind", "linear")
        params = {k: v for k, v in config.items() if k != "kind"}
        makers = {"linear": cls.linear, "teapearce": cls.teapearce, "cosine": cls.cosine}
        if kind not in makers:
            raise ValueError(f"unknown schedule kind {kind!r}; expected one of {', '.join(makers)}")
        return makers[kind](**params)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params}

    # ------------------------------------------------------------------ access
    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def first_timestep(self) -> int:
        """The smallest timestep a network was trained on: 1 for TeaPearce's schedule (its entry 0
        is never used), else 0."""
        return 1 if self.kind == "teapearce" else 0

    @property
    def max_sampler_steps(self) -> int:
        """How many distinct timesteps a sampler can visit."""
        return self.num_steps - self.first_timestep

    @property
    def alpha_bar(self) -> torch.Tensor:
        return self._tables["alpha_bar"]  # type: ignore[attr-defined]

    def table(self, name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """A derived table on ``device`` in ``dtype`` (cached)."""
        key = (name, str(device), dtype)
        cache = self._cache  # type: ignore[attr-defined]
        if key not in cache:
            cache[key] = self._tables[name].to(device=device, dtype=dtype)  # type: ignore[attr-defined]
        return cache[key]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process ``x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε`` (Ho et al. eq. 4); ``t`` is ``[B]``."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        a = self.table("sqrt_alpha_bar", x0.device, torch.float32)[t].reshape(shape)
        s = self.table("sqrt_one_minus_alpha_bar", x0.device, torch.float32)[t].reshape(shape)
        return (a * x0.float() + s * noise.float()).to(x0.dtype)
