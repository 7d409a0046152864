"""Shared fixtures. Every test runs in its own empty working directory, with no HW2_* variables
from the outside, and sees only hw2's own plugins unless it installs one itself."""

from __future__ import annotations

import functools
import os

# CPU CI: the kernel tests run under Triton's interpreter; a GPU run may export TRITON_INTERPRET=0.
# triton.jit reads the flag when it decorates, i.e. when hw2kernels.triton_ops is first imported,
# so it is set before anything else is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import sys
import textwrap
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import torch

from hw2cli import registry, settings, ui

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (ldm_layout) import by name

# The suite's models are tiny: one thread avoids OpenMP spin-wait overhead (and catastrophic
# slow-downs when another process shares the cores).
torch.set_num_threads(1)

BUILTIN_PLUGINS = sorted(ep.name for ep in metadata.distribution("hw2").entry_points if ep.group == "hw2.plugins")


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory, monkeypatch):
    """Clean environment, working directory and process state for each test."""
    for key in list(os.environ):
        if key.startswith("HW2_"):
            monkeypatch.delenv(key)
    # Keep any third-party plugin installed in this environment from leaking into the tests.
    monkeypatch.setenv("HW2_PLUGINS", ",".join(BUILTIN_PLUGINS))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    # what an offline run switches on for its process must not leak into the next test
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.setenv(key, "")  # records the original (usually unset), restored after the test
        monkeypatch.delenv(key)
    import huggingface_hub.constants as hub_constants

    from hw2cli.pretrained import hub

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    hub._reachable.cache_clear()
    registry.reset()
    from hw2cli.app import PluginGroup

    PluginGroup._warned = False
    settings._current = None
    ui.configure(quiet=False, debug=False)
    yield
    registry.reset()
    settings._current = None
    from hw2cli.io import locks

    locks.release_all()  # a task called directly holds its folders until its command would end


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys):
    """Run ``hw2 ARGS`` in this process through the real entry point; return code and output."""
    from hw2cli.app import main

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install a fake third-party distribution with an ``hw2.plugins`` entry point.

    ``install_plugin(dist, module, source, entry_points={"name": "module:attr"})`` writes the
    module and a ``.dist-info`` folder (what pip would write) onto ``sys.path``.
    """
    site = tmp_path / "site"
    site.mkdir()
    modules: list[str] = []

    def install(dist: str, module: str, source: str, entry_points: dict[str, str]) -> Path:
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        lines = "\n".join(f"{name} = {value}" for name, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[hw2.plugins]\n{lines}\n")
        modules.append(module)
        registry.reset()
        return site

    monkeypatch.syspath_prepend(str(site))
    yield install
    for module in modules:
        sys.modules.pop(module, None)
    registry.reset()


def nested_equal(a, b) -> bool:
    """Bit-for-bit equality of nested state (tensors, numbers, lists, dicts)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(nested_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(nested_equal, a, b))
    return a == b


@pytest.fixture
def interrupt_on_call(monkeypatch):
    """``restore = interrupt_on_call(module, "name", n)``: the n-th call of ``module.name`` raises
    KeyboardInterrupt, as a Ctrl-C there would; ``restore()`` puts the real function back."""

    def install(module, name: str, n: int):
        real, calls = getattr(module, name), []

        def interrupted(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, interrupted)
        return lambda: monkeypatch.setattr(module, name, real)

    return install


@pytest.fixture
def bit_equal():
    """``bit_equal(a, b)``: nested state equal bit for bit (see :func:`nested_equal`)."""
    return nested_equal


@functools.cache
def _interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run hw2's kernels here, or None. Triton ≤ 3.6's interpreter
    turns a runtime integer into a one-element NumPy array and calls ``int()`` on it, which NumPy
    ≥ 2.4 refuses: every kernel with a loop over a runtime bound then fails (fixed upstream)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return None
    import numpy as np

    try:
        import triton
        import triton.language as tl
    except ImportError:  # no Triton (macOS, Windows): the kernel tests say so themselves
        return None

    @triton.jit
    def count(out_ptr, n):
        total = 0
        for _ in range(0, n, 1):
            total += 1
        tl.store(out_ptr, total)

    out = torch.zeros(1, dtype=torch.int32)
    try:
        count[(1,)](out, 3)
    except Exception as exc:  # reported, never hidden
        return (f"triton {triton.__version__}'s interpreter cannot run a loop over a runtime bound with numpy "
                f"{np.__version__} ({type(exc).__name__}: {exc}); the kernel tests fail for that reason alone: "
                "use a newer triton (torch) or numpy<2.4 to run them on a CPU")  # fmt: skip
    return None if int(out) == 3 else f"triton's interpreter counted {int(out)} iterations of 3"


def pytest_report_header(config):
    problem = _interpreter_problem()
    return [f"WARNING: {problem}"] if problem else []


def pytest_terminal_summary(terminalreporter):
    problem = _interpreter_problem()
    if problem and terminalreporter.stats.get("failed"):
        terminalreporter.write_line(f"WARNING: {problem}", yellow=True, bold=True)
