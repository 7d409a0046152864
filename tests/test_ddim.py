"""P2: the face UNet's DDIM end to end, the figures, the grader's MSE, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hw2cli.diffusion import NoiseSchedule, make_timesteps, sample_ddim
from hw2cli.diffusion.wrappers import build_network
from hw2cli.io.checkpoints import DiffusionConfig, save_checkpoint
from hw2cli.models import FaceUNet
from hw2cli.plugins.ddim import _parse_alphas as parse_alphas
from hw2cli.tasks.ddim import DDIMOptions, EpsSource, lerp, run_ddim, slerp

SIDE = 32


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    """A small face UNet saved as a plain state dict, and a noise folder in the homework's format."""
    root = tmp_path_factory.mktemp("face")
    torch.manual_seed(0)
    model = FaceUNet(width=32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # livelier outputs than the default init
    torch.save(model.state_dict(), root / "UNet.pt")
    noise = root / "noise"
    noise.mkdir()
    g = torch.Generator().manual_seed(1)
    for i in range(3):
        t = torch.randn(1, 3, SIDE, SIDE, generator=g)
        torch.save(t if i != 2 else t[0], noise / f"{i:02d}.pt")  # [1,3,H,W] and [3,H,W] both accepted
    return root, model


@pytest.fixture(scope="module")
def digit_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    config = DiffusionConfig(model={"base_channels": 8, "head_dim": 8, "groups": 4, "channel_mult": [1, 2]})
    return save_checkpoint(build_network(config), config, tmp_path_factory.mktemp("digit"))


def test_graded_sample_layout_and_determinism(run_cli, face, tmp_path):
    root, _ = face
    for out in (tmp_path / "a", tmp_path / "b"):
        r = run_cli("ddim", "sample", root / "noise", out, "--unet", root / "UNet.pt", "--steps", "3")
        assert r.code == 0, r.err
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["00.png", "01.png", "02.png"]
    for name in ("00.png", "02.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert Image.open(tmp_path / "a" / name).size == (SIDE, SIDE)


def test_on_a_cpu_the_face_unet_runs_channels_last_and_agrees_with_float64_nchw(face, monkeypatch):
    import copy

    from hw2cli.tasks import ddim

    root, model = face
    loaded = copy.deepcopy(model)
    monkeypatch.setattr(ddim, "load_face_unet", lambda path, device: loaded)  # to watch what the sampler runs
    seen = []
    loaded.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    source = ddim.face_source(root / "UNet.pt", torch.device("cpu"))
    x = torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([981, 21])
    with torch.inference_mode():
        eps = source.eps(x, t)
        reference = copy.deepcopy(model).double()(x.double(), t).float()  # the independent reference
    assert seen == [True] and loaded.down1.weight.is_contiguous(memory_format=torch.channels_last)
    assert eps.is_contiguous()  # the sampler keeps NCHW tensors
    assert torch.allclose(eps, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("eta", ["0", "0.5"])
def test_an_interrupted_graded_sample_resumes_to_identical_bytes(run_cli, face, tmp_path, interrupt_on_call, eta):
    from hw2cli.tasks import ddim as core

    root, _ = face
    common = ["--unet", root / "UNet.pt", "--steps", "3", "--eta", eta]
    assert run_cli("ddim", "sample", root / "noise", tmp_path / "straight", *common).code == 0  # CPU: batch 1
    restore = interrupt_on_call(core, "save_named", 2)
    out = tmp_path / "resumed"
    r = run_cli("ddim", "sample", root / "noise", out, *common)
    assert r.code == 130 and "interrupted; what was finished is kept: run the same command again" in r.err
    restore()
    assert sorted(p.name for p in out.iterdir()) == ["00.png"]  # written when its batch was done
    first = (out / "00.png").stat().st_mtime_ns
    r = run_cli("ddim", "sample", root / "noise", out, *common)
    assert r.code == 0 and "wrote 2 images" in r.out and "kept 1 finished by an earlier run" in r.out, r.out + r.err
    assert (out / "00.png").stat().st_mtime_ns == first  # kept, not made again
    for name in ("00.png", "01.png", "02.png"):
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "01.png", "02.png"]  # nothing but images
    # other settings make everything anew; so does --no-resume
    r = run_cli("ddim", "sample", root / "noise", out, *common, "--normalize", "clip")
    assert r.code == 0 and "kept" not in r.out
    assert (out / "00.png").read_bytes() != (tmp_path / "straight" / "00.png").read_bytes()
    r = run_cli("ddim", "sample", root / "noise", out, *common, "--normalize", "clip", "--no-resume")
    assert r.code == 0 and "kept" not in r.out


@pytest.mark.parametrize(
    ("command", "total"),
    [(["eta-grid", "--etas", "0,0.5,1", "--count", "2"], 3), (["interpolate", "--alphas", "0,0.5,1"], 6)],
)
def test_an_interrupted_figure_continues_where_it_stopped(run_cli, face, tmp_path, monkeypatch, command, total):
    from hw2cli.tasks import ddim as core

    root, _ = face
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "weights"))
    noise = (
        ["--noise-dir", root / "noise"]
        if command[0] == "eta-grid"
        else [root / "noise" / "00.pt", root / "noise" / "01.pt"]
    )
    common = [*command, *noise, "--unet", root / "UNet.pt", "--steps", "3"]
    if command[0] == "interpolate":
        common += ["--eta", "0.5"]  # per-step noise: a resumed batch must draw what it drew uninterrupted
    assert run_cli("ddim", *common, "--out", tmp_path / "straight.png").code == 0
    real, calls = core.to_images, []

    def counted(*args, **kwargs):  # one call per batch of images actually sampled
        calls.append(1)
        if interrupt_at and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(core, "to_images", counted)
    interrupt_at = 3
    assert run_cli("ddim", *common, "--out", tmp_path / "resumed.png").code == 130
    assert not (tmp_path / "resumed.png").exists()
    calls.clear()
    interrupt_at = None
    figure = core.eta_grid_figure if command[0] == "eta-grid" else core.interpolation_figure
    counted_images = []

    def counting(*args, on_batch=None, **kwargs):  # what the progress bar hears
        return figure(*args, on_batch=lambda n: (counted_images.append(n), on_batch and on_batch(n)), **kwargs)

    monkeypatch.setattr(core, figure.__name__, counting)
    r = run_cli("ddim", *common, "--out", tmp_path / "resumed.png")
    assert r.code == 0, r.err
    assert len(calls) == total - 2  # the two batches finished before the interruption were kept
    assert sum(counted_images) == pytest.approx(6)  # 3 η × 2 noises, or slerp and lerp × 3 α: kept ones count once
    pixels = [np.asarray(Image.open(tmp_path / f"{n}.png").convert("RGB")) for n in ("resumed", "straight")]
    assert np.array_equal(*pixels)  # (the bytes differ by the command line each PNG records: its --out)
    assert not list((tmp_path / "weights" / "outputs").glob("figure-*"))  # kept only until the figure exists
    calls.clear()
    assert run_cli("ddim", *common, "--out", tmp_path / "again.png", "--normalize", "clip").code == 0
    assert len(calls) == total  # other settings: nothing reused


