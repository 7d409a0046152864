"""The one error path: a sentence, an exit code, no traceback unless --debug."""

from __future__ import annotations

import pytest

FAILING = """
    import typer
    from hw2cli.errors import RunError, UsageError
    from hw2cli.registry import Plugin

    app = typer.Typer()

    @app.command()
    def usage() -> None:
        raise UsageError("--digit is 12; expected a digit from 0 to 9.")

    @app.command()
    def runtime() -> None:
        raise RunError("no weights found at /x; pass --checkpoint.")

    @app.command()
    def bug() -> None:
        raise ZeroDivisionError("boom")

    @app.command()
    def interrupt() -> None:
        raise KeyboardInterrupt

    plugin = Plugin(name="failing", help="Fails on purpose.", app=app)
"""


@pytest.fixture
def failing(install_plugin, monkeypatch):
    install_plugin("hw2-failing", "failing_plugin", FAILING, {"failing": "failing_plugin:plugin"})
    monkeypatch.setenv("HW2_PLUGINS", "failing")


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        ("usage", 2, "Error: --digit is 12; expected a digit from 0 to 9."),
        ("runtime", 1, "Error: no weights found at /x; pass --checkpoint."),
        ("bug", 1, "Error: unexpected ZeroDivisionError: boom (run again with --debug for the traceback)."),
        ("interrupt", 130, "Error: interrupted."),
    ],
)
def test_errors_are_one_sentence_and_an_exit_code(failing, run_cli, command, code, message):
    result = run_cli("failing", command)
    assert result.code == code
    assert result.err.strip() == message
    assert "Traceback" not in result.err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(failing, run_cli, monkeypatch, how):
    args = ["--debug"] if how == "flag" else []
    if how == "env":
        monkeypatch.setenv("HW2_DEBUG", "1")
    result = run_cli(*args, "failing", "bug")
    assert result.code == 1
    assert "Traceback (most recent call last)" in result.err
    assert "ZeroDivisionError: boom" in result.err


def test_unknown_command_and_option_are_usage_errors(run_cli):
    assert run_cli("nosuchcommand").code == 2
    assert run_cli("--nosuchoption").code == 2


def test_version(run_cli):
    from hw2cli import __version__

    result = run_cli("--version")
    assert result.code == 0 and result.out.strip() == f"hw2 {__version__}"


def test_help_lists_every_builtin_in_panels(run_cli):
    from importlib import metadata

    out = run_cli("--help").out
    for name in (ep.name for ep in metadata.distribution("hw2").entry_points if ep.group == "hw2.plugins"):
        assert name in out
    assert "Project" in out and "plugins" in out and "config" in out and "env" in out


