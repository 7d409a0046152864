"""Output paths that cannot work are usage errors found before any work, not at the first write
after minutes of sampling or training (a link out of the output folder, a file in the way)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def place(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "victim.png").write_bytes(b"not yours")
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(refs / "a.png")
    prompts = tmp_path / "input.json"
    prompts.write_text(
        '{"0": {"src_image": "0", "token_name": "<new1>", "prompt": ["A <new1>."], '
        '"prompt_4_clip_eval": ["A dog."], "baseline": [[1, 1]]}}'
    )
    return tmp_path, outside, refs, prompts


def _cases(tmp_path, outside, refs, prompts):
    (tmp_path / "g").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "g" / "mnistm").symlink_to(tmp_path / "empty")  # an empty folder: only the link is wrong
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "eta.png").symlink_to(outside / "victim.png")
    (tmp_path / "afile").write_text("x")
    for run, blocker in (("t", "samples"), ("p", "0"), ("q", "new1")):
        (tmp_path / run).mkdir()
        (tmp_path / run / blocker).write_text("in the way")
    return [
        (["ddpm", "generate", tmp_path / "g"], "leads outside"),
        (["ddim", "eta-grid", "--etas", "0", "--count", "1", "--steps", "2", "--out", tmp_path / "figs" / "eta.png"],
         "is a link to"),
        (["ddpm", "trajectory", "--out", tmp_path / "figs" / "eta.png"], "is a link to"),
        (["bench", "sample", "--batch", "2", "--steps", "1", "--no-compile", "--out", tmp_path / "afile"],
         "is an existing file"),
        (["bench", "kernels", "--quick", "--no-compile", "--out", tmp_path / "afile"], "is an existing file"),
        (["ddpm", "train", "--data", tmp_path / "nodata", "--out", tmp_path / "t"], "samples is an existing file"),
        (["personalize", "generate", prompts, tmp_path / "p", "--model", "x.ckpt"], "p/0 is a file, not a folder"),
        (["personalize", "train", "--model", "x.ckpt", "--concept", f"<new1>={refs}:dog", "--out", tmp_path / "q"],
         "new1 is an existing file"),
    ]  # fmt: skip


def test_output_paths_that_cannot_work_are_refused_before_any_work(run_cli, place, monkeypatch):
    tmp_path, outside, refs, prompts = place
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "w"))
    for args, message in _cases(tmp_path, outside, refs, prompts):
        started = time.perf_counter()
        r = run_cli(*args)
        assert r.code == 2 and message in " ".join(r.err.split()), (args, r.code, r.err)
        assert time.perf_counter() - started < 60  # a sentence, not a run (the bound only catches a hang)
    assert (outside / "victim.png").read_bytes() == b"not yours" and [p.name for p in outside.iterdir()] == [
        "victim.png"
    ]
    assert not list((tmp_path / "empty").iterdir())


def test_library_caches_go_under_the_weights_folder_not_home_or_tmp(tmp_path):
    """Matplotlib's font cache (~/.cache/matplotlib) and torch.compile's code ($TMPDIR/torchinductor_*)
    landed outside every folder the user named."""
    import os
    import subprocess
    import sys

    home, tmp, weights = tmp_path / "home", tmp_path / "tmp", tmp_path / "weights"
    home.mkdir(), tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in app_caches()}
    env.update(HOME=str(home), TMPDIR=str(tmp), HW2_WEIGHTS_DIR=str(weights), OMP_NUM_THREADS="1")
    args = ["ddpm", "grid", "--dataset", "mnistm", "--steps", "1", "--out", tmp_path / "figs"]
    r = subprocess.run([sys.executable, "-m", "hw2cli", *map(str, args)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [p for p in home.rglob("*")] == [] and [p for p in tmp.rglob("*")] == []
    assert (weights / "matplotlib").is_dir()


def app_caches():
    from hw2cli import app

    return app.LIBRARY_CACHES


def test_an_unwritable_weights_folder_leaves_the_library_caches_where_they_were(monkeypatch, tmp_path):
    from hw2cli import app

    blocker = tmp_path / "weights"
    blocker.write_text("a file where the weights folder should be")
    for name in app.LIBRARY_CACHES:
        monkeypatch.setenv(name, "")  # recorded, so the test's own values are undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.setattr(app, "_routed", {})
    app.route_library_caches(blocker)
    assert not any(name in __import__("os").environ for name in app.LIBRARY_CACHES)
    app.route_library_caches(tmp_path / "ok")
    assert __import__("os").environ["MPLCONFIGDIR"] == str(tmp_path / "ok" / "matplotlib")


def test_hugging_face_libraries_see_the_weights_folder_as_their_default_cache(tmp_path):
    """Older diffusers and transformers write version files into the default hub cache when
    imported; that cache is the weights folder's, whatever HOME is."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HOME=str(tmp_path / "home"))
    code = (
        "import sys; from pathlib import Path; from hw2cli import app; app.route_library_caches(Path(sys.argv[1])); "
        "import huggingface_hub.constants as c; print(c.HF_HUB_CACHE)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "w" / "hub")
    for name, chosen in [("HF_HOME", tmp_path / "hf"), ("HUGGINGFACE_HUB_CACHE", tmp_path / "hf" / "hub")]:
        mine = {**env, name: str(chosen)}  # the user's own choice of cache stays
        done = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "w")], env=mine, capture_output=True, text=True
        )
        assert done.returncode == 0 and done.stdout.strip() == str(tmp_path / "hf" / "hub"), (name, done.stderr)