def test_saved_pixels_are_the_minmax_formula(run_cli, face, tmp_path):
    root, model = face
    run_cli("ddim", "sample", root / "noise", tmp_path, "--unet", root / "UNet.pt", "--steps", "4")
    noise = torch.load(root / "noise" / "01.pt")
    source = EpsSource(model, NoiseSchedule.linear(), None, "t", torch.device("cpu"))
    x = run_ddim(source, noise, DDIMOptions(steps=4))[0].double().numpy()
    expected = np.floor((x - x.min()) / (x.max() - x.min()) * 255 + 0.5).clip(0, 255).astype(np.uint8)
    saved = np.asarray(Image.open(tmp_path / "01.png").convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(saved, expected)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_face_ddim_matches_diffusers_step_by_step(face, eta):
    """Each step starts from diffusers' own x_t, so rounding cannot accumulate through the network."""
    from builders import homework_ddim_scheduler

    from hw2cli.diffusion import ddim_step

    _, model = face
    s = NoiseSchedule.linear()
    sched = homework_ddim_scheduler(s)
    sched.set_timesteps(50)
    ts = make_timesteps(s, 50, "leading", offset=1)
    assert sched.timesteps.tolist() == ts == list(range(981, 0, -20))
    alpha_bar = s.alpha_bar.tolist()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, SIDE, SIDE, generator=g)
    with torch.inference_mode():
        for i, t in enumerate(ts):
            z = torch.randn(1, 3, SIDE, SIDE, generator=g)
            eps = model(x, torch.tensor([t]))
            theirs = sched.step(eps, t, x, eta=eta, variance_noise=z if eta else None).prev_sample
            a_prev = alpha_bar[ts[i + 1]] if i + 1 < len(ts) else alpha_bar[0]  # the spec's ᾱ_prev
            ours, _ = ddim_step(eps, x, alpha_bar[t], a_prev, eta, z)
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
            x = theirs
    # and the whole loop is those steps
    x_start = torch.randn(1, 3, SIDE, SIDE, generator=g)
    with torch.inference_mode():
        whole = sample_ddim(model, x_start.clone(), s, ts, eta=0.0)
        x = x_start.clone()
        for i, t in enumerate(ts):
            a_prev = alpha_bar[ts[i + 1]] if i + 1 < len(ts) else alpha_bar[0]
            x, _ = ddim_step(model(x, torch.tensor([t])), x, alpha_bar[t], a_prev, 0.0, None)
    assert torch.equal(whole, x)