def test_env_report(run_cli):
    import json

    result = run_cli("env", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    for key in (
        "python",
        "torch",
        "triton",
        "diffusers",
        "transformers",
        "open_clip_torch",
        "device",
        "triton kernels",
    ):
        assert key in report
    assert report["device"] == "cpu" or report["cuda available"]


def test_a_ctrl_c_a_finaliser_swallows_still_stops_the_command(run_cli, tmp_path, monkeypatch, capsys):
    """SIGINT raised inside a library's __del__ (as regex's did while Stable Diffusion loaded) is
    dropped by Python with "Exception ignored"; the command used to run on to the end, exit 0."""
    import gc
    import os
    import signal
    import time

    from hw2cli.plugins import ddpm as plugin

    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here, inside __del__

    real = plugin._model

    def loading(*args, **kwargs):  # the model load, with a finaliser running during it
        model = real(*args, **kwargs)
        Finaliser()
        gc.collect()
        return model

    monkeypatch.setattr(plugin, "_model", loading)
    out = tmp_path / "s"
    r = run_cli("ddpm", "sample", "--digit", "1", "-n", "2", "--steps", "2", "--out", out)
    assert r.code == 130 and "interrupted" in r.err, r.err
    assert "Exception ignored" not in r.err + capsys.readouterr().err
    assert not out.exists() or not list(out.glob("*.png"))  # stopped before any image
    monkeypatch.setattr(plugin, "_model", real)
    assert run_cli("ddpm", "sample", "--digit", "1", "-n", "1", "--steps", "2", "--out", out).code == 0


def test_a_swallowed_ctrl_c_stops_a_trainer_before_its_first_step():
    import pytest

    from hw2cli import interrupts
    from hw2cli.tasks.training import deferred_interrupts

    interrupts.install()
    interrupts._state["pending"] = True  # what the handler notes when its KeyboardInterrupt was dropped
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        raise AssertionError("the training loop must not start")
    assert not interrupts.pending()
    with deferred_interrupts() as stop:  # nothing pending: training runs
        assert stop.signal is None


def test_sigterm_stops_a_generating_command_as_a_ctrl_c_does(run_cli, tmp_path, monkeypatch):
    """A cluster's SIGTERM (a job's time limit) killed generation with 143 and no word; it now
    stops like Ctrl-C: exit 130, the finished images kept, and the rerun makes the rest."""
    import os
    import signal

    from hw2cli.tasks import ddpm as core

    real, calls = core.save_image, []

    def terminated(*args, **kwargs):
        calls.append(1)
        if len(calls) == 150:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(core, "save_image", terminated)
    out = tmp_path / "p1"
    r = run_cli("ddpm", "generate", out, "--batch", "100")
    assert r.code == 130 and "interrupted; what was finished is kept" in r.err, r.err
    kept = sorted(out.rglob("*.png"))
    assert 100 <= len(kept) < 1000 and not list(out.rglob(".*.tmp"))
    monkeypatch.setattr(core, "save_image", real)
    r = run_cli("ddpm", "generate", out, "--batch", "100")
    assert r.code == 0 and "kept" in r.out + r.err
    assert len(list(out.rglob("*.png"))) == 1000


def test_a_ctrl_c_a_library_turned_into_its_own_error_is_an_interruption(run_cli, monkeypatch):
    """An import cut short by Ctrl-C can surface as the library's ImportError ("cannot load module
    more than once per process"); that is the user's Ctrl-C (130), not an unexpected failure (1)."""
    from hw2cli import interrupts, runtime

    def setup_cut_short(*args, **kwargs):
        try:
            interrupts._handler(2, None)  # what SIGINT runs
        except KeyboardInterrupt:
            raise ImportError("cannot load module more than once per process") from None

    monkeypatch.setattr(runtime, "setup", setup_cut_short)
    r = run_cli("bench", "kernels", "--quick", "--no-compile")
    assert r.code == 130 and "unexpected" not in r.err and "interrupted" in r.err, r.err
    monkeypatch.setattr(runtime, "setup", lambda *a, **k: (_ for _ in ()).throw(ImportError("a real one")))
    r = run_cli("bench", "kernels", "--quick", "--no-compile")
    assert r.code == 1 and "unexpected ImportError: a real one" in r.err  # without a Ctrl-C it stays a failure


def test_python_warnings_reach_the_user_as_one_line_each_once(capsys, monkeypatch):
    """A warning is hw2's one ``Warning:`` line, once per command; a library's notice of its own
    future is left out (the user never wrote that code); --debug keeps Python's own form."""
    import warnings
    from pathlib import Path

    from hw2cli import app, ui

    assert app.main(["--help"]) == 0
    assert warnings.showwarning is app._show_warning
    capsys.readouterr()
    library = "/site-packages/open_clip/transformer.py"
    ours = str(Path(app.__file__).parent / "io" / "images.py")
    app._show_warning(FutureWarning("torch.jit.interface is deprecated"), FutureWarning, library, 1)
    app._show_warning(DeprecationWarning("old API"), DeprecationWarning, library, 1)
    for _ in range(2):
        app._show_warning(UserWarning("no installed font draws \u0378 (in a\n figure's text)"), UserWarning, ours, 9)
    app._show_warning(FutureWarning("--as-json is now --json"), FutureWarning, ours, 9)
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "Warning: no installed font draws \u0378 (in a figure's text)",
        "Warning: --as-json is now --json",
    ]
    monkeypatch.setitem(ui._state, "debug", True)
    app._show_warning(FutureWarning("torch.jit.interface is deprecated"), FutureWarning, library, 1, line="x = 1")
    assert "transformer.py:1: FutureWarning: torch.jit.interface is deprecated" in capsys.readouterr().err


