"""`hw2 bench` on this CPU, accelerate_unet, and the CUDA-graph switch where there is no CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from hw2cli.diffusion.wrappers import build_network
from hw2cli.io.checkpoints import DiffusionConfig, save_checkpoint


@pytest.fixture(scope="module")
def digit_ckpt(tmp_path_factory):
    config = DiffusionConfig(model={"base_channels": 8, "head_dim": 8, "groups": 4, "channel_mult": [1, 2]})
    return save_checkpoint(build_network(config), config, tmp_path_factory.mktemp("d"))


def test_bench_kernels_quick(run_cli, tmp_path):
    r = run_cli("bench", "kernels", "--quick", "--no-compile", "--repeats", "2", "--out", tmp_path, "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report == json.loads((tmp_path / "kernels.json").read_text())
    assert report["meta"]["copy_bandwidth_gbps"] > 0 and "torch" in report["meta"] and "date" in report["meta"]
    gn = [row for row in report["rows"] if row["case"].startswith("groupnorm")]
    eager = next(row for row in gn if row["path"] == "eager")
    assert eager["ms"] > 0 and eager["gbps"] > 0 and eager["speedup"] == 1.0
    triton = next(row for row in gn if row["path"] == "triton")
    if torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1":
        assert triton["ms"] > 0 and triton["gbps"] > 0  # compiled kernels are timed on a GPU
    else:
        assert triton["ms"] is None and triton["note"].startswith("not measured")
    attention = [row for row in report["rows"] if row["case"].startswith("attention")]
    assert any(row["path"] == "sdpa" and row["tflops"] > 0 for row in attention)
    import hw2kernels  # every row names the class auto looks up, computed from the case's own shape

    for row in gn:
        x = torch.empty(*(int(n) for n in row["case"].split()[-1].split("×")))
        assert row["shape_class"] == hw2kernels.group_norm_class(x, 32)
    assert {row["op"] for row in gn} == {"group_norm"} and {row["op"] for row in attention} == {"attention"}
    if triton["ms"] is None:
        assert report["meta"]["choices"] == {}  # nothing measured, nothing chosen: auto keeps its check


def test_bench_writes_under_the_output_root_unless_told(run_cli, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("HW2_OUTPUT_ROOT", str(tmp_path / "outputs"))
    r = run_cli("bench", "kernels", "--quick", "--no-compile", "--repeats", "1")
    assert r.code == 0, r.err
    assert (tmp_path / "outputs" / "bench" / "kernels.json").is_file() and not Path("benchmarks").exists()


def test_kernel_choices_apply_the_rule_per_class():
    import hw2kernels

    from hw2cli.tasks.bench import Row, kernel_choices

    margin = hw2kernels.TRITON_MARGIN

    def case(name, op, cls, vs_best, note=""):
        return [Row(name, "eager", ms=1.0, vs_best=1.0, op=op, shape_class=cls),
                Row(name, "triton", ms=1 / vs_best if vs_best else None, vs_best=vs_best, op=op, shape_class=cls,
                    note=note)]  # fmt: skip

    rows = (
        case("a", "group_norm", "c/g8:hw4096:nchw", margin + 0.01)
        + case("b", "group_norm", "c/g4:hw65536:nchw", margin - 0.01)  # faster, but not by the margin
        + case("c", "attention", "d40:q4096:k4096", 2.0, note="fell back to SDPA: auto: the first call's check")
        + case("d", "attention", "d80:q1024:k1024", None)  # not measured: no entry
        + case("e", "attention", "d160:q256:k256", 1.5)
        + case("f", "attention", "d160:q256:k256", 0.9)  # one case of a class slower: the class runs PyTorch
    )
    assert kernel_choices(rows, "bfloat16") == {
        "group_norm|bfloat16|c/g8:hw4096:nchw": "triton",
        "group_norm|bfloat16|c/g4:hw65536:nchw": "torch",
        "attention|bfloat16|d40:q4096:k4096": "torch",
        "attention|bfloat16|d160:q256:k256": "torch",
    }


def test_bench_sample_digit(run_cli, digit_ckpt, tmp_path):
    args = ["bench", "sample", "--model", "digit", "--checkpoint", digit_ckpt, "--batch", "2", "--steps", "2"]
    r = run_cli(*args, "--no-compile", "--repeats", "1", "--out", tmp_path)
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "sample_digit.json").read_text())
    assert report["rows"][0]["path"] == "eager" and report["rows"][0]["ms"] > 0
    assert "× eager" in r.out


def test_bench_sample_times_the_embedded_distilled_student_as_sampling_calls_it(run_cli, tmp_path):
    r = run_cli("bench", "sample", "--batch", "2", "--steps", "1", "--no-compile", "--repeats", "1", "--out", tmp_path)
    assert r.code == 0, r.err  # the default model is a guidance-distilled student: it needs its weight w
    rows = json.loads((tmp_path / "sample_digit.json").read_text())["rows"]
    assert rows[0]["path"] == "eager" and rows[0]["ms"] > 0, rows[0]


def test_bench_sample_fails_when_its_baseline_cannot_be_measured(run_cli, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("a network that cannot run")

    monkeypatch.setattr("hw2cli.diffusion.sample_ddim", broken)
    r = run_cli("bench", "sample", "--batch", "2", "--steps", "1", "--no-compile", "--repeats", "1", "--out", tmp_path)
    assert r.code == 1 and "the eager baseline was not measured" in r.err and "cannot run" in r.err
    assert not list(tmp_path.iterdir())  # no result file for a run that measured nothing
    for args, said in ((["--side", "33"], "--side is 33; the face UNet needs a multiple of 32"),
                       (["--width", "40"], "--width is 40; the face UNet's width is a multiple of 32")):  # fmt: skip
        r = run_cli("bench", "sample", "--model", "face", *args, "--no-compile", "--repeats", "1", "--out", tmp_path)
        assert r.code == 2 and said in r.err and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "sample", "--model", "vae"], "--model is 'vae'; expected one of"),
        (["bench", "kernels", "--dtype", "fp8"], "--dtype is 'fp8'; expected one of"),
    ],
)
def test_bench_bad_input(run_cli, tmp_path, args, message):
    r = run_cli(*args, "--out", tmp_path)
    assert r.code == 2 and message in r.err


def test_cuda_graph_needs_cuda(run_cli, tmp_path):
    from hw2cli.diffusion.wrappers import GraphedEps
    from hw2cli.errors import RunError

    if torch.cuda.is_available():
        pytest.skip("this check is about machines without CUDA")
    with pytest.raises(RunError, match="needs a CUDA device"):
        GraphedEps(lambda x, t, c: x)
    noise = tmp_path / "n"
    noise.mkdir()
    torch.save(torch.randn(1, 3, 32, 32), noise / "00.pt")
    r = run_cli("ddim", "sample", noise, tmp_path / "o", "--unet", tmp_path / "x.pt", "--cuda-graph")
    assert r.code == 1 and "--cuda-graph needs a CUDA device" in r.err


def test_accelerate_unet_keeps_the_function_and_the_state_dict():
    from builders import tiny_sd_unet

    from hw2cli.models.layers import GroupNorm
    from hw2cli.pretrained.sd_accel import KernelAttnProcessor, accelerate_unet

    unet = tiny_sd_unet().eval()
    x, ctx, t = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32), torch.tensor([10, 500])
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=ctx).sample
        keys = {k: v.clone() for k, v in unet.state_dict().items()}
        changed = accelerate_unet(unet)
        after = unet(x, t, encoder_hidden_states=ctx).sample
    assert changed["attention"] > 0 and changed["group_norm"] > 0
    assert all(isinstance(p, KernelAttnProcessor) for p in unet.attn_processors.values())
    assert not any(type(m) is torch.nn.GroupNorm for m in unet.modules())
    assert sum(isinstance(m, GroupNorm) for m in unet.modules()) == changed["group_norm"]
    assert keys.keys() == unet.state_dict().keys()
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