def test_eval_of_a_folder_against_itself_is_zero_and_matches_the_formula(run_cli, face, tmp_path):
    root, _ = face
    out = tmp_path / "out"
    run_cli("ddim", "sample", root / "noise", out, "--unet", root / "UNet.pt", "--steps", "2")
    r = run_cli("ddim", "eval", out, out, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["mean"] == 0.0
    gt = tmp_path / "gt"
    gt.mkdir()
    expected = []
    for p in sorted(out.iterdir()):
        a = np.asarray(Image.open(p).convert("RGB")).astype(np.int64)
        b = np.clip(a + np.array([7, 0, -3]), 0, 255)
        Image.fromarray(b.astype(np.uint8)).save(gt / p.name)
        expected.append(((a - b) ** 2).mean())
    report = json.loads(run_cli("ddim", "eval", out, gt, "--json").out)
    assert report["mean"] == pytest.approx(np.mean(expected))
    assert "mean MSE" in run_cli("ddim", "eval", out, gt).out


def test_eval_names_missing_extra_and_mismatched_files(run_cli, tmp_path):
    out, gt = tmp_path / "out", tmp_path / "gt"
    out.mkdir()
    gt.mkdir()
    for name in ("00.png", "01.png"):
        Image.new("RGB", (8, 8)).save(gt / name)
    Image.new("RGB", (8, 8)).save(out / "00.png")
    r = run_cli("ddim", "eval", out, gt)
    assert r.code == 2 and "lacks 01.png" in r.err
    Image.new("RGB", (4, 4)).save(out / "01.png")
    r = run_cli("ddim", "eval", out, gt)
    assert r.code == 2 and "01.png is 4×4" in r.err and "8×8" in r.err
    Image.new("RGB", (8, 8)).save(out / "01.png")
    Image.new("RGB", (8, 8)).save(out / "notes.png")
    r = run_cli("ddim", "eval", out, gt)
    assert r.code == 0 and "notes.png" in r.err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: torch.save({"noise": torch.zeros(1)}, d / "00.pt"), "00.pt holds a dict, not a tensor"),
        (lambda d: torch.save(torch.zeros(1, 4, 32, 32), d / "00.pt"), "00.pt has shape [1, 4, 32, 32]"),
        (lambda d: torch.save(torch.zeros(32, 32), d / "00.pt"), "00.pt has shape [32, 32]"),
        (lambda d: (d / "00.pt").write_bytes(b"garbage"), "cannot be read as a tensor file (truncated or corrupt"),
        (lambda d: None, "holds no .pt noise files"),
        (
            lambda d: [
                torch.save(torch.zeros(1, 3, 32, 32), d / "00.pt"),
                torch.save(torch.zeros(1, 3, 64, 64), d / "01.pt"),
            ],
            "01.pt is 64×64 but 00.pt is 32×32",
        ),
        (lambda d: torch.save(torch.zeros(1, 3, 40, 40), d / "00.pt"), "needs sides divisible by 32"),
    ],
)
def test_bad_noise_files(run_cli, face, tmp_path, make, message):
    root, _ = face
    noise = tmp_path / "noise"
    noise.mkdir()
    make(noise)
    r = run_cli("ddim", "sample", noise, tmp_path / "o", "--unet", root / "UNet.pt", "--steps", "1")
    assert r.code == 2, r.err
    assert message in r.err and "Traceback" not in r.err


