"""DigitUNet and the TeaPearce-compatible ContextUnet."""

from __future__ import annotations

import pytest
import torch

from hw2cli.diffusion.wrappers import ContextUnetEps
from hw2cli.models import ContextUnet, DigitUNet, DigitUNetConfig


# The public TeaPearce network's parameter keys for n_feat=F, n_classes=K, in_channels=C, written out
# from its source (module names and shapes), independently of our module.
def teapearce_shapes(C: int, F: int, K: int) -> dict[str, tuple[int, ...]]:
    def block(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
        out = {}
        for i, ci in ((1, cin), (2, cout)):
            out[f"{prefix}.conv{i}.0.weight"] = (cout, ci, 3, 3)
            out[f"{prefix}.conv{i}.0.bias"] = (cout,)
            for name in ("weight", "bias", "running_mean", "running_var"):
                out[f"{prefix}.conv{i}.1.{name}"] = (cout,)
            out[f"{prefix}.conv{i}.1.num_batches_tracked"] = ()
        return out

    def embed(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
        return {
            f"{prefix}.model.0.weight": (cout, cin),
            f"{prefix}.model.0.bias": (cout,),
            f"{prefix}.model.2.weight": (cout, cout),
            f"{prefix}.model.2.bias": (cout,),
        }

    shapes = {}
    shapes |= block("init_conv", C, F)
    shapes |= block("down1.model.0", F, F)
    shapes |= block("down2.model.0", F, 2 * F)
    shapes |= embed("timeembed1", 1, 2 * F) | embed("timeembed2", 1, F)
    shapes |= embed("contextembed1", K, 2 * F) | embed("contextembed2", K, F)
    shapes |= {
        "up0.0.weight": (2 * F, 2 * F, 7, 7),
        "up0.0.bias": (2 * F,),
        "up0.1.weight": (2 * F,),
        "up0.1.bias": (2 * F,),
    }
    for name, cin in (("up1", 4 * F), ("up2", 2 * F)):
        shapes |= {f"{name}.model.0.weight": (cin, F, 2, 2), f"{name}.model.0.bias": (F,)}
        shapes |= block(f"{name}.model.1", F, F) | block(f"{name}.model.2", F, F)
    shapes |= {
        "out.0.weight": (F, 2 * F, 3, 3),
        "out.0.bias": (F,),
        "out.1.weight": (F,),
        "out.1.bias": (F,),
        "out.3.weight": (C, F, 3, 3),
        "out.3.bias": (C,),
    }
    return shapes


@pytest.mark.parametrize(("C", "F", "K"), [(3, 16, 20), (1, 8, 10)])
def test_context_unet_loads_a_teapearce_state_dict_strictly(C, F, K):
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) if s else torch.tensor(5) for k, s in teapearce_shapes(C, F, K).items()}
    net = ContextUnet.from_state_dict_shapes(state)
    assert (net.in_channels, net.n_feat, net.n_classes) == (C, F, K)
    net.load_state_dict(state, strict=True)
    out = net.eval()(torch.randn(2, C, 28, 28), torch.tensor([0, 1]), torch.tensor([0.5, 0.1]), torch.zeros(2))
    assert out.shape == (2, C, 28, 28)


def test_context_unet_label_convention_is_negated_one_hot():
    torch.manual_seed(0)
    net = ContextUnet(3, 8, 20).eval()
    seen = []
    net.contextembed1.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    eps = ContextUnetEps(net, n_T=400)
    x = torch.randn(3, 3, 28, 28)
    t = torch.tensor([400, 200, 1])
    out = eps(x, t, torch.tensor([4, 19, 20]))  # 20 = null
    expected_c = torch.zeros(3, 20)
    expected_c[0, 4] = -1.0
    expected_c[1, 19] = -1.0
    assert torch.equal(seen[0], expected_c)
    # same as calling the original interface with t / n_T and the mask
    direct = net(x, torch.tensor([4, 19, 0]), t.float() / 400, torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(out, direct)


def test_digit_unet_shapes_conditions_and_null():
    torch.manual_seed(0)
    model = DigitUNet(DigitUNetConfig(base_channels=8, head_dim=8, groups=4)).eval()
    x = torch.randn(4, 3, 28, 28)
    t = torch.tensor([0, 10, 500, 999])
    out = model(x, t, torch.tensor([0, 5, 19, 20]))
    assert out.shape == x.shape
    assert model.null_condition == 20
    # zero-initialised layers (conv_out, every block's conv2) hide the condition at init; perturb them
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.1)
    a = model(x, t, torch.tensor([1, 1, 1, 1]))
    b = model(x, t, torch.tensor([2, 2, 2, 2]))
    assert not torch.allclose(a, b)


def test_digit_unet_config_roundtrip():
    cfg = DigitUNetConfig(base_channels=8, channel_mult=(1, 2), attention_levels=(1,))
    assert DigitUNetConfig.from_dict(cfg.to_dict()) == cfg
