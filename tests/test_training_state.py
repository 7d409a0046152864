"""Resume states on disk: their order, what a kill while deleting one leaves, damaged records, and
how the process ends after an interrupted command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hw2cli.errors import UsageError
from hw2cli.io.atomic import is_temporary
from hw2cli.tasks import training


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    acc.prepare(model, optimizer)
    return acc


def marked(folder, step):
    folder.mkdir(parents=True)
    (folder / training.STATE_MARK).write_text(json.dumps({"step": step, "processes": [{}]}))
    return folder


def test_states_are_ordered_by_step_not_by_name(tmp_path, accelerator):
    marked(tmp_path / "state-9999999", 9_999_999)
    marked(tmp_path / "state-10000000", 10_000_000)
    assert [p.name for p in training.state_folders(tmp_path)] == ["state-10000000", "state-9999999"]
    run = tmp_path / "run"
    training.save_state(accelerator, run, 9_999_999, {})
    training.save_state(accelerator, run, 10_000_000, {})  # the newest must survive its own save
    assert sorted(p.name for p in run.iterdir()) == ["state-10000000", "state-9999999"]
    assert training.check_state_files(run / "state-10000000")["step"] == 10_000_000


def test_the_two_newest_states_are_kept(tmp_path, accelerator):
    for step in (1, 2, 3, 4):
        training.save_state(accelerator, tmp_path, step, {})
        assert [training._state_step(p) for p in training.state_folders(tmp_path)] == [step, step - 1][: min(step, 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state-0000003", "state-0000004"]


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_damaged_file_is_named_by_its_digest(tmp_path, accelerator):
    folder = training.save_state(accelerator, tmp_path, 5, {}, tensors={"ema.safetensors": {"w": torch.arange(64.0)}})
    assert training.check_state_files(folder)["step"] == 5
    flip_a_byte(folder / "ema.safetensors")  # same size, still a readable safetensors file
    with pytest.raises(UsageError, match=r"ema\.safetensors differs from what was saved \(its SHA-256 changed\)"):
        training.check_state_files(folder)
    (folder / "ema.safetensors").unlink()
    with pytest.raises(UsageError, match=r"ema\.safetensors is missing: this state is damaged"):
        training.check_state_files(folder)


def test_a_resume_falls_back_to_the_state_before_a_damaged_one(tmp_path, accelerator):
    for step in (3, 6):
        training.save_state(accelerator, tmp_path, step, {}, tensors={"ema.safetensors": {"w": torch.full((8,), step)}})
    flip_a_byte(tmp_path / "state-0000006" / "ema.safetensors")
    notes = []
    folder, mark = training.resume_state(tmp_path, notes.append)
    assert folder.name == "state-0000003" and mark["step"] == 3
    (note,) = notes
    assert "ema.safetensors differs from what was saved" in note and "state-0000003 (step 3)" in note
    # the resumed run's next save keeps the sound state before it, never the damaged one
    training.save_state(accelerator, tmp_path, 4, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state-0000003", "state-0000004"]


def test_with_every_state_damaged_the_newest_ones_reason_is_given(tmp_path, accelerator):
    for step in (3, 6):
        training.save_state(accelerator, tmp_path, step, {}, tensors={"ema.safetensors": {"w": torch.zeros(256)}})
        flip_a_byte(tmp_path / f"state-{step:07d}" / "ema.safetensors")
    with pytest.raises(UsageError, match=r"state-0000006.ema\.safetensors differs from what was saved"):
        training.resume_state(tmp_path, lambda message: pytest.fail(message))


def test_a_half_deleted_state_is_removed_by_the_next_save(tmp_path, accelerator):
    debris = tmp_path / "state-0000001"  # its mark already gone, an optimizer file left
    debris.mkdir()
    (debris / "optimizer.bin").write_bytes(b"x" * 100)
    assert training.state_folders(tmp_path) == []
    training.save_state(accelerator, tmp_path, 2, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state-0000002"]


def test_a_state_being_deleted_leaves_its_name_first(tmp_path, monkeypatch):
    folder = marked(tmp_path / "state-0000003", 3)
    (folder / "model.safetensors").write_bytes(b"weights")

    def killed(path, ignore_errors=False):  # the process dies while the files go
        raise KeyboardInterrupt

    monkeypatch.setattr(training.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        training.discard_state(folder)
    left = list(tmp_path.iterdir())
    assert not folder.exists() and len(left) == 1 and is_temporary(left[0])  # the next run's sweep removes it


def test_a_truncated_safetensors_file_of_a_state_is_one_sentence(tmp_path):
    from safetensors.torch import save_file

    folder = marked(tmp_path / "state-0000004", 4)
    save_file({"w": torch.ones(50)}, folder / "ema.safetensors")
    assert training.check_state_files(folder)["step"] == 4
    data = (folder / "ema.safetensors").read_bytes()
    (folder / "ema.safetensors").write_bytes(data[:-10])
    with pytest.raises(UsageError, match=r"ema\.safetensors cannot be read .*truncated or corrupt"):
        training.check_state_files(folder)


def test_a_damaged_random_state_names_its_file(tmp_path):
    gen = torch.Generator().manual_seed(3)
    state = training.capture_rng(gen)
    training.restore_rng(state, gen)  # a sound one goes back
    state["generator"] = state["generator"][:100]
    with pytest.raises(UsageError, match=r"hw2_state\.json holds a random-number state that does not fit this run"):
        training.restore_rng(state, gen, source=tmp_path / "hw2_state.json")


def run_module(tmp_path, body):
    """``python -m`` a module (how the audits ran hw2) and return the finished process."""
    (tmp_path / "entry_under_test.py").write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    return subprocess.run(
        [sys.executable, "-m", "entry_under_test"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def test_an_interrupted_command_exits_130_even_when_a_library_saw_the_ctrl_c(tmp_path):
    # a KeyboardInterrupt inside Python code run from C (as torch's import does) marks it "unhandled"
    # for CPython, which then ends the process by SIGINT (status -2) unless hw2 exits itself
    done = run_module(
        tmp_path,
        """
        import ctypes
        import hw2cli.app as app
        app.main = lambda: 130
        ctypes.pythonapi.PyRun_SimpleString(b"raise KeyboardInterrupt")
        print("flushed")
        app.run()
        """,
    )
    assert done.returncode == 130 and done.stdout == "flushed\n"


def test_a_second_ctrl_c_after_the_command_answered_is_no_traceback(tmp_path):
    done = run_module(
        tmp_path,
        """
        import hw2cli.app as app

        def interrupted_while_saying_so():
            raise KeyboardInterrupt

        app.main = interrupted_while_saying_so
        app.run()
        """,
    )
    assert done.returncode == 130 and "Traceback" not in done.stderr