def test_a_folder_named_like_a_noise_file_is_not_one(face, tmp_path):
    from hw2cli.data.noise import load_noise_dir, load_noise_file
    from hw2cli.errors import UsageError

    root, _ = face
    noise = tmp_path / "noise"
    (noise / "x.pt").mkdir(parents=True)
    (noise / "00.pt").write_bytes((root / "noise" / "00.pt").read_bytes())
    names, x = load_noise_dir(noise)  # the folder is skipped, not reported as a missing file
    assert names == ["00"] and x.shape == (1, 3, SIDE, SIDE)
    with pytest.raises(UsageError, match=r"x\.pt is a folder, not a noise file"):
        load_noise_file(noise / "x.pt")


def test_bad_unet_and_options(run_cli, face, tmp_path):
    root, _ = face
    r = run_cli("ddim", "sample", root / "noise", tmp_path, "--unet", tmp_path / "missing.pt")
    assert r.code == 2 and "does not exist" in r.err
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    r = run_cli("ddim", "sample", root / "noise", tmp_path, "--unet", tmp_path / "other.pt")
    assert r.code == 2 and "is not a face UNet state dict" in r.err
    state = torch.load(root / "UNet.pt")
    del state["up23.resblocks.conv2.bias"]
    torch.save(state, tmp_path / "cut.pt")
    r = run_cli("ddim", "sample", root / "noise", tmp_path, "--unet", tmp_path / "cut.pt")
    assert r.code == 2 and "key 'up23.resblocks.conv2.bias' is missing" in r.err
    r = run_cli("ddim", "sample", root / "noise", tmp_path, "--unet", root / "UNet.pt", "--eta", "-1")
    assert r.code == 2 and "--eta is -1; expected at least 0" in r.err
    r = run_cli("ddim", "sample", root / "noise", tmp_path, "--unet", root / "UNet.pt", "--normalize", "tanh")
    assert r.code == 2 and "--normalize is 'tanh'; expected one of" in r.err


def test_eta_grid_and_interpolation_figures_with_the_face_unet(run_cli, face, tmp_path):
    root, _ = face
    r = run_cli(
        "ddim",
        "eta-grid",
        "--unet",
        root / "UNet.pt",
        "--noise-dir",
        root / "noise",
        "--steps",
        "2",
        "--etas",
        "0,1",
        "--out",
        tmp_path / "g.png",
    )
    assert r.code == 0, r.err
    assert Image.open(tmp_path / "g.png").size[0] > 100
    r = run_cli(
        "ddim",
        "interpolate",
        root / "noise" / "00.pt",
        root / "noise" / "02.pt",
        "--unet",
        root / "UNet.pt",
        "--steps",
        "2",
        "--alphas",
        "0,0.5,1",
        "--out",
        tmp_path / "i.png",
    )
    assert r.code == 0, r.err
    w, h = Image.open(tmp_path / "i.png").size
    assert w > h  # two rows, three columns


def test_without_unet_the_digit_model_serves(run_cli, digit_ckpt, tmp_path):
    args = ["--checkpoint", digit_ckpt, "--steps", "2"]
    r = run_cli(
        "ddim", "eta-grid", *args, "--etas", "0,0.5", "--count", "2", "--digit", "7", "--out", tmp_path / "g.png"
    )
    assert r.code == 0, r.err
    r = run_cli("ddim", "interpolate", *args, "--mode", "slerp", "--out", tmp_path / "i.png")
    assert r.code == 0, r.err
    noise = tmp_path / "n"
    noise.mkdir()
    torch.save(torch.randn(1, 3, 28, 28), noise / "00.pt")
    r = run_cli("ddim", "sample", noise, tmp_path / "o", *args)
    assert r.code == 0 and (tmp_path / "o" / "00.png").exists()
    torch.save(torch.randn(1, 3, 64, 64), noise / "00.pt")
    r = run_cli("ddim", "sample", noise, tmp_path / "o", *args)
    assert r.code == 2 and "pass --unet UNet.pt for face noise" in r.err


