"""What makes `hw2 ddpm generate` fast on a CPU changes no result beyond rounding: NHWC tensors,
UniPC, and bf16 autocast; and the byte-identical rerun holds for each."""

from __future__ import annotations

import pytest
import torch

from hw2cli.io.checkpoints import DiffusionConfig, load_model, save_checkpoint
from hw2cli.models.digit_unet import DigitUNet, DigitUNetConfig
from hw2cli.tasks.ddpm import sample_digits

TINY = {"base_channels": 8, "head_dim": 8, "groups": 4, "channel_mult": [1, 2], "attention_levels": [1],
        "dropout": 0.0}  # fmt: skip
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    net = DigitUNet(DigitUNetConfig.from_dict(TINY))
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(std=0.05)
    path = save_checkpoint(net, DiffusionConfig(model=dict(TINY)), tmp_path_factory.mktemp("m"))
    return load_model(path, CPU)


def images(model, **kw) -> torch.Tensor:
    return sample_digits(model, [3, 7, 1, 0], ["mnistm", "svhn", "mnistm", "svhn"], seed=5, steps=4, **kw)


def test_nhwc_is_the_cpu_default_and_agrees_with_nchw_up_to_rounding(model):
    default = images(model)
    assert model.net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    nchw = images(model, channels_last=False)
    assert model.net.conv_in.weight.is_contiguous()
    assert (default.int() - nchw.int()).abs().max() <= 1  # uint8 images: at most one level of rounding
    assert torch.equal(images(model), default)  # and a rerun is byte-identical


def test_unipc_and_bf16_sample_the_same_digits_as_dpm(model):
    dpm = images(model, sampler="dpm").float()
    unipc = images(model, sampler="unipc").float()
    bf16 = images(model, dtype=torch.bfloat16).float()
    assert torch.equal(images(model, sampler="unipc"), unipc.to(torch.uint8))
    # the same ODE: the solvers differ by discretisation, bf16 by rounding; a different seed differs by far more
    other = sample_digits(model, [3, 7, 1, 0], ["mnistm", "svhn", "mnistm", "svhn"], seed=6, steps=4).float()
    far = (dpm - other).abs().mean()
    assert (dpm - unipc).abs().mean() < 0.25 * far
    assert (dpm - bf16).abs().mean() < 0.25 * far
