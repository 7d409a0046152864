"""Resume records (hw2cli.io.manifest): what is kept, what is made again, and what is forgotten."""

from __future__ import annotations

import json
import os
import shutil
import time

from PIL import Image

from hw2cli.io.manifest import manifest_path, prepare_outputs


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (9, 9, 9)).save(path)
    return path


def test_same_settings_keep_finished_files_other_settings_delete_them(tmp_path):
    state, out = tmp_path / "state", tmp_path / "out"
    files = [out / "a.png", out / "b.png"]
    assert prepare_outputs(out, {"seed": 0}, files, state_dir=state) == set()
    _image(files[0])
    assert prepare_outputs(out, {"seed": 0}, files, state_dir=state) == {files[0]}
    assert prepare_outputs(out, {"seed": 1}, files, state_dir=state) == set()
    assert not files[0].exists()  # a folder never mixes two runs
    _image(files[0])
    assert prepare_outputs(out, {"seed": 1}, files, state_dir=state, resume=False) == set()


def test_parts_of_one_folder_have_records_of_their_own(tmp_path):
    state, out = tmp_path / "state", tmp_path / "out"
    a, b = _image(out / "a_0.png"), _image(out / "b_0.png")
    for part, f in (("a", a), ("b", b)):
        prepare_outputs(out, {"prompt": part}, [f], state_dir=state, part=part)
    _image(a), _image(b)
    assert prepare_outputs(out, {"prompt": "a"}, [a], state_dir=state, part="a") == {a}
    assert prepare_outputs(out, {"prompt": "b"}, [b], state_dir=state, part="b") == {b}
    assert manifest_path(out, state, "a") != manifest_path(out, state, "b") != manifest_path(out, state)


def test_records_of_deleted_folders_are_forgotten_when_a_new_one_is_written(tmp_path):
    state = tmp_path / "state"
    gone, kept, new = tmp_path / "gone", tmp_path / "kept", tmp_path / "new"  # new is never made
    for folder in (gone, kept):
        folder.mkdir()
        prepare_outputs(folder, {"seed": 0}, [folder / "x.png"], state_dir=state)
    (state / "outputs" / "unreadable.json").write_text("{not json")
    shutil.rmtree(gone)
    prepare_outputs(new, {"seed": 0}, [new / "x.png"], state_dir=state)
    assert manifest_path(gone, state).exists()  # recent: its run may not have made the folder yet
    old = time.time() - 7200
    for record in (state / "outputs").glob("*.json"):
        os.utime(record, (old, old))
    newer = tmp_path / "newer"  # not made yet, as when a run records its folder first
    prepare_outputs(newer, {"seed": 0}, [newer / "x.png"], state_dir=state)
    folders = sorted(
        json.loads(p.read_text())["folder"] for p in (state / "outputs").glob("*.json") if p.name != "unreadable.json"
    )
    assert folders == sorted(str(f.resolve()) for f in (kept, newer))
    assert (state / "outputs" / "unreadable.json").exists()
    assert not manifest_path(gone, state).exists() and manifest_path(kept, state).exists()
