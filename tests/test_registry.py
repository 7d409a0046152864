"""Plugin discovery, lazy mounting, conflicts, broken plugins and the allow-list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

HELLO = """
    import typer
    from hw2cli.registry import Plugin

    plugin = Plugin(name="hello", help="Say hello from a third party.", app="hello_cmds:app", panel="Extras")
"""
HELLO_CMDS = """
    import typer

    app = typer.Typer()

    @app.command()
    def greet(name: str = "world") -> None:
        print(f"hello {name}")

    @app.command()
    def other() -> None:
        print("other")
"""


def _install_hello(install_plugin, monkeypatch):
    install_plugin("hw2-hello", "hello_spec", HELLO, {"hello": "hello_spec:plugin"})
    install_plugin("hw2-hello-cmds", "hello_cmds", HELLO_CMDS, {})
    monkeypatch.delenv("HW2_PLUGINS")


def test_builtin_plugins_come_from_entry_points(run_cli):
    result = run_cli("plugins", "--json")
    assert result.code == 0
    rows = json.loads(result.out)
    assert {r["name"] for r in rows} >= {"data"}
    assert all(r["distribution"] == "hw2" and r["status"] == "loaded" for r in rows)


def test_third_party_plugin_is_mounted_and_runs(install_plugin, monkeypatch, run_cli):
    _install_hello(install_plugin, monkeypatch)
    help_text = run_cli("--help").out
    assert "hello" in help_text and "Say hello from a third party." in help_text and "Extras" in help_text
    # listed, but its command module is not imported until a command runs
    assert "hello_cmds" not in sys.modules
    result = run_cli("hello", "greet", "--name", "TA")
    assert result.code == 0, result.err
    assert result.out.strip() == "hello TA"
    assert "hello_cmds" in sys.modules

    rows = {r["name"]: r for r in json.loads(run_cli("plugins", "--json").out)}
    assert rows["hello"]["distribution"] == "hw2-hello"
    assert rows["hello"]["version"] == "1.2.3"
    assert rows["hello"]["status"] == "loaded"


def test_plugins_table_lists_third_party(install_plugin, monkeypatch, run_cli):
    _install_hello(install_plugin, monkeypatch)
    out = run_cli("plugins").out
    assert "hw2-hello" in out and "1.2.3" in out and "loaded" in out


def test_broken_plugin_only_warns(install_plugin, monkeypatch, run_cli):
    install_plugin("hw2-broken", "broken_spec", "import does_not_exist_anywhere\n", {"broken": "broken_spec:plugin"})
    monkeypatch.delenv("HW2_PLUGINS")
    result = run_cli("--help")
    assert result.code == 0
    assert "plugin 'broken' from hw2-broken failed to load" in result.err
    assert "does_not_exist_anywhere" in result.err
    assert "data" in result.out  # the built-ins are still there
    rows = {r["name"]: r for r in json.loads(run_cli("plugins", "--json").out)}
    assert rows["broken"]["status"] == "failed"
    assert rows["data"]["status"] == "loaded"


def test_plugin_whose_commands_fail_to_import_is_a_clear_error(install_plugin, monkeypatch, run_cli):
    spec = HELLO.replace("hello_cmds:app", "missing_cmds_module:app")
    install_plugin("hw2-hello", "hello_spec", spec, {"hello": "hello_spec:plugin"})
    monkeypatch.delenv("HW2_PLUGINS")
    result = run_cli("hello", "greet")
    assert result.code == 1
    assert "plugin 'hello' (hw2-hello) failed to load its commands" in result.err
    assert "Traceback" not in result.err


def test_entry_point_that_is_not_a_plugin_is_refused(install_plugin, monkeypatch, run_cli):
    install_plugin("hw2-odd", "odd_spec", "plugin = 42\n", {"odd": "odd_spec:plugin"})
    monkeypatch.delenv("HW2_PLUGINS")
    result = run_cli("--help")
    assert result.code == 0
    assert "plugin 'odd' from hw2-odd failed to load" in result.err and "not an hw2cli.registry.Plugin" in result.err


def test_two_plugins_with_one_name_are_refused(install_plugin, monkeypatch, run_cli):
    _install_hello(install_plugin, monkeypatch)
    install_plugin("hw2-hello-clone", "hello_clone", HELLO, {"hello": "hello_clone:plugin"})
    result = run_cli("--help")
    assert result.code == 0
    assert "plugin name 'hello' is claimed by" in result.err
    assert "hw2-hello " in result.err and "hw2-hello-clone" in result.err
    assert "hello" not in result.out.split("Tools")[0].split("Project")[-1]  # not mounted
    result = run_cli("hello", "greet")
    assert result.code == 2  # no such command
    rows = {r["name"] for r in json.loads(run_cli("plugins", "--json").out) if r["status"] == "refused"}
    assert rows == {"hello"}


def test_allow_list_limits_mounted_plugins(install_plugin, monkeypatch, run_cli):
    _install_hello(install_plugin, monkeypatch)
    monkeypatch.setenv("HW2_PLUGINS", "hello")
    result = run_cli("--help")
    assert "hello" in result.out
    assert "Synthetic MNIST-M" not in result.out
    r = run_cli("data", "--help")
    assert r.code == 2 and "the command 'data' is installed, but HW2_PLUGINS=hello leaves it out" in r.err
    assert "is installed" not in run_cli("nosuch").err  # an unknown command is still just unknown
    status = {r["name"]: r["status"] for r in json.loads(run_cli("plugins", "--json").out)}
    assert status["data"] == "disabled" and status["hello"] == "loaded"


def test_allow_list_naming_an_unknown_plugin_warns(monkeypatch, run_cli):
    monkeypatch.setenv("HW2_PLUGINS", "data,nosuch")
    result = run_cli("--help")
    assert result.code == 0
    assert "HW2_PLUGINS names nosuch" in result.err


def test_help_and_plugins_do_not_import_torch(tmp_path):
    """A fresh interpreter: `hw2 --help` and `hw2 plugins` must not pull in torch."""
    code = textwrap.dedent(
        """
        import sys
        from hw2cli.app import main
        for argv in (["--help"], ["plugins"], ["data", "--help"]):
            rc = main(argv)
            assert rc == 0, (argv, rc)
            if argv == ["--help"]:
                heavy = [m for m in ("torch", "numpy", "diffusers", "pydantic") if m in sys.modules]
                assert not heavy, heavy
            assert "torch" not in sys.modules, argv
        print("OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HW2_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK")


