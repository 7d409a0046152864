"""FaceUNet against the homework's key listing and an independent functional reference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hw2cli.models import FaceUNet

KEYS = json.loads((Path(__file__).parent / "data" / "face_unet_keys.json").read_text())


def random_state(shapes: dict[str, list[int]], seed: int = 0, scale: float = 0.02) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("inv_freq"):
            state[key] = torch.exp(-math.log(10000.0) * torch.arange(0, 2 * shape[0], 2) / (2 * shape[0]))
        elif "norm" in key and key.endswith("weight") or key == "out.0.weight":
            state[key] = 1 + scale * torch.randn(shape, generator=g)
        else:
            state[key] = scale * torch.randn(shape, generator=g)
    return state


def test_official_size_matches_the_listing():
    model = FaceUNet()
    state = model.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == KEYS
    assert sum(v.numel() for v in state.values()) == 113_673_283


def test_block_structure_matches_the_listing():
    model = FaceUNet()
    with_attention = {k.split(".")[0] for k in KEYS if ".attention." in k}
    assert with_attention == {"down14", "down15", "mid1", "up5", "up6", "up7"}
    assert {n for n, m in model.named_children() if hasattr(m, "attention")} == with_attention
    skips = {k.split(".")[0]: v[:2] for k, v in KEYS.items() if k.endswith("resblocks.skip.weight")}
    for name, (out_ch, in_ch) in skips.items():
        block = getattr(model, name).resblocks
        assert (block.conv1.out_channels, block.conv1.in_channels) == (out_ch, in_ch), name
    no_skip = {k.split(".")[0] for k in KEYS if k.endswith("resblocks.conv1.weight")} - set(skips)
    assert all(getattr(model, n).resblocks.skip is None for n in no_skip)


@pytest.mark.parametrize("side", [64, 256])
def test_listing_state_dict_loads_strictly_and_runs(side):
    model = FaceUNet().eval()
    model.load_state_dict(random_state(KEYS), strict=True)
    with torch.inference_mode():
        out = model(torch.randn(1, 3, side, side), torch.tensor([981]))
    assert out.shape == (1, 3, side, side) and torch.isfinite(out).all()


def test_side_not_divisible_by_32_is_a_clear_error():
    model = FaceUNet(width=32).eval()
    with pytest.raises(ValueError, match="divisible by 32, got 48×64"):
        model(torch.zeros(1, 3, 48, 64), torch.tensor([1]))


# ------------------------------------------------------------------ independent reference
def ref_forward(s: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The spec, written as plain functions over the raw state dict (no hw2 modules)."""

    def gn(h, p):
        return F.group_norm(h, 32, s[p + ".weight"], s[p + ".bias"], 1e-5)

    def conv(h, p, **kw):
        return F.conv2d(h, s[p + ".weight"], s[p + ".bias"], **kw)

    def res(h, p, temb):
        r = conv(F.silu(gn(h, p + ".norm1")), p + ".conv1", padding=1)
        r = r + F.linear(F.silu(temb), s[p + ".time.1.weight"], s[p + ".time.1.bias"])[:, :, None, None]
        r = conv(F.silu(gn(r, p + ".norm2")), p + ".conv2", padding=1)
        return r + (conv(h, p + ".skip") if p + ".skip.weight" in s else h)

    def attn(h, p):
        b, c, hh, ww = h.shape
        q, k, v = conv(gn(h, p + ".norm"), p + ".qkv").reshape(b, 3 * c, hh * ww).chunk(3, dim=1)
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)  # over keys j
        o = torch.einsum("bij,bcj->bci", w, v).reshape(b, c, hh, ww)
        return h + conv(o, p + ".out")

    def block(h, name, temb):
        h = res(h, name + ".resblocks", temb)
        return attn(h, name + ".attention") if name + ".attention.qkv.weight" in s else h

    freqs = s["time.0.inv_freq"]
    emb = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], 1)
    temb = F.linear(F.silu(F.linear(emb, s["time.1.weight"], s["time.1.bias"])), s["time.3.weight"], s["time.3.bias"])
    h = conv(x, "down1", padding=1)
    stack = [h]
    for i in range(2, 19):
        name = f"down{i}"
        h = conv(h, name + ".0", stride=2, padding=1) if f"{name}.0.weight" in s else block(h, name, temb)
        stack.append(h)
    h = block(block(h, "mid1", temb), "mid2", temb)
    for i in range(1, 24):
        name = f"up{i}"
        if f"{name}.1.weight" in s:
            h = conv(F.interpolate(h, scale_factor=2, mode="nearest"), name + ".1", padding=1)
        else:
            h = block(torch.cat([h, stack.pop()], 1), name, temb)
    return conv(F.silu(gn(h, "out.0")), "out.2", padding=1)


@pytest.mark.parametrize("backend", ["torch"])
def test_small_faceunet_equals_the_spec_reference(backend):
    import hw2kernels

    model = FaceUNet(width=32).eval().double()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    state = {k: v.double() for k, v in random_state(shapes, seed=3, scale=0.1).items()}
    model.load_state_dict(state, strict=True)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)
    t = torch.tensor([981, 1])
    hw2kernels.set_default_backend(backend)
    try:
        with torch.inference_mode():
            ours = model(x, t)
    finally:
        hw2kernels.set_default_backend("auto")
    ref = ref_forward(state, x, t.double())
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
