"""Noise schedules, samplers (pure functions of tensors: no I/O, no CLI) and the wrappers that adapt a
network to them (:mod:`hw2cli.diffusion.wrappers`).

A sampler takes the network as a callable ``eps = model(x, t, cond)`` with ``x`` of shape
``[B, C, H, W]``, ``t`` an integer tensor ``[B]`` and ``cond`` whatever the model needs.
"""

from hw2cli.diffusion.samplers import (
    SAMPLERS,
    ddim_step,
    ddpm_step,
    make_timesteps,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpm,
    sample_unipc,
)
from hw2cli.diffusion.schedules import NoiseSchedule
from hw2cli.diffusion.wrappers import EpsModel, GraphedEps, autocast_eps, classifier_free_guidance, guided_eps

__all__ = [
    "SAMPLERS",
    "EpsModel",
    "GraphedEps",
    "NoiseSchedule",
    "autocast_eps",
    "classifier_free_guidance",
    "guided_eps",
    "ddim_step",
    "ddpm_step",
    "make_timesteps",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpm",
    "sample_unipc",
]
