"""Noise schedules and samplers: pure functions of tensors (no I/O, no CLI, no model classes).

A sampler takes the network as a callable ``eps = model(x, t, cond)`` with ``x`` of shape
``[B, C, H, W]``, ``t`` an integer tensor ``[B]`` and ``cond`` whatever the model needs.
"""

from hw2cli.diffusion.guidance import classifier_free_guidance
from hw2cli.diffusion.samplers import (
    SAMPLERS,
    ddim_step,
    ddpm_step,
    make_timesteps,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpm,
)
from hw2cli.diffusion.schedules import NoiseSchedule

__all__ = [
    "SAMPLERS",
    "NoiseSchedule",
    "classifier_free_guidance",
    "ddim_step",
    "ddpm_step",
    "make_timesteps",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpm",
]