def test_slerp_against_the_formula_and_nearly_parallel_inputs():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 3, 8, 8, generator=g)
    an, bn = a.double().numpy().ravel(), b.double().numpy().ravel()
    theta = np.arccos(an @ bn / np.linalg.norm(an) / np.linalg.norm(bn))
    for alpha in (0.0, 0.3, 1.0):
        expected = (np.sin((1 - alpha) * theta) * an + np.sin(alpha * theta) * bn) / np.sin(theta)
        assert np.allclose(slerp(a, b, alpha).double().numpy().ravel(), expected, atol=1e-6)
    assert torch.allclose(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    for twin in (a.clone(), a * (1 + 1e-9), a * 2):
        mid = slerp(a, twin, 0.5)
        assert torch.isfinite(mid).all()
        assert torch.allclose(mid, lerp(a, twin, 0.5), atol=1e-5)


def test_alpha_parsing():
    assert parse_alphas("0:1:0.1") == [round(0.1 * i, 10) for i in range(11)]
    assert parse_alphas("0,0.5,1") == [0.0, 0.5, 1.0]
    from hw2cli.errors import UsageError

    assert parse_alphas("-1,2") == [-1.0, 2.0] and parse_alphas("-1:2:1.5") == [-1.0, 0.5, 2.0]
    for bad in ("1:0:0.1", "0:1:0", "a,b", "0:1", "0,1e300", "-1.5,0", "0:3:1", "-2:1:1"):
        with pytest.raises(UsageError, match="--alphas"):
            parse_alphas(bad)


def test_digit_model_clips_x0_by_default_and_the_face_unet_does_not(run_cli, digit_ckpt, face, tmp_path):
    noise = tmp_path / "n"
    noise.mkdir()
    torch.save(torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(5)) * 3, noise / "00.pt")
    common = ["--checkpoint", digit_ckpt, "--steps", "3", "--eta", "0.5", "--normalize", "clip"]
    for name, extra in (("default", []), ("on", ["--clip-x0"]), ("off", ["--no-clip-x0"])):
        assert run_cli("ddim", "sample", noise, tmp_path / name, *common, *extra).code == 0
    read = lambda name: (tmp_path / name / "00.png").read_bytes()  # noqa: E731
    assert read("default") == read("on") != read("off")
    root, _ = face
    for name, extra in (("fdefault", []), ("fon", ["--clip-x0"]), ("foff", ["--no-clip-x0"])):
        r = run_cli(
            "ddim", "sample", root / "noise", tmp_path / name, "--unet", root / "UNet.pt", "--steps", "3", *extra
        )
        assert r.code == 0, r.err
    assert (tmp_path / "fdefault" / "00.png").read_bytes() == (tmp_path / "foff" / "00.png").read_bytes()


def test_a_damaged_kept_batch_is_made_again(tmp_path):
    from hw2cli.tasks.ddim import FinishedBatches

    kept = FinishedBatches(tmp_path, {"command": "x"})
    images = torch.randint(0, 255, (2, 3, 4, 4), dtype=torch.uint8)
    kept.save("row-0", images)
    assert torch.equal(FinishedBatches(tmp_path, {"command": "x"}).load("row-0"), images)
    assert FinishedBatches(tmp_path, {"command": "y"}).load("row-0") is None  # other settings, other folder
    (kept.folder / "row-0.safetensors").write_bytes(b"not a safetensors file")
    again = FinishedBatches(tmp_path, {"command": "x"})
    assert again.load("row-0") is None and again.reused == 0
    assert FinishedBatches(tmp_path, {"command": "x"}, resume=False).folder.exists() is False  # --no-resume forgets


