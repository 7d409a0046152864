"""Small things several test files build: one place, so the tests share them instead of copies."""

from __future__ import annotations

import torch


def tiny_sd_unet(sample_size: int = 16, cross_attention_dim: int = 32):
    """A two-level SD-style conditional UNet (cross-attention in the first level), seeded."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def homework_ddim_scheduler(schedule, **overrides):
    """diffusers' DDIMScheduler set up as the homework's DDIM: the schedule's betas, t = 981, 961, …, 1
    (leading spacing, offset 1), ᾱ_prev of the step after the last = ᾱ[0], no clipping."""
    from diffusers import DDIMScheduler

    settings = {
        "num_train_timesteps": schedule.num_steps,
        "trained_betas": schedule.betas.numpy(),
        "steps_offset": 1,
        "set_alpha_to_one": False,
        "clip_sample": False,
        "timestep_spacing": "leading",
        **overrides,
    }
    return DDIMScheduler(**settings)
