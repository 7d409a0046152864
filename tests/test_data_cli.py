"""`hw2 data` through the real entry point: exit codes and messages of bad input."""

from __future__ import annotations


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