def test_progress_moves_a_step_at_a_time_and_adds_up_to_the_images(face):
    from hw2cli.tasks.ddim import DDIMOptions, SourceSpec, iter_ddim, open_source

    root, _ = face
    source = open_source(SourceSpec(unet=root / "UNet.pt"), torch.device("cpu"))
    noise = torch.randn(3, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    reports = []
    list(iter_ddim(source, noise, DDIMOptions(steps=4), batch=2, on_batch=reports.append))
    assert len(reports) == 4 + 4  # a report per step of each batch: a CPU face no longer sits at 0/10
    assert sum(reports[:4]) == pytest.approx(2) and sum(reports[4:]) == pytest.approx(1)


def test_rows_of_figures_abandoned_for_two_weeks_are_forgotten(tmp_path):
    import os
    import time

    from hw2cli.tasks.ddim import FinishedBatches

    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    old, recent = FinishedBatches(tmp_path, {"figure": "old"}), FinishedBatches(tmp_path, {"figure": "recent"})
    old.save("row-0", images), recent.save("row-0", images)
    weeks_ago = time.time() - 15 * 86400
    os.utime(old.folder, (weeks_ago, weeks_ago))
    again = FinishedBatches(tmp_path, {"figure": "old"})  # its own settings: kept, however old
    assert again.folder.exists()
    FinishedBatches(tmp_path, {"figure": "another"})
    assert not old.folder.exists() and recent.folder.exists()


def test_nan_weights_huge_noise_and_a_diverging_network_never_make_black_pngs(run_cli, face, tmp_path):
    """Min–max turns NaN into 0, so these made all-black graded images with exit 0."""
    root, _ = face
    state = torch.load(root / "UNet.pt")
    key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
    nan = {**state, key: torch.full_like(state[key], float("nan"))}
    torch.save(nan, tmp_path / "nan.pt")
    r = run_cli("ddim", "sample", root / "noise", tmp_path / "a", "--unet", tmp_path / "nan.pt", "--steps", "1")
    assert r.code == 2 and f"nan.pt holds NaN or infinite values in {key!r}" in r.err
    huge = tmp_path / "huge"
    huge.mkdir()
    torch.save(torch.randn(1, 3, SIDE, SIDE) * 1e30, huge / "00.pt")
    r = run_cli("ddim", "sample", huge, tmp_path / "b", "--unet", root / "UNet.pt", "--steps", "1")
    assert r.code == 2 and "00.pt holds values up to " in r.err and "e+30; DDIM starts from standard normal" in r.err
    blowup = {k: (v * 1e30 if v.is_floating_point() and v.ndim == 4 else v) for k, v in state.items()}
    torch.save(blowup, tmp_path / "blowup.pt")  # finite weights whose activations overflow
    r = run_cli("ddim", "sample", root / "noise", tmp_path / "c", "--unet", tmp_path / "blowup.pt", "--steps", "2")
    assert r.code == 1 and "produced NaN or infinite values from noise 0–" in r.err
    assert not list(tmp_path.glob("c/*.png"))
    zero = tmp_path / "zero.pt"
    torch.save(torch.zeros(1, 3, SIDE, SIDE), zero)
    r = run_cli("ddim", "interpolate", root / "noise" / "00.pt", zero, "--unet", root / "UNet.pt", "--steps", "1",
                "--mode", "slerp", "--out", tmp_path / "i.png")  # fmt: skip
    assert r.code == 2 and "zero.pt is all zeros: slerp needs a direction from each noise" in r.err


def test_repeated_rows_two_models_and_an_output_among_the_noise_are_refused(run_cli, face, digit_ckpt, tmp_path):
    root, _ = face
    unet = root / "UNet.pt"
    r = run_cli("ddim", "eta-grid", "--unet", unet, "--etas", "0,0.0", "--steps", "1", "--out", tmp_path / "e.png")
    assert r.code == 2 and "--etas lists 0 and 0.0, the same value twice" in r.err
    r = run_cli("ddim", "interpolate", "--unet", unet, "--alphas", "0,0.5,0", "--out", tmp_path / "i.png")
    assert r.code == 2 and "--alphas lists 0 and 0, the same value twice" in r.err
    r = run_cli("ddpm", "trajectory", "--timesteps", "999,500,999", "--out", tmp_path / "t.png")
    assert r.code == 2 and "--timesteps lists 999 and 999, the same value twice" in r.err
    r = run_cli("ddim", "sample", root / "noise", tmp_path / "o", "--unet", unet, "--checkpoint", digit_ckpt)
    assert r.code == 2 and "give one of them, not both" in r.err
    noise = tmp_path / "noise"
    noise.mkdir()
    (noise / "00.pt").write_bytes((root / "noise" / "00.pt").read_bytes())
    for out in (noise, noise / "out"):
        r = run_cli("ddim", "sample", noise, out, "--unet", unet, "--steps", "1")
        assert r.code == 2 and f"OUT {out} is inside the noise folder {noise}" in r.err
    assert sorted(p.name for p in noise.iterdir()) == ["00.pt"]
    assert not list(tmp_path.glob("*.png"))