def test_bracketed_words_in_option_help_survive_rich_markup(run_cli, monkeypatch):
    """Rich reads ``[default: …]`` or ``ᾱ[t−1]`` as a markup tag and drops it unless escaped; every
    option's bracketed words must reach the rendered ``--help``."""
    import re

    import typer.main
    from typer._click import Context

    from hw2cli.app import app

    monkeypatch.setenv("COLUMNS", "200")
    root = typer.main.get_command(app)
    checked = 0

    def walk(cmd, path):
        nonlocal checked
        cmd = cmd.real() if hasattr(cmd, "real") else cmd  # a plugin's stand-in: its real command group
        if hasattr(cmd, "list_commands"):
            ctx = Context(cmd)
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), [*path, name])
            return
        rendered = " ".join(run_cli(*path, "--help").out.replace("│", " ").split())
        for param in cmd.params:
            for inside in re.findall(r"\\?\[([^\]]+)\]", getattr(param, "help", None) or ""):
                words = inside.split()
                assert all(w in rendered for w in words), (path, param.name, inside)
                checked += 1

    walk(root, [])
    assert checked > 15


def test_no_option_help_is_cut_short_in_an_80_column_terminal(run_cli, monkeypatch):
    """Rich cuts a word longer than its column with '…' (a long path or a spec without spaces): in
    the usual 80-column terminal the one required option's syntax was unreadable."""
    import re

    import typer.main
    from typer._click import Context

    from hw2cli.app import app

    monkeypatch.setenv("COLUMNS", "80")
    cut = []

    def walk(cmd, path):
        cmd = cmd.real() if hasattr(cmd, "real") else cmd
        if hasattr(cmd, "list_commands"):
            ctx = Context(cmd)
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), [*path, name])
        r = run_cli(*path, "--help")
        assert max(map(len, r.out.splitlines())) <= 80, path
        cut.extend(f"{' '.join(path)}: {line.strip()}" for line in r.out.splitlines() if re.search(r"\S…", line))

    walk(typer.main.get_command(app), [])
    assert not cut, "\n".join(cut)


def test_help_prose_is_reflowed_but_examples_keep_their_lines():
    doc = """Summary line.

    A paragraph wrapped
    in the source.

    Examples:
      hw2 a
      hw2 b

    \bkept
    as is"""
    from hw2cli.registry import reflow

    want = "Summary line.\n\nA paragraph wrapped in the source.\n\nExamples:\n  hw2 a\n  hw2 b\n\n\bkept\nas is"
    assert reflow(doc) == want


def test_command_help_prints_whole_sentences(run_cli):
    r = run_cli("ddpm", "generate", "--help")
    assert r.code == 0
    flat = " ".join(line.strip(" │") for line in r.out.splitlines())
    assert "keeps the images already there and makes only the missing ones" in " ".join(flat.split())
    assert "\n   hw2 ddpm generate out/p1 && hw2 ddpm eval out/p1" in r.out  # the example keeps its own line
