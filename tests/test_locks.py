"""One writer per output folder: a second hw2 writing the same folder or run is refused, not mixed in."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from hw2cli.data.synth import synthesize
from hw2cli.errors import UsageError
from hw2cli.io import locks

HOLD = textwrap.dedent(
    """
    import sys
    from hw2cli.io import locks
    locks.claim(sys.argv[1], part=sys.argv[2] or None)
    print("held", flush=True)
    sys.stdin.read()  # until the test lets go
    """
)


@pytest.fixture
def holder():
    """Another process that holds a folder until the test ends (or closes its stdin)."""
    procs = []

    def hold(folder, part="", env=None):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), part], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_a_folder_another_process_holds_is_refused_until_it_ends(tmp_path, holder):
    proc = holder(tmp_path / "out")
    with pytest.raises(UsageError, match=rf"another hw2 \(process {proc.pid}\) is writing the output folder .*out now"):
        locks.claim(tmp_path / "out")
    locks.claim(tmp_path / "other")  # another folder is free
    locks.claim(tmp_path / "other")  # and holding it twice is too
    proc.stdin.close()
    proc.wait(timeout=30)
    locks.claim(tmp_path / "out")  # the lock went with the process
    # a folder this process holds is refused to another one, and freed at the end of the command
    child = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path / "out"), ""], capture_output=True, text=True,
                           input="", timeout=60)  # fmt: skip
    assert child.returncode == 1 and f"another hw2 (process {os.getpid()})" in child.stderr
    locks.release_all()
    child = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path / "out"), ""], capture_output=True, text=True,
                           input="", timeout=60)  # fmt: skip
    assert child.returncode == 0, child.stderr


def test_free_prompts_into_one_folder_may_run_together(tmp_path, holder):
    holder(tmp_path / "out", "a_dog")
    locks.claim(tmp_path / "out", part="a_cat")
    with pytest.raises(UsageError):
        locks.claim(tmp_path / "out", part="a_dog")


def test_a_second_process_of_a_launch_claims_nothing(tmp_path, holder, monkeypatch):
    holder(tmp_path / "run")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(UsageError):  # a RANK alone (some schedulers set one for every job) is no launch
        locks.claim(tmp_path / "run")
    monkeypatch.setenv("WORLD_SIZE", "2")
    locks.claim(tmp_path / "run")  # it writes into the first process's run


def test_the_commands_refuse_a_folder_in_use_before_writing_anything(run_cli, tmp_path, holder):
    synthesize(tmp_path / "data", per_class=2, seed=0)
    out = tmp_path / "p1"
    proc = holder(out)
    r = run_cli("ddpm", "generate", out)
    assert r.code == 2 and f"another hw2 (process {proc.pid}) is writing the output folder {out}" in r.err
    assert not out.exists()
    run = tmp_path / "run"
    proc = holder(run)
    r = run_cli("ddpm", "train", "--data", tmp_path / "data" / "digits", "--out", run, "--steps", "2", "--width", "8")
    assert r.code == 2 and f"another hw2 (process {proc.pid}) is writing the run folder {run}" in r.err
    assert not run.exists()
    classifier = tmp_path / "c.safetensors"
    proc = holder(tmp_path / "c.run")
    data = tmp_path / "data" / "digits"
    r = run_cli("classifier", "train", "--data", data, "--dataset", "mnistm", "--out", classifier)
    assert r.code == 2 and "is writing the run folder" in r.err and not classifier.exists()


def test_a_file_system_without_locks_runs_unclaimed_and_lock_files_go_with_their_claims(tmp_path, monkeypatch):
    import errno
    import fcntl

    real = fcntl.flock

    def no_locks(fd, op):  # NFS without its lock service
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    locks.claim(tmp_path / "out")  # not "another hw2 is writing": the run goes on
    monkeypatch.setattr(fcntl, "flock", real)
    locks.claim(tmp_path / "out")
    held = list(locks._held)
    assert len(held) == 2  # in the weights folder and in the temporary folder
    locks.release_all()
    assert not any(os.path.exists(lock) for lock in held)  # one file per output ever written no longer piles up


def test_runs_with_different_weights_folders_see_each_others_claims(tmp_path, holder, monkeypatch):
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "mine"))
    proc = holder(tmp_path / "out", env={**os.environ, "HW2_WEIGHTS_DIR": str(tmp_path / "theirs")})
    with pytest.raises(UsageError, match=rf"another hw2 \(process {proc.pid}\) is writing the output folder"):
        locks.claim(tmp_path / "out")
    assert not locks._held  # the lock it did get (in its own weights folder) is not kept
    proc.stdin.close()
    proc.wait(timeout=30)
    locks.claim(tmp_path / "out")
