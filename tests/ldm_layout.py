"""The original CompVis (LDM) key layout of a Stable Diffusion v1 checkpoint, made from diffusers
modules: the inverse of the renaming diffusers' single-file loader does, driven by the configs so
it serves the full-size model and the tiny test one alike. Tests only: it builds checkpoints in the
layout of the real ``sd-v1-4.ckpt`` from weights made in code."""

from __future__ import annotations

import sys
import types

import torch

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
          ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]  # fmt: skip
VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)  # fmt: skip


def _rename(key: str, prefixes: dict[str, str], inner: list[tuple[str, str]] | None = None) -> str | None:
    for hf, ldm in sorted(prefixes.items(), key=lambda kv: -len(kv[0])):
        if key.startswith(hf):
            rest = key[len(hf) :]
            for a, b in inner or []:
                if rest.startswith(a + "."):
                    rest = b + rest[len(a) :]
            return ldm + rest
    return None


def unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    n, lpb = len(config.block_out_channels), config.layers_per_block
    up_has_attention = [t.startswith("CrossAttn") for t in config.up_block_types]
    down_has_attention = [t.startswith("CrossAttn") for t in config.down_block_types]
    resnets, others = {}, {
        "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
        "mid_block.attentions.0.": "middle_block.1.",
    }  # fmt: skip
    for i in range(n):
        for j in range(lpb):
            resnets[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{(lpb + 1) * i + j + 1}.0."
            if down_has_attention[i]:
                others[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{(lpb + 1) * i + j + 1}.1."
        for j in range(lpb + 1):
            resnets[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{(lpb + 1) * i + j}.0."
            if up_has_attention[i]:
                others[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{(lpb + 1) * i + j}.1."
        if i < n - 1:
            others[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(lpb + 1) * (i + 1)}.0.op."
            position = 2 if up_has_attention[i] else 1
            others[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{(lpb + 1) * i + lpb}.{position}."
    for j in range(2):
        resnets[f"mid_block.resnets.{j}."] = f"middle_block.{2 * j}."
    out = {}
    for key, value in state.items():
        new = _rename(key, resnets, RESNET) or _rename(key, others)
        if new is None:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    n, lpb = len(config.block_out_channels), config.layers_per_block
    resnets, attention, others = {}, {}, {"quant_conv.": "quant_conv.", "post_quant_conv.": "post_quant_conv."}
    for part in ("encoder", "decoder"):
        others[f"{part}.conv_in."] = f"{part}.conv_in."
        others[f"{part}.conv_out."] = f"{part}.conv_out."
        others[f"{part}.conv_norm_out."] = f"{part}.norm_out."
        attention[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
        for j in range(2):
            resnets[f"{part}.mid_block.resnets.{j}."] = f"{part}.mid.block_{j + 1}."
    for i in range(n):
        for j in range(lpb):
            resnets[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        for j in range(lpb + 1):
            resnets[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{n - 1 - i}.block.{j}."
        if i < n - 1:
            others[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
            others[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{n - 1 - i}.upsample."
    out = {}
    for key, value in state.items():
        new = _rename(key, resnets, [("conv_shortcut", "nin_shortcut")])
        if new is None:
            new = _rename(key, attention, VAE_ATTENTION)
            if new is not None and new.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
                value = value.reshape(*value.shape, 1, 1)  # linear in diffusers, 1x1 conv in LDM
        if new is None:
            new = _rename(key, others)
        if new is None:
            raise KeyError(f"no LDM name for VAE key {key}")
        out["first_stage_model." + new] = value
    return out


def pipeline_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """The state dict of ``sd-v1-4.ckpt``'s layout: UNet, VAE, text encoder, schedule buffers, EMA counters."""
    state = {}
    state.update(unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config))
    state.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    text = pipe.text_encoder.state_dict()
    for key, value in text.items():  # transformers 5 dropped the text_model. level the original file has
        name = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + name] = value
    if "cond_stage_model.transformer.text_model.embeddings.position_ids" not in state:
        n = pipe.text_encoder.config.max_position_embeddings
        state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(n)[None]
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    for name in SCHEDULE_BUFFERS:
        state[name] = betas.float()  # values do not matter to the loader; names and shapes do
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(470000, dtype=torch.int32)
    return state


def save_lightning_checkpoint(state: dict[str, torch.Tensor], path) -> None:
    """Wrap ``state`` as PyTorch Lightning 1.4 does: the callbacks keyed by the ModelCheckpoint class,
    an instance of it too, and a numpy scalar, pickled while a stand-in Lightning module is importable."""
    import numpy as np

    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    modules = {name: types.ModuleType(name) for name in names}
    cls = type("ModelCheckpoint", (), {"__module__": names[-1]})
    modules[names[-1]].ModelCheckpoint = cls
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(modules)
    try:
        callback = cls()
        callback.monitor, callback.best_model_score = None, np.float64(0.25)
        envelope = {
            "epoch": 6, "global_step": 470000, "pytorch-lightning_version": "1.4.2", "state_dict": state,
            "callbacks": {cls: {"best_model_score": np.float64(0.25), "dirpath": "/logs"}}, "trainer": callback,
        }  # fmt: skip
        torch.save(envelope, path)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
