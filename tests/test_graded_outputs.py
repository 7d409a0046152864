"""The graded folders as a grader meets them: a damaged image from an earlier run is made again,
an old image this run does not make is refused, and an unwritable weights folder (a read-only
home in a grading container) costs only the resume record, never the images."""

from __future__ import annotations

import pytest
import torch

from hw2cli.diffusion.wrappers import build_network
from hw2cli.io.checkpoints import DiffusionConfig, save_checkpoint
from hw2cli.models import FaceUNet

SIDE = 32


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    root = tmp_path_factory.mktemp("face")
    torch.manual_seed(0)
    torch.save(FaceUNet(width=32).state_dict(), root / "UNet.pt")
    noise = root / "noise"
    noise.mkdir()
    g = torch.Generator().manual_seed(1)
    for i in range(3):
        torch.save(torch.randn(1, 3, SIDE, SIDE, generator=g), noise / f"{i:02d}.pt")
    return root


@pytest.fixture(scope="module")
def digit_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    config = DiffusionConfig(model={"base_channels": 8, "head_dim": 8, "groups": 4, "channel_mult": [1, 2]})
    return save_checkpoint(build_network(config), config, tmp_path_factory.mktemp("digit"))


def sample(run_cli, face, out, noise=None):
    return run_cli("ddim", "sample", noise or face / "noise", out, "--unet", face / "UNet.pt", "--steps", "2")


def test_a_damaged_image_an_earlier_run_left_is_made_again(run_cli, face, tmp_path, monkeypatch):
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert sample(run_cli, face, out).code == 0
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "02.png").write_bytes(good["02.png"][:100])  # truncated, as a full disk or a copy cut short leaves it
    (out / "01.png").unlink()
    r = sample(run_cli, face, out)
    assert r.code == 0, r.err
    assert "kept 1 finished" in r.out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == good


def test_an_old_image_this_run_does_not_make_is_refused(run_cli, face, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert sample(run_cli, face, out).code == 0
    two = tmp_path / "two"
    two.mkdir()
    for name in ("00.pt", "01.pt"):
        shutil.copy(face / "noise" / name, two / name)
    r = sample(run_cli, face, out, noise=two)
    assert r.code == 2 and "already holds 02.png" in r.err and "Traceback" not in r.err
    (out / "02.png").unlink()
    (out / "notes.txt").write_text("the grader reads only the images")
    assert sample(run_cli, face, out, noise=two).code == 0


@pytest.mark.parametrize("command", ["ddim", "ddpm"])
def test_an_unwritable_weights_folder_costs_only_the_resume_record(
    run_cli, face, digit_ckpt, tmp_path, monkeypatch, command
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the weights folder should be")
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(blocker))
    out = tmp_path / "out"
    if command == "ddim":
        r = sample(run_cli, face, out)
        expected = {"00.png", "01.png", "02.png"}
    else:
        r = run_cli("ddpm", "generate", out, "--checkpoint", digit_ckpt, "--steps", "2", "--per-digit", "1")
        expected = {"mnistm", "svhn"}
    assert r.code == 0, r.err
    assert "cannot record this run's settings" in r.err and "an interrupted run will start over" in r.err
    assert {p.name for p in out.iterdir()} == expected
    if command == "ddpm":
        assert sorted(p.name for p in (out / "svhn").iterdir()) == [f"{d}_001.png" for d in range(10)]


def test_the_largest_seed_samples_with_eta(run_cli, face, tmp_path, monkeypatch):
    """The per-image generators derive from the seed (seed·1,000,003 + k): at the largest seed the
    CLI accepts they stay in range."""
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "cache"))
    r = run_cli("ddim", "sample", face / "noise", tmp_path / "out", "--unet", face / "UNet.pt", "--steps", "2",
                "--eta", "1", "--seed", str(2**32 - 1))  # fmt: skip
    assert r.code == 0, r.err
    monkeypatch.setenv("HW2_SEED", str(2**32))
    r = run_cli("config", "show")
    assert r.code == 2 and "from 0 to 4294967295" in r.err


def test_ddim_step_counts_that_leave_the_schedule_unused_are_refused(run_cli, face, tmp_path, monkeypatch):
    """Leading spacing uses stride T // S: 600 steps start at t = 600 of 999, so the first update
    would treat pure noise as a far cleaner image. Counts whose rounding loses over a tenth of the
    schedule are refused, with counts that fit; every other count's first step is the formula's."""
    from hw2cli.diffusion.samplers import leading_gap, make_timesteps
    from hw2cli.diffusion.schedules import NoiseSchedule

    schedule = NoiseSchedule.linear()
    for n in range(1, 1001):
        lost = 1000 - (1000 // n) * n
        assert (leading_gap(schedule, n, 1) is None) == (lost <= 100), n
        if lost <= 100 and n < 1000:
            assert make_timesteps(schedule, n, "leading", 1)[0] == (n - 1) * (1000 // n) + 1
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "cache"))
    r = run_cli("ddim", "sample", face / "noise", tmp_path / "o", "--unet", face / "UNet.pt", "--steps", "600")
    assert r.code == 2 and "start at t = 600 of 999" in r.err and "such as 250 or 500" in r.err
    r = run_cli("ddpm", "sample", "--digit", "1", "-n", "1", "--sampler", "ddim", "--steps", "400", "--out", tmp_path)
    assert r.code == 2 and "400 steps spaced every 2 timestep(s) start at t = 798" in r.err


def test_the_eta_grid_takes_its_columns_from_one_place_and_no_more_than_there_are(run_cli, face, tmp_path):
    common = [
        "ddim",
        "eta-grid",
        "--unet",
        face / "UNet.pt",
        "--etas",
        "0",
        "--steps",
        "2",
        "--out",
        tmp_path / "g.png",
    ]
    r = run_cli(*common, "--noise", face / "noise" / "00.pt", "--noise-dir", face / "noise")
    assert r.code == 2 and "not both" in r.err
    r = run_cli(*common, "--noise-dir", face / "noise", "--count", "5")
    assert r.code == 2 and "holds 3 noise file(s), fewer than the 5 columns asked; lower --count" in r.err


def test_grading_one_level_too_deep_says_which_folder_to_pass(run_cli, tmp_path):
    (tmp_path / "p1" / "mnistm").mkdir(parents=True)
    r = run_cli("ddpm", "eval", tmp_path / "p1" / "mnistm")
    assert r.code == 2 and f"pass the folder that holds mnistm/ and svhn/ ({tmp_path / 'p1'})" in r.err
    r = run_cli("--config", tmp_path, "config", "show")
    assert r.code == 2 and "is a folder; pass a TOML file" in r.err