def _closed_pipe() -> int:
    """The write end of a pipe whose reader is gone: every write to it fails with EPIPE."""
    import os

    read, write = os.pipe()
    os.close(read)
    return write


def _hw2(*args, stdout=None, stderr=None, env=None, cwd=None):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "hw2cli", *map(str, args)], stdout=stdout, stderr=stderr, env=env,
                          cwd=cwd, timeout=300)  # fmt: skip


def test_a_reader_that_went_away_never_cuts_the_work_short(tmp_path):
    """`hw2 … 2>&1 | head -1` used to die at its first progress line, exit 1, without a word."""
    import os
    import subprocess

    pipe = _closed_pipe()
    try:
        r = _hw2("ddpm", "sample", "--digit", "1", "-n", "2", "--steps", "2", "--out", tmp_path / "a",
                 stdout=pipe, stderr=pipe)  # fmt: skip
        assert r.returncode == 141  # the work is done; its result reached no one, as a shell reports it
        assert len(list((tmp_path / "a").glob("*_1_*.png"))) == 4
        r = _hw2("ddpm", "sample", "--digit", "1", "-n", "2", "--steps", "2", "--out", tmp_path / "b",
                 stdout=subprocess.PIPE, stderr=pipe)  # fmt: skip
        assert r.returncode == 0 and b"wrote 4 images" in r.stdout  # a lost stderr alone loses nothing
        r = _hw2("--help", stdout=pipe, stderr=subprocess.PIPE)
        assert r.returncode == 141 and r.stderr == b""
    finally:
        os.close(pipe)


def test_a_terminal_that_cannot_show_a_character_gets_an_escape_not_a_crash(tmp_path):
    import subprocess

    r = _hw2("ddim", "sample", "--help", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
             env={"PYTHONIOENCODING": "ascii"})  # fmt: skip
    assert r.returncode == 0 and b"\\u03b7" in r.stdout, r.stderr  # the help's eta
    out = tmp_path / "\U0001f600"
    r = _hw2("ddpm", "sample", "--digit", "2", "-n", "1", "--steps", "2", "--out", out, stdout=subprocess.PIPE,
             stderr=subprocess.PIPE, env={"PYTHONIOENCODING": "latin-1"})  # fmt: skip
    assert r.returncode == 0 and b"\\U0001f600" in r.stdout, r.stderr
    assert len(list(out.glob("*.png"))) == 3  # two digits and the grid


def test_a_full_disk_is_said_as_such_with_what_to_do(tmp_path):
    import errno

    from hw2cli.app import _disk_full

    said = _disk_full(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "p1" / "svhn" / "0_013.png")))
    assert said.startswith(f"no space left on the device holding {tmp_path / 'p1' / 'svhn'}.")
    assert "free some space and run the same command again" in said
    try:  # a library's own error around the OSError (safetensors words it so)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)") from exc
    except RuntimeError as wrapped:
        assert _disk_full(wrapped).startswith("no space left on the device.")
    assert _disk_full(OSError(errno.EDQUOT, "Disk quota exceeded")).startswith("no quota left")
    assert _disk_full(ValueError("bad value")) is None


def test_help_at_a_narrow_terminal_keeps_every_option_name_whole(run_cli, monkeypatch):
    import typer.rich_utils

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", None)  # put back after the test
    monkeypatch.setenv("COLUMNS", "60")
    r = run_cli("ddim", "sample", "--help")
    assert r.code == 0
    for name in ("--alpha-prev", "--final-alpha", "--checkpoint", "--cuda-graph", "--no-clip-x0"):
        assert name in r.out, name


def test_a_result_that_cannot_be_written_is_an_error_not_a_closed_pipe(tmp_path):
    """stdout on a full disk is not a reader that went away: the disk-full sentence, exit 1."""
    import os
    import subprocess

    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux)")
    with open("/dev/full", "w") as full:
        r = _hw2("config", "show", stdout=full, stderr=subprocess.PIPE)
    assert r.returncode == 1 and b"no space left on the device" in r.stderr, r.stderr


