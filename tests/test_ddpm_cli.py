"""`hw2 ddpm` and `hw2 classifier` as a user runs them, on a tiny model trained here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hw2cli.data.synth import synthesize
from hw2cli.diffusion.wrappers import build_network
from hw2cli.io.checkpoints import DiffusionConfig, save_checkpoint
from hw2cli.models.classifiers import LeNet

TINY = {"base_channels": 8, "head_dim": 8, "groups": 4, "channel_mult": [1, 2], "attention_levels": [1]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = DiffusionConfig(model=dict(TINY))
    net = build_network(config)
    with torch.no_grad():  # a random network whose output depends on the condition
        for p in net.parameters():
            if not p.any():
                p.normal_(std=0.05)
    return save_checkpoint(net, config, tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synthesize(root, per_class=6, seed=4)
    return root / "digits"


def test_sample_writes_pngs_and_a_grid(run_cli, checkpoint, tmp_path):
    out = tmp_path / "s"
    r = run_cli("ddpm", "sample", "--digit", "3", "-n", "2", "--steps", "2", "--checkpoint", checkpoint, "--out", out)
    assert r.code == 0, r.err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grid_digit3.png", "mnistm_3_001.png", "mnistm_3_002.png", "svhn_3_001.png", "svhn_3_002.png"]
    assert Image.open(out / "mnistm_3_001.png").size == (28, 28)
    grid = np.asarray(Image.open(out / "grid_digit3.png").convert("RGB"))
    for name in names[1:]:  # each sample in the labelled grid, 3 px per pixel
        tile = np.asarray(Image.open(out / name).convert("RGB")).repeat(3, axis=0).repeat(3, axis=1)
        assert len(_find(grid, tile)) == 1


def test_a_network_whose_outputs_overflow_stops_before_writing_and_says_so(run_cli, tmp_path):
    torch.manual_seed(0)
    config = DiffusionConfig(model=dict(TINY))
    net = build_network(config)
    with torch.no_grad():  # finite weights (a NaN one is refused at load) whose outputs overflow float32
        for p in net.parameters():
            p.normal_(std=1e30)
    bad = save_checkpoint(net, config, tmp_path / "bad")
    out = tmp_path / "s"
    r = run_cli("ddpm", "sample", "--digit", "3", "-n", "1", "--steps", "2", "--checkpoint", bad, "--out", out)
    assert r.code == 1, r.err
    said = " ".join(r.err.split())
    assert "the dpm sampler produced NaN or infinite values at guidance 2: the network's outputs overflow" in said
    assert "lower" not in said and not list(out.glob("*.png"))


def test_a_smaller_sample_in_a_used_folder_names_the_earlier_images_it_leaves(run_cli, checkpoint, tmp_path):
    out = tmp_path / "s"
    base = ["ddpm", "sample", "--digit", "3", "--steps", "2", "--checkpoint", checkpoint, "--out", out]
    r = run_cli(*base, "-n", "3")
    assert r.code == 0 and "earlier" not in r.err, r.err
    r = run_cli(*base, "-n", "3", "--seed", "1")  # the same size: everything is overwritten, nothing to say
    assert r.code == 0 and "earlier" not in r.err, r.err
    r = run_cli(*base, "-n", "1", "--dataset", "svhn")
    assert r.code == 0, r.err
    err = " ".join(r.err.split())
    assert "keeps 2 images of an earlier, larger sample of 3 (svhn_3_002.png (and 1 more))" in err
    assert "mnistm" not in err  # another data set's samples are not this run's business


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_other_samplers(run_cli, checkpoint, tmp_path, sampler):
    out = tmp_path / sampler
    args = ["ddpm", "sample", "-d", "0", "--dataset", "svhn", "-n", "1", "--sampler", sampler, "--steps", "3"]
    r = run_cli(*args, "--checkpoint", checkpoint, "--out", out)
    assert r.code == 0, r.err
    assert (out / "svhn_0_001.png").exists()


def test_generate_is_the_graded_layout_and_reproducible(run_cli, checkpoint, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        r = run_cli("ddpm", "generate", out, "--checkpoint", checkpoint, "--steps", "1")
        assert r.code == 0, r.err
    expected = sorted(f"{d}_{i:03d}.png" for d in range(10) for i in range(1, 51))
    for dataset in ("mnistm", "svhn"):
        assert sorted(p.name for p in (a / dataset).iterdir()) == expected
        for name in expected[::37]:
            assert (a / dataset / name).read_bytes() == (b / dataset / name).read_bytes()
    assert sorted(p.name for p in a.iterdir()) == ["mnistm", "svhn"]
    # the two data sets get different noise
    assert (a / "mnistm" / "0_001.png").read_bytes() != (a / "svhn" / "0_001.png").read_bytes()


def test_generate_refuses_a_folder_with_other_files(run_cli, checkpoint, tmp_path):
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "notes.txt").write_text("x")
    r = run_cli("ddpm", "generate", tmp_path, "--checkpoint", checkpoint, "--steps", "1", "--per-digit", "1")
    assert r.code == 2
    assert "already holds notes.txt" in r.err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["ddpm", "sample", "--digit", "12"], 2, "--digit is 12; expected at most 9."),
        (["ddpm", "sample", "--digit", "1", "--dataset", "cifar"], 2, "--dataset is 'cifar'; expected one of"),
        (["ddpm", "sample", "--digit", "1", "--sampler", "euler"], 2, "--sampler is 'euler'; expected one of"),
        (["ddpm", "sample", "--digit", "1", "--checkpoint", "nope.safetensors"], 2, "does not exist"),
        (["ddpm", "trajectory", "--timesteps", "0,5000"], 2, "the timestep 5000 is outside"),
        (["ddpm", "trajectory", "--timesteps", "a,b"], 2, "must be comma-separated integers"),
    ],
)
def test_bad_input(run_cli, checkpoint, args, code, message):
    if "--checkpoint" not in args:
        args = [*args, "--checkpoint", str(checkpoint)]
    r = run_cli(*args)
    assert r.code == code, r.err
    assert message in r.err
    assert "Traceback" not in r.err


def test_wrong_checkpoint_names_the_first_key(run_cli, tmp_path):
    torch.save({"conv1.weight": torch.zeros(6, 3, 5, 5)}, tmp_path / "classifier.pth")
    (tmp_path / "config.json").write_text(json.dumps(DiffusionConfig(model=dict(TINY)).to_dict()))
    r = run_cli("ddpm", "sample", "--digit", "1", "--checkpoint", tmp_path / "classifier.pth")
    assert r.code == 2
    assert "does not fit a DigitUNet: key 'time_mlp.0.weight' is missing" in r.err


def test_unwritable_output(run_cli, checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli(
        "ddpm", "sample", "-d", "1", "-n", "1", "--steps", "1", "--checkpoint", checkpoint, "--out", blocker / "o"
    )
    assert r.code == 2  # a path that cannot be written is the user's to fix, and found before any sampling
    assert "is a file, not a folder" in r.err


def test_grid_and_trajectory_figures(run_cli, checkpoint, tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = tmp_path / f".grid_mnistm.png.hw2-{dead.pid}-5ym6oc8z.tmp"  # what a kill -9 mid-write leaves
    killed.write_bytes(b"")
    r = run_cli("ddpm", "grid", "--out", tmp_path, "--steps", "1", "--checkpoint", checkpoint)
    assert r.code == 0, r.err
    assert not killed.exists()
    for name in ("grid_mnistm.png", "grid_svhn.png"):
        w, h = Image.open(tmp_path / name).size
        assert w > 200 and h > 200
    r = run_cli(
        "ddpm", "trajectory", "--out", tmp_path / "t.png", "--timesteps", "0,100,999", "--checkpoint", checkpoint
    )
    assert r.code == 0, r.err
    assert Image.open(tmp_path / "t.png").size[0] > Image.open(tmp_path / "t.png").size[1]
    assert "trajectory: 2000/2000" in r.err  # minutes on a CPU: the progress counts every step of both data sets


def _find(figure: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
    """Where ``tile`` appears pixel for pixel in ``figure`` (top-left corners)."""
    h, w = tile.shape[:2]
    ys, xs = np.nonzero((figure[: 1 - h or None, : 1 - w or None] == tile[0, 0]).all(axis=2))
    return [(y, x) for y, x in zip(ys, xs, strict=True) if np.array_equal(figure[y : y + h, x : x + w], tile)]


def test_trajectory_shows_the_clipped_ddpm_snapshots_in_the_order_asked(run_cli, checkpoint, tmp_path):
    """Each column is x right after the DDPM step at its t, sampled with x0 clipped (as every
    other digit command samples), drawn 5 px per pixel, columns in the order of --timesteps."""
    from hw2cli.diffusion import guided_eps, sample
    from hw2cli.io.checkpoints import load_model
    from hw2cli.io.images import to_uint8

    r = run_cli("ddpm", "trajectory", "--out", tmp_path / "t.png", "--timesteps", "0,500", "--seed", "3",
                "--checkpoint", checkpoint)  # fmt: skip
    assert r.code == 0, r.err
    figure = np.asarray(Image.open(tmp_path / "t.png").convert("RGB"))
    model = load_model(checkpoint, torch.device("cpu"))

    def snapshots(clip_x0):
        snaps = {}
        x = torch.randn((1, 3, 28, 28), generator=torch.Generator().manual_seed(3))
        eps = guided_eps(model.net, 2.0, torch.tensor([model.null_condition]), torch.device("cpu"), torch.float32)
        with torch.inference_mode():
            sample("ddpm", eps, x, model.schedule, None, cond=torch.tensor([model.condition(0, "mnistm")]),
                   callback=lambda info: snaps.update({info["t"]: info["x"].clone()}),
                   generator=torch.Generator().manual_seed(3), clip_x0=clip_x0)  # fmt: skip
        tile = {t: to_uint8(snaps[t], model.config.data_range)[0].permute(1, 2, 0).numpy() for t in (0, 500)}
        return {t: v.repeat(5, axis=0).repeat(5, axis=1) for t, v in tile.items()}

    clipped = snapshots(True)
    assert not np.array_equal(clipped[0], snapshots(False)[0])  # the switch matters for this model
    ((y0, x0),) = _find(figure, clipped[0])
    ((y500, x500),) = _find(figure, clipped[500])
    assert y0 == y500 and x0 < x500  # one row (MNIST-M), t = 0 first as asked


def test_trajectory_of_a_teapearce_checkpoint_spans_its_schedule(run_cli, tmp_path):
    """TeaPearce's schedule runs t = n_T … 1: the default columns lie in it, t = 0 is refused
    with the range, and --n-t reads a checkpoint trained with another n_T (the report's 750)."""
    from hw2cli.models import ContextUnet

    torch.manual_seed(2)
    torch.save(ContextUnet(3, 8, 20).state_dict(), tmp_path / "model_39.pth")
    args = ["ddpm", "trajectory", "--checkpoint", tmp_path / "model_39.pth"]
    r = run_cli(*args, "--out", tmp_path / "a.png")
    assert r.code == 0, r.err
    assert "trajectory: 800/800" in r.err  # 400 steps per data set
    r = run_cli(*args, "--timesteps", "0,200")
    assert r.code == 2 and "the timestep 0 is outside this model's schedule (1 to 400)" in r.err
    r = run_cli(*args, "--n-t", "30", "--timesteps", "31")
    assert r.code == 2 and "(1 to 30)" in r.err
    r = run_cli(*args, "--n-t", "30", "--timesteps", "1,15,30", "--out", tmp_path / "b.png")
    assert r.code == 0, r.err
    assert "trajectory: 60/60" in r.err


def test_n_t_is_refused_for_a_checkpoint_that_records_its_schedule(run_cli, checkpoint, tmp_path):
    r = run_cli("ddpm", "grid", "--n-t", "750", "--checkpoint", checkpoint, "--out", tmp_path)
    assert r.code == 2 and "records its own schedule" in r.err and "--n-t is for checkpoints without a config" in r.err


def test_figures_go_under_the_output_root_setting_by_default(run_cli, checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HW2_OUTPUT_ROOT", str(tmp_path / "mine"))
    fast = ["--steps", "1", "--checkpoint", checkpoint]
    assert run_cli("ddpm", "grid", "--dataset", "mnistm", *fast).code == 0
    assert run_cli("ddpm", "trajectory", "--timesteps", "0,999", "--checkpoint", checkpoint).code == 0
    ddim = ["--steps", "2", "--checkpoint", checkpoint]
    assert run_cli("ddim", "eta-grid", "--etas", "0,1", "--count", "1", *ddim).code == 0
    assert run_cli("ddim", "interpolate", "--alphas", "0,1", "--mode", "lerp", *ddim).code == 0
    figures = tmp_path / "mine" / "figures"
    assert sorted(p.name for p in figures.iterdir()) == [
        "eta_grid.png", "grid_mnistm.png", "interpolation.png", "trajectory.png"
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # nothing in the working folder


def grader_predictions(folder, model) -> dict[str, int]:
    """The grader's own pipeline, with torchvision transforms, independent of hw2's loader."""
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize((28, 28)), transforms.ToTensor(), transforms.Normalize(0.5, 0.5)])
    return {path.name: int(model(tf(Image.open(path).convert("RGB"))[None]).argmax(1).item())
            for path in sorted(folder.iterdir())}  # fmt: skip


def grader_accuracy(predictions: dict[str, int]) -> float:
    return sum(p == int(name[0]) for name, p in predictions.items()) / len(predictions)


def input_dependent_lenet() -> LeNet:
    """A LeNet whose answer depends on its input (a freshly initialised one answers one class for
    every image, which would let a wrong preprocessing pass unnoticed)."""
    torch.manual_seed(5)
    lenet = LeNet().eval()
    with torch.no_grad():
        for p in lenet.parameters():
            p.mul_(6.0)
    return lenet


def test_eval_matches_the_grader_pipeline(run_cli, checkpoint, tmp_path):
    out = tmp_path / "gen"  # images of very different colours and contrasts, named as the graded ones
    rng = np.random.default_rng(0)
    for d in ("mnistm", "svhn"):
        (out / d).mkdir(parents=True)
        for digit in range(10):
            for i in range(1, 4):
                base = rng.integers(0, 256, 3)
                pixels = np.clip(base + rng.normal(0, rng.uniform(5, 90), (28, 28, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(out / d / f"{digit}_{i:03d}.png")
    lenet = input_dependent_lenet()
    torch.save({"state_dict": lenet.state_dict()}, tmp_path / "Classifier.pth")  # the official format
    args = ["--mnistm-checkpoint", tmp_path / "Classifier.pth", "--svhn-checkpoint", tmp_path / "Classifier.pth"]
    r = run_cli("ddpm", "eval", out, *args, "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    with torch.no_grad():
        predictions = {d: grader_predictions(out / d, lenet) for d in ("mnistm", "svhn")}
    assert all(len(set(p.values())) >= 4 for p in predictions.values())  # the answers depend on the pixels
    expected = {d: grader_accuracy(p) for d, p in predictions.items()}
    for d in ("mnistm", "svhn"):
        per_digit = {str(k): v for k, v in report[d]["per_digit"].items()}
        for digit in range(10):
            names = [n for n in predictions[d] if n[0] == str(digit)]
            want = sum(predictions[d][n] == digit for n in names) / len(names)
            assert per_digit[str(digit)] == pytest.approx(want)
    assert report["mnistm"]["accuracy"] == pytest.approx(expected["mnistm"])
    assert report["svhn"]["accuracy"] == pytest.approx(expected["svhn"])
    assert report["mean_accuracy"] == pytest.approx((expected["mnistm"] + expected["svhn"]) / 2)
    assert report["mnistm"]["count"] == 30
    table = run_cli("ddpm", "eval", out, *args)
    assert "mean accuracy" in table.out
    said = " ".join(table.err.split())  # the user's file as given: it may share an embedded classifier's name
    assert f"graded by mnistm: lenet ({tmp_path / 'Classifier.pth'})" in said and "embedded" not in said


def test_eval_names_what_the_homework_grader_would_trip_on(run_cli, tmp_path):
    """A note beside the images (the grader opens every file), a digit missing, too few of another."""
    out = tmp_path / "gen"
    for d in ("mnistm", "svhn"):
        (out / d).mkdir(parents=True)
        for digit in range(9):  # no 9s
            for i in range(1, 51 if digit else 3):  # two 0s
                Image.fromarray(np.full((28, 28, 3), 20 * digit, np.uint8)).save(out / d / f"{digit}_{i:03d}.png")
    (out / "mnistm" / "notes.txt").write_text("my notes")
    r = run_cli("ddpm", "eval", out, "--json")
    assert r.code == 0, r.err
    problems = json.loads(r.out)["problems"]
    assert f"{out / 'mnistm'} also holds notes.txt, not images" in problems[0]
    assert problems[1] == f"{out / 'mnistm'} should hold 50 images of each digit; it has 0: 2, 9: 0."
    assert len(problems) == 3 and "Warning: " in r.err
    table = run_cli("ddpm", "eval", out)
    assert "nan" not in table.out and "–" in table.out
    said = " ".join(table.err.split())  # a score from hw2's own classifiers is not the homework's grade
    assert "lenet (classifier_svhn.safetensors, embedded in hw2, not the homework grader)" in said
    assert "--svhn-classifier detectors" in said


def test_eval_errors(run_cli, tmp_path):
    (tmp_path / "mnistm").mkdir()
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "mnistm" / "x_001.png")
    torch.save({"state_dict": LeNet().state_dict()}, tmp_path / "c.pth")
    r = run_cli(
        "ddpm", "eval", tmp_path, "--mnistm-checkpoint", tmp_path / "c.pth", "--svhn-checkpoint", tmp_path / "c.pth"
    )
    assert r.code == 2 and "x_001.png" in r.err and "does not start with its digit" in r.err


def test_classifier_train_and_use(run_cli, digits, tmp_path):
    out = tmp_path / "clf.safetensors"
    r = run_cli(
        "classifier", "train", "--data", digits, "--dataset", "mnistm", "--epochs", "1", "--batch", "16", "--out", out
    )
    assert r.code == 0, r.err
    assert "val accuracy" in r.out
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["arch"] == "lenet" and record["epochs"] == 1 and isinstance(record["val_accuracy"], float)
    trained = out.read_bytes()
    again = ["classifier", "train", "--data", digits, "--dataset", "mnistm", "--epochs", "1", "--batch", "8"]
    r = run_cli(*again, "--out", out)
    assert r.code == 2 and "already holds a trained classifier; pass --overwrite" in r.err
    assert out.read_bytes() == trained  # not lost to a second run
    assert run_cli(*again, "--out", out, "--overwrite").code == 0
    assert out.read_bytes() != trained
    mine = tmp_path / "model.run" / "notes" / "thesis.txt"  # where model.safetensors's run would keep its state
    mine.parent.mkdir(parents=True)
    mine.write_text("my thesis")
    r = run_cli(*again, "--out", tmp_path / "model.safetensors")
    assert r.code == 2 and "model.run already exists and is not an unfinished classifier run" in r.err
    assert mine.read_text() == "my thesis" and not (tmp_path / "model.safetensors").exists()
    r = run_cli("classifier", "train", "--data", digits, "--dataset", "cifar")
    assert r.code == 2 and "--dataset is 'cifar'; expected one of" in r.err


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_an_interrupted_classifier_run_resumes_bit_exactly(run_cli, digits, tmp_path, monkeypatch, signum):
    import os
    import signal

    from safetensors.torch import load_file

    from hw2cli.tasks import classify

    args = ["classifier", "train", "--data", digits, "--dataset", "mnistm", "--epochs", "3", "--batch", "16"]
    assert run_cli(*args, "--out", tmp_path / "straight.safetensors").code == 0
    real, calls = classify._augment, []

    def signalled(*a, **kw):  # the signal arrives in the middle of a step of the second epoch
        calls.append(1)
        if len(calls) == steps_per_epoch + 2:
            os.kill(os.getpid(), getattr(signal, signum))
        return real(*a, **kw)

    from hw2cli.data.tensors import load_digit_tensors

    steps_per_epoch = len(load_digit_tensors(digits, ("mnistm",), "train")) // 16
    monkeypatch.setattr(classify, "_augment", signalled)
    out = tmp_path / "resumed.safetensors"
    r = run_cli(*args, "--out", out)
    assert r.code == 130, r.err
    assert f"Stopped: {signum} after step {steps_per_epoch + 2}; saved in" in r.err  # no "Error:"
    assert "Error" not in r.err
    assert not out.exists() and classify.state_folders(classify.run_folder(out))  # the state, not a classifier
    monkeypatch.setattr(classify, "_augment", real)
    r = run_cli(*args, "--out", out)  # a new run must not overwrite the unfinished one
    assert r.code == 2 and "--resume" in r.err
    r = run_cli(*args[:-4], "--epochs", "4", "--batch", "16", "--out", out, "--resume")
    assert r.code == 2 and "same options" in r.err
    r = run_cli(*args, "--out", out, "--resume")
    assert r.code == 0, r.err
    want, got = load_file(tmp_path / "straight.safetensors"), load_file(out)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert not classify.run_folder(out).exists()  # finished: nothing left to resume


def test_a_damaged_or_half_deleted_classifier_state_is_said_or_cleaned_up(run_cli, digits, tmp_path, monkeypatch):
    import os
    import shutil
    import signal

    from safetensors.torch import load_file, save_file

    from hw2cli.tasks import classify

    args = ["classifier", "train", "--data", digits, "--dataset", "mnistm", "--epochs", "2", "--batch", "16"]
    out = tmp_path / "c.safetensors"
    real, calls = classify._augment, []

    def signalled(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **kw)

    monkeypatch.setattr(classify, "_augment", signalled)
    assert run_cli(*args, "--out", out).code == 130
    monkeypatch.setattr(classify, "_augment", real)
    run = classify.run_folder(out)
    (state,) = classify.state_folders(run)
    epoch = state / "epoch.safetensors"
    shutil.copy(epoch, tmp_path / "epoch.copy")
    perm = load_file(epoch)["perm"]
    mark_file = state / "hw2_state.json"
    mark = json.loads(mark_file.read_text())

    def without_digests():  # a state an hw2 that recorded no file digests wrote
        mark_file.write_text(json.dumps({k: v for k, v in mark.items() if k != "files"}))

    for damage, said in [
        (lambda: epoch.write_bytes(epoch.read_bytes()[:-9]), "epoch.safetensors cannot be read"),
        (lambda: save_file({"perm": perm[:-1]}, epoch), "epoch.safetensors has"),
        (lambda: (save_file({"perm": perm[:-1]}, epoch), without_digests()), "does not hold an order of the"),
        (lambda: epoch.unlink(), "epoch.safetensors is missing"),
        (lambda: (epoch.unlink(), without_digests()), "epoch.safetensors is missing"),
    ]:
        damage()
        r = run_cli(*args, "--out", out, "--resume")
        assert r.code == 2 and said in r.err and "unexpected" not in r.err, r.err
        shutil.copy(tmp_path / "epoch.copy", epoch)
        mark_file.write_text(json.dumps(mark))
    # what a kill while an older state was being deleted left: no mark, an optimizer file
    debris = run / "state-0000000"
    debris.mkdir()
    (debris / "optimizer.bin").write_bytes(b"x" * 64)
    r = run_cli(*args, "--out", out, "--resume")
    assert r.code == 0, r.err
    assert out.is_file() and not run.exists()  # finished: the debris went with the run folder
    r = run_cli(*args, "--out", out, "--resume")
    assert r.code == 2 and "is a finished classifier" in r.err and "--overwrite without --resume" in r.err
    r = run_cli(*args[:-2], "--batch", "5000", "--out", out, "--overwrite")
    assert r.code == 2 and "--batch 5000 is larger than the" in r.err
    run.mkdir()  # a run folder holding only such debris is no one's: a new run may use it
    (run / "state-0000007").mkdir()
    assert run_cli(*args, "--out", out, "--overwrite").code == 0 and not run.exists()


def test_teapearce_checkpoint_samples_through_the_cli(run_cli, tmp_path):
    from hw2cli.models import ContextUnet

    torch.manual_seed(2)
    torch.save(ContextUnet(3, 8, 20).state_dict(), tmp_path / "model_39.pth")
    args = ["ddpm", "sample", "-d", "4", "-n", "1", "--sampler", "ddpm", "--steps", "3", "--out", tmp_path / "o"]
    r = run_cli(*args, "--checkpoint", tmp_path / "model_39.pth")
    assert r.code == 0, r.err
    assert (tmp_path / "o" / "svhn_4_001.png").exists()
    r = run_cli(*args, "--checkpoint", tmp_path / "model_39.pth", "--data-range", "0-1")
    assert r.code == 2 and "--data-range is '0-1'; expected one of" in r.err


def test_resnet34_state_dict_loads_for_svhn(tmp_path):
    from hw2cli.models.classifiers import resnet34_svhn
    from hw2cli.tasks.grading import load_classifier

    torch.manual_seed(0)
    net = resnet34_svhn()
    torch.save(net.state_dict(), tmp_path / "resnet34_svhn.pth")
    loaded, description = load_classifier(tmp_path / "resnet34_svhn.pth", "svhn")
    assert description.startswith("resnet34")
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x))


def test_script_wrapper_usage(tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "hw2_1.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr
    # run from anywhere without an activated venv: no hw2 on PATH, no Python that has it
    import shutil

    copy = tmp_path / "checkout" / "scripts"
    shutil.copytree(script.parent, copy)
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # the system's tools, not the venv's
    for name, args in [("hw2_1.sh", ["o"]), ("hw2_2.sh", ["n", "o", "u"]), ("hw2_3.sh", ["i", "o", "c"])]:
        proc = subprocess.run(
            ["/bin/bash", str(copy / name), *args], capture_output=True, text=True, env=bare, cwd=tmp_path
        )
        assert proc.returncode == 1, proc.stderr
        assert f"{name}: the hw2 command is not installed; install it first with: pip install -e" in proc.stderr
    # a checkout with its venv beside scripts/: that venv's hw2 runs, with the graded arguments
    fake = tmp_path / "checkout" / ".venv" / "bin" / "hw2"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho "hw2 $*"\n')
    fake.chmod(0o755)
    args = ["/bin/bash", str(copy / "hw2_2.sh"), "n", "o", "u"]
    proc = subprocess.run(args, capture_output=True, text=True, env=bare)
    assert proc.returncode == 0 and proc.stdout == "hw2 ddim sample --unet=u -- n o\n", proc.stderr
    other = tmp_path / "elsewhere" / "hw2"  # another hw2 on PATH: the checkout's own still runs
    other.parent.mkdir()
    other.write_text('#!/bin/sh\necho "another hw2"\n')
    other.chmod(0o755)
    proc = subprocess.run(args, capture_output=True, text=True, env={**bare, "PATH": f"{other.parent}:/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stdout == "hw2 ddim sample --unet=u -- n o\n", proc.stderr
    fake.unlink()  # no venv beside: the one on PATH
    proc = subprocess.run(args, capture_output=True, text=True, env={**bare, "PATH": f"{other.parent}:/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stdout == "another hw2\n", proc.stderr


def test_graded_scripts_take_paths_that_look_like_options(tmp_path):
    """A folder named -o2 is a folder: the scripts end hw2's options with -- before the paths."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from hw2cli.models import FaceUNet

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    torch.manual_seed(0)
    torch.save(FaceUNet(width=32).state_dict(), tmp_path / "-u.pt")
    (tmp_path / "-n").mkdir()
    torch.save(torch.randn(1, 3, 32, 32), tmp_path / "-n" / "00.pt")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(scripts / "hw2_2.sh"), "-n", "-o2", "-u.pt"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "-o2").iterdir()) == ["00.png"]


def test_embedded_default_works_out_of_the_box(run_cli, tmp_path):
    """`hw2 ddpm sample --digit 3` with no checkpoint: the shipped model and classifiers."""
    r = run_cli("ddpm", "sample", "--digit", "3", "-n", "2", "--steps", "4", "--out", tmp_path)
    assert r.code == 0, r.err
    assert "embedded default" in r.out
    assert len(list(tmp_path.glob("mnistm_3_*.png"))) == 2 and len(list(tmp_path.glob("svhn_3_*.png"))) == 2
    from hw2cli.tasks.grading import load_classifier

    for dataset in ("mnistm", "svhn"):
        _, description = load_classifier(None, dataset)
        assert description.startswith("lenet")


def test_batch_size_does_not_change_dpm_images(run_cli, checkpoint, tmp_path):
    for batch in ("3", "7"):
        r = run_cli(
            "ddpm",
            "generate",
            tmp_path / batch,
            "--checkpoint",
            checkpoint,
            "--steps",
            "2",
            "--per-digit",
            "2",
            "--batch",
            batch,
        )
        assert r.code == 0, r.err
    for name in ("0_001.png", "9_002.png"):
        assert (tmp_path / "3" / "svhn" / name).read_bytes() == (tmp_path / "7" / "svhn" / name).read_bytes()


def test_assets_stay_small():
    from importlib import resources
    from pathlib import Path

    folder = Path(str(resources.files("hw2cli.assets")))
    total = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert total < 15_000_000


def test_an_interrupted_generate_resumes_to_identical_bytes(run_cli, checkpoint, tmp_path, interrupt_on_call):
    import os
    import subprocess
    import sys

    from hw2cli.tasks import ddpm as core

    common = ["--checkpoint", checkpoint, "--steps", "2", "--per-digit", "3", "--batch", "7"]
    assert run_cli("ddpm", "generate", tmp_path / "straight", *common).code == 0
    restore = interrupt_on_call(core, "write_samples", 3)
    out = tmp_path / "resumed"
    assert run_cli("ddpm", "generate", out, *common).code == 130
    restore()
    # a kill -9 in the middle of a write leaves its temporary behind: the rerun must not trip over it
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / "mnistm" / f".0_002.png.hw2-{dead.pid}-abc123.tmp").write_bytes(b"")
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / "mnistm").iterdir()}
    r = run_cli("ddpm", "generate", out, *common)
    assert r.code == 0, r.err
    assert f"kept {len(done_before) - 1} finished" in r.out
    for dataset in ("mnistm", "svhn"):
        names = sorted(os.listdir(tmp_path / "straight" / dataset))
        assert sorted(os.listdir(out / dataset)) == names
        for name in names:
            assert (out / dataset / name).read_bytes() == (tmp_path / "straight" / dataset / name).read_bytes()
    for name, mtime in done_before.items():  # finished images were kept, not made again
        if not name.startswith("."):
            assert (out / "mnistm" / name).stat().st_mtime_ns == mtime
    # other settings: nothing is reused, everything is made anew
    r = run_cli("ddpm", "generate", out, *common, "--guidance", "3")
    assert r.code == 0 and "kept" not in r.out
    assert (out / "mnistm" / "0_001.png").read_bytes() != (tmp_path / "straight" / "mnistm" / "0_001.png").read_bytes()


def test_ddim_figures_of_the_digit_model_render_it_as_the_digit_commands_do(run_cli, checkpoint, tmp_path):
    """Unset --normalize: clip to the model's data range for the digit model (as ddpm grid draws
    it), not the face UNet's per-image min–max."""
    common = ["ddim", "eta-grid", "--etas", "0", "--count", "2", "--steps", "2", "--checkpoint", checkpoint]
    for name, extra in (("default", []), ("clip", ["--normalize", "clip"]), ("minmax", ["--normalize", "minmax"])):
        r = run_cli(*common, *extra, "--out", tmp_path / f"{name}.png")
        assert r.code == 0, r.err
    px = {n: np.asarray(Image.open(tmp_path / f"{n}.png").convert("RGB")) for n in ("default", "clip", "minmax")}
    assert np.array_equal(px["default"], px["clip"]) and not np.array_equal(px["clip"], px["minmax"])


def test_a_figure_records_the_command_that_drew_it(run_cli, checkpoint, tmp_path):
    from hw2cli import __version__

    args = ["ddpm", "grid", "--dataset", "svhn", "--steps", "1", "--checkpoint", str(checkpoint),
            "--out", str(tmp_path)]  # fmt: skip
    assert run_cli(*args).code == 0
    text = Image.open(tmp_path / "grid_svhn.png").text
    assert text["Software"] == f"hw2 {__version__}"
    assert text["Description"] == "hw2 " + " ".join(args)  # no character here needs shell quoting


def test_a_sample_of_over_a_hundred_per_data_set_keeps_a_row_per_data_set(run_cli, checkpoint, tmp_path):
    r = run_cli("ddpm", "sample", "--digit", "1", "-n", "101", "--steps", "1", "--checkpoint", checkpoint,
                "--out", tmp_path)  # fmt: skip
    assert r.code == 0, r.err
    assert Image.open(tmp_path / "grid_digit1.png").size == (2 + 101 * 30, 2 + 2 * 30)  # make_grid, padding 2


def test_a_rerun_writes_and_counts_only_the_missing_images_of_a_batch(run_cli, checkpoint, tmp_path):
    """A kill mid-batch leaves some of its files: the counts said 'wrote 0 + 500 … kept 512' of 1,000."""
    out = tmp_path / "p1"
    args = ("ddpm", "generate", out, "--checkpoint", checkpoint, "--per-digit", "2", "--steps", "2", "--batch", "8")
    assert run_cli(*args).code == 0
    before = {p: p.read_bytes() for p in out.rglob("*.png")}
    gone = [out / "mnistm" / "0_002.png", out / "mnistm" / "1_001.png", out / "svhn" / "9_002.png"]
    kept = out / "mnistm" / "1_002.png"  # in the same batch of eight as two of the missing ones
    kept.touch()
    stamp = kept.stat().st_mtime_ns
    for p in gone:
        p.unlink()
    r = run_cli(*args)
    assert r.code == 0 and "wrote 2 + 1 images" in r.out and "kept 37 finished by an earlier run" in r.out, r.out
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before
    assert kept.stat().st_mtime_ns == stamp  # a kept file is not written again


def test_a_classifier_without_validation_images_says_so(run_cli, tmp_path):
    """One image per class leaves val.csv empty: 'val accuracy nan%' and the string "nan" in the JSON."""
    from hw2cli.data.synth import synthesize

    synthesize(tmp_path / "d", per_class=1, seed=0)
    out = tmp_path / "c.safetensors"
    args = ["--data", tmp_path / "d" / "digits", "--dataset", "mnistm", "--epochs", "1", "--batch", "4", "--out", out]
    r = run_cli("classifier", "train", *args)
    assert r.code == 0, r.err
    assert "val accuracy not measured (no val.csv images)" in r.out and "nan" not in r.out
    assert json.loads(out.with_suffix(".json").read_text())["val_accuracy"] is None


def test_two_data_set_folders_that_are_one_folder_are_refused(run_cli, checkpoint, tmp_path):
    out = tmp_path / "p1"
    (out / "svhn").mkdir(parents=True)
    (out / "mnistm").symlink_to(out / "svhn")  # SVHN's images would land in both, exit 0
    r = run_cli("ddpm", "generate", out, "--checkpoint", checkpoint, "--per-digit", "1", "--steps", "1")
    assert r.code == 2 and "are one folder (a link); each data set needs its own" in r.err
    assert not list((out / "svhn").iterdir())