def test_a_write_that_fails_names_the_file_it_was_writing(tmp_path):
    import errno

    from hw2cli.io import atomic_path

    target = tmp_path / "svhn" / "0_013.png"
    with pytest.raises(OSError) as info, atomic_path(target):
        raise OSError(errno.ENOSPC, "No space left on device")  # as Pillow raises it: no file name
    assert info.value.filename == str(target)
    assert list((tmp_path / "svhn").iterdir()) == []


STUCK_IN_NATIVE_CODE = """
    import ctypes
    import sys
    import time

    import hw2cli.data.synth as synth
    from hw2cli.app import run

    libc = ctypes.CDLL(None)
    body = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(lambda arg: time.sleep(60))

    def one_long_library_call(*args, **kwargs):  # as a Stable Diffusion step on a CPU: no Python runs
        thread = ctypes.c_ulong()
        libc.pthread_create(ctypes.byref(thread), None, body, None)
        print("inside", flush=True)
        libc.pthread_join(thread, None)  # returns after 60 s whatever signals arrive

    synth.synthesize = one_long_library_call
    sys.argv = ["hw2", "data", "synth", "out"]
    run()
"""


def test_a_second_ctrl_c_stops_at_once_also_inside_a_long_library_call(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    from hw2cli import interrupts

    script = tmp_path / "stuck.py"
    script.write_text(textwrap.dedent(STUCK_IN_NATIVE_CODE))
    env = {**os.environ, "HW2_WEIGHTS_DIR": str(tmp_path / "w")}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "inside"
        proc.send_signal(signal.SIGINT)
        time.sleep(interrupts.GRACE_S + 1)
        assert proc.poll() is None  # one Ctrl-C waits for the work to come back to Python: the gentle stop
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=interrupts.GRACE_S + 10)  # not the 60 s the call takes
        waited = time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait()
    err = proc.stderr.read()
    assert code == 130 and waited >= interrupts.GRACE_S * 0.9, (code, waited, err)
    assert "Stopped at once: a second Ctrl-C" in err and "Traceback" not in err


def test_an_option_of_hw2_itself_after_the_command_says_where_it_goes(run_cli):
    r = run_cli("data", "synth", "out", "--device", "cpu")
    assert r.code == 2 and "Traceback" not in r.err
    said = " ".join(r.err.split())
    assert "--device is an option of hw2 itself: put it before the command (hw2 --device … data synth …)" in said
    r = run_cli("ddpm", "generate", "out", "--quiet")  # a flag takes no value
    assert r.code == 2 and "(hw2 --quiet ddpm generate …)" in " ".join(r.err.split())
    r = run_cli("data", "synth", "out", "--devic", "cpu")  # no option anywhere: Click's own words
    assert r.code == 2 and "No such option: --devic" in r.err and "itself" not in r.err


def test_torchs_own_log_line_about_cuda_home_is_not_printed_on_a_machine_without_cuda(tmp_path):
    """torch logs through its own handler, past the root logger's level; `hw2 bench kernels` printed
    'W1202 … cpp_extension.py:183] No CUDA runtime is found, using CUDA_HOME=…' in glog form."""
    import os
    import subprocess
    import sys

    probe = (
        "import sys, torch\n"
        "from hw2cli.app import quiet_libraries\n"
        "quiet_libraries(debug=sys.argv[1] == 'debug')\n"
        "import torch.utils.cpp_extension as ext\n"
        "ext._find_cuda_home()\n"
        "print(torch.cuda.is_available())\n"
    )
    env = {**os.environ, "CUDA_HOME": str(tmp_path)}  # a CUDA_HOME that exists, as /usr/local does here
    runs = {m: subprocess.run([sys.executable, "-c", probe, m], capture_output=True, text=True, env=env, timeout=120)
            for m in ("quiet", "debug")}  # fmt: skip
    if runs["quiet"].stdout.strip() != "False":
        pytest.skip("CUDA is available: torch does not log this line")
    assert "No CUDA runtime is found" in runs["debug"].stderr  # the line exists, and --debug keeps it
    assert "No CUDA runtime is found" not in runs["quiet"].stderr, runs["quiet"].stderr
