"""The ``hw2`` command: global options, plugin mounting, and the one error path.

Start-up stays light: this module imports Typer and Rich only. Plugins are listed from their
entry points; a plugin's command module (and torch) is imported only when one of its commands
runs (``LazyPluginCommand``).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from hw2cli import __version__, interrupts, registry, ui
from hw2cli.errors import HW2Error, as_option

PROJECT_PANEL = "Project"


class LazyPluginCommand(TyperCommand):
    """Stands in for a plugin in ``hw2 --help``; becomes the real command group when invoked."""

    def __init__(self, record: registry.PluginRecord) -> None:
        assert record.plugin is not None
        super().__init__(name=record.name, help=record.plugin.help, short_help=record.plugin.help)
        self.rich_help_panel = record.plugin.panel
        self.record = record

    def real(self) -> Any:
        try:
            return registry.load_command(self.record)
        except Exception as exc:
            raise HW2Error(
                f"plugin '{self.record.name}' ({self.record.distribution}) failed to load its commands: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        return self.real().make_context(info_name, args, parent=parent, **extra)

    def shell_complete(self, ctx: Any, incomplete: str) -> Any:
        return self.real().shell_complete(ctx, incomplete)


class PluginGroup(TyperGroup):
    """The root group: built-in project commands plus every mounted plugin."""

    _warned = False

    def _plugins(self) -> dict[str, registry.PluginRecord]:
        found = registry.discover()
        if not PluginGroup._warned:
            PluginGroup._warned = True
            for message in found.warnings:
                ui.warn(message)
        return found.mounted()

    def list_commands(self, ctx: Any) -> list[str]:
        builtins = list(self.commands)
        return builtins + sorted(n for n in self._plugins() if n not in self.commands)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        record = self._plugins().get(cmd_name)
        if record is None and any(r.name == cmd_name and r.status == "disabled" for r in registry.discover().records):
            from typer._click import exceptions as click_exceptions

            raise click_exceptions.UsageError(
                f"the command '{cmd_name}' is installed, but {registry.ALLOW_LIST_VARIABLE}="
                f"{os.environ.get(registry.ALLOW_LIST_VARIABLE, '')} leaves it out; add it there or unset the variable",
                ctx,
            )
        return LazyPluginCommand(record) if record is not None else None


app = typer.Typer(
    name="hw2",
    cls=PluginGroup,
    help=(
        "One command for the generative-vision homework: conditional DDPM on digits, DDIM on faces, "
        "CLIP zero-shot, and Stable Diffusion personalization."
    ),
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        ui.result(f"hw2 {__version__}")
        raise typer.Exit()


def quiet_libraries(*, debug: bool) -> None:
    """The one place library logging is set, for the whole process and before any library loads:
    diffusers' and transformers' progress bars and advice would interleave with hw2's own
    progress and errors, and open_clip reports on the root logger ("initialized randomly" before
    hw2 loads the weights). ``--debug`` leaves all of it on. Sets environment variables only, so
    nothing heavy is imported here."""
    if debug:
        return
    import logging

    for name, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                        ("DIFFUSERS_VERBOSITY", "error"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
                        ("TQDM_DISABLE", "1")):  # fmt: skip
        os.environ.setdefault(name, value)
    logging.getLogger().setLevel(logging.ERROR)
    # torch logs through its own handler, past the root's level: on a machine without CUDA, every
    # torch.compile or Triton start said "No CUDA runtime is found, using CUDA_HOME=…", in glog form
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


_LIBRARY_PLANS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
_shown_warnings: set[str] = set()


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:  # fmt: skip
    """Python's warnings as hw2's own one-line ``Warning:``, each text once per command. A library's
    notice of its own future (a FutureWarning or DeprecationWarning from outside hw2, about code
    the user never wrote) is left out. Under ``--debug`` every warning keeps Python's own form."""
    if ui.is_debug():
        (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    package = str(Path(__file__).resolve().parent)
    if issubclass(category, _LIBRARY_PLANS) and not str(Path(filename).resolve()).startswith(package):
        return
    text = " ".join(str(message).split())
    if text not in _shown_warnings:
        _shown_warnings.add(text)
        ui.warn(text)


_routed: dict[str, str] = {}
LIBRARY_CACHES = {
    "MPLCONFIGDIR": "matplotlib",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "TRITON_CACHE_DIR": "triton",
    # Hugging Face's default hub cache: hw2 names its own cache folder for every download, but at
    # older versions diffusers and transformers write version files into the default one on import
    # (HF_HOME, with the login token, is left alone)
    "HF_HUB_CACHE": "hub",
}


def route_library_caches(weights_dir: Path) -> None:
    """Matplotlib's font cache, torch.compile's and Triton's compiled code and Hugging Face's default
    hub cache go under the weights folder (they went to ~/.cache, ~/.triton and $TMPDIR), unless
    the user set them, or the folder cannot be written (the libraries then fall back to their own
    places quietly)."""
    from hw2cli.errors import UsageError
    from hw2cli.io.atomic import check_output_folder

    try:
        check_output_folder(weights_dir, "weights folder")
    except UsageError:
        return
    for name, sub in LIBRARY_CACHES.items():
        if name == "HF_HUB_CACHE" and any(os.environ.get(k) for k in ("HUGGINGFACE_HUB_CACHE", "HF_HOME")):
            continue  # the user chose the hub cache under its older name, or through HF_HOME
        if os.environ.get(name) in (None, _routed.get(name)):  # unset, or set by an earlier run in this process
            _routed[name] = os.environ[name] = str(Path(weights_dir).absolute() / sub)


@app.callback()
def root(
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:N or mps \\[env: HW2_DEVICE]."),
    dtype: str | None = typer.Option(None, help="fp32, bf16 or fp16 \\[env: HW2_DTYPE]."),
    seed: int | None = typer.Option(None, help="Global random seed \\[env: HW2_SEED]."),
    kernels: str | None = typer.Option(None, help="auto, triton or torch \\[env: HW2_KERNELS]."),
    offline: bool | None = typer.Option(
        None, "--offline/--online", help="Never download weights \\[env: HW2_OFFLINE]."
    ),
    data_root: Path | None = typer.Option(None, help="Homework data folder \\[env: HW2_DATA_ROOT]."),
    output_root: Path | None = typer.Option(None, help="Default output folder \\[env: HW2_OUTPUT_ROOT]."),
    weights_dir: Path | None = typer.Option(None, help="Weights and caches \\[env: HW2_WEIGHTS_DIR]."),
    config: Path | None = typer.Option(None, "--config", help="A TOML settings file (default: ./hw2.toml)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or status lines."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks \\[env: HW2_DEBUG=1]."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    from hw2cli import settings as settings_mod

    ui.configure(quiet=quiet, debug=debug or ui.is_debug())
    quiet_libraries(debug=ui.is_debug())
    cli = {
        "device": device,
        "dtype": dtype,
        "seed": seed,
        "kernels": kernels,
        "offline": offline,
        "data_root": data_root,
        "output_root": output_root,
        "weights_dir": weights_dir,
    }
    settings_mod.set_current(*settings_mod.load(cli, config_file=config))
    route_library_caches(settings_mod.get().weights_dir)
    for message in unknown_variables(os.environ):
        ui.warn(message)


# HW2_* variables that are not settings: the CLI's own, and the GPU suite's
OTHER_VARIABLES = ("HW2_DEBUG", "HW2_PLUGINS", "HW2_SUITE_STEP_SECONDS")


def unknown_variables(environ: Any) -> list[str]:
    """A sentence for each ``HW2_*`` variable hw2 does not read, with the name it probably means:
    an unknown key in hw2.toml is refused, and a misspelt variable (``HW2_DEVCE``) was silently
    nothing."""
    import difflib

    from hw2cli import settings as settings_mod

    known = [f"{settings_mod.ENV_PREFIX}{name.upper()}" for name in settings_mod.Settings.model_fields]
    known += OTHER_VARIABLES
    messages = []
    for name in sorted(environ):  # the settings read names whatever their case: so does this
        if name.upper().startswith(settings_mod.ENV_PREFIX) and name.upper() not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else f"; hw2 reads {', '.join(sorted(known))}"
            messages.append(f"{name} is not a variable hw2 reads{hint}.")
    return messages


# --------------------------------------------------------------------------- project commands


@app.command("plugins", rich_help_panel=PROJECT_PANEL)
def plugins_command(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List installed plugins: name, distribution, version, help and load status."""
    found = registry.discover()
    rows = []
    for r in found.records:
        status = r.status
        if r.status == "ok":
            try:
                registry.load_command(r)
                status = "loaded"
            except Exception as exc:
                status, r.reason = "failed", f"{type(exc).__name__}: {exc}"
        rows.append(
            {
                "name": r.name,
                "distribution": r.distribution,
                "version": r.version,
                "help": r.help,
                "status": status,
                "reason": r.reason,
            }
        )
    if as_json:
        ui.print_json(rows)
        return
    for message in found.warnings:
        ui.warn(message)
    ui.print_table(
        ["name", "distribution", "version", "help", "status"],
        [
            [
                r["name"],
                r["distribution"],
                r["version"],
                r["help"],
                r["status"] + (f": {r['reason']}" if r["reason"] else ""),
            ]
            for r in rows
        ],
        title="hw2 plugins",
    )


config_app = typer.Typer(help="Show the settings and where each value comes from.", no_args_is_help=True)
app.add_typer(config_app, name="config", rich_help_panel=PROJECT_PANEL)


@config_app.command("show")
def config_show(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Print every setting, its value and its source (option, env, .env, hw2.toml, pyproject.toml, default)."""
    from hw2cli import settings as settings_mod

    current = settings_mod.get()
    origin = settings_mod.origin()
    rows = [
        {"name": name, "value": str(getattr(current, name)), "source": origin.get(name, "default")}
        for name in type(current).model_fields
    ]
    if as_json:
        ui.print_json(rows)
    else:
        ui.print_table(["setting", "value", "source"], [[r["name"], r["value"], r["source"]] for r in rows])


@app.command("env", rich_help_panel=PROJECT_PANEL)
def env_command(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Versions, device and kernel backend, ready to paste into a bug report."""
    from hw2cli.runtime import environment_report

    report = environment_report()
    if as_json:
        ui.print_json(report)
    else:
        ui.print_table(["", ""], [[k, v] for k, v in report.items()], title="hw2 env")


# --------------------------------------------------------------------------- entry point


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _describe_bad_parameter(exc: Any) -> str:
    """Typer's ``BadParameter`` as one sentence that names the option and the value it got."""
    from typer._click import exceptions as click_exceptions

    param = getattr(exc, "param", None)
    if param is not None and getattr(param, "opts", None):
        longs = [o for o in param.opts if o.startswith("--")]
        if param.param_type_name == "option":
            hint = longs[0] if longs else param.opts[0]
        else:
            hint = (param.name or "argument").upper()
    else:
        hint = exc.param_hint if isinstance(exc.param_hint, str) else "a value"
    cause = exc.__cause__
    errors = cause.errors() if cause is not None and hasattr(cause, "errors") else []
    if not errors:
        if isinstance(exc, click_exceptions.MissingParameter):
            return exc.format_message()
        return f"{hint}: {exc.message.rstrip('.')}."
    first = errors[0]
    value, kind, ctx = first.get("input"), first.get("type", ""), first.get("ctx") or {}
    ctx = {k: (f"{v:g}" if isinstance(v, float) else v) for k, v in ctx.items()}
    shown = repr(value) if isinstance(value, str) and not _is_number(value) else str(value)
    expected = {
        "greater_than_equal": f"expected at least {ctx.get('ge')}",
        "greater_than": f"expected more than {ctx.get('gt')}",
        "less_than_equal": f"expected at most {ctx.get('le')}",
        "less_than": f"expected less than {ctx.get('lt')}",
        "int_parsing": "expected a whole number",
        "int_from_float": "expected a whole number",
        "float_parsing": "expected a number",
        "finite_number": "expected a finite number",
        "bool_parsing": "expected true or false",
        "enum": f"expected one of {ctx.get('expected', '')}".rstrip(),
        "literal_error": f"expected one of {ctx.get('expected', '')}".rstrip(),
    }.get(kind)
    if expected is None:
        msg = str(first.get("msg", "not valid")).removeprefix("Value error, ").rstrip(".")
        _, sep, choices = msg.partition("is not one of ")
        expected = f"expected one of {choices}" if sep else msg[:1].lower() + msg[1:]
    if kind.startswith(("greater", "less")) and _is_number(str(value)) and not math.isfinite(float(str(value))):
        bound = expected.removeprefix("expected ")  # nan fails every comparison: not "too big"
        expected = f"expected a finite number ({bound})"
    return f"{hint} is {shown}; {expected}."


def _disk_full(exc: BaseException) -> str | None:
    """The sentence for a write that found its disk (or quota) full, wherever it was raised
    (an OSError, or a library's error that wraps one, like safetensors'); ``None`` otherwise."""
    import errno

    seen: BaseException | None = exc
    while seen is not None:
        number = getattr(seen, "errno", None)
        if number in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(seen):
            name = getattr(seen, "filename", None)
            where = f" holding {Path(name).parent}" if name else ""
            what = "quota" if number == errno.EDQUOT else "space"
            return (
                f"no {what} left on the device{where}. Nothing half-written is kept: free some space and run the "
                "same command again (finished files are kept, and a training run continues from its last state "
                "with --resume)."
            )
        seen = seen.__cause__ or seen.__context__
    return None


HELP_MIN_WIDTH = 80


def _help_width(args: list[str]) -> None:
    """Help drawn at least 80 columns wide: below that, rich's tables cut the option names
    themselves (``--alpha-pr…``), and a help that cannot be typed from is no help. The terminal
    wraps the longer lines instead."""
    import shutil

    if ("--help" in args or "-h" in args or not args) and shutil.get_terminal_size().columns < HELP_MIN_WIDTH:
        import typer.rich_utils

        if typer.rich_utils.MAX_WIDTH is None:  # TERMINAL_WIDTH, the user's own choice, wins
            typer.rich_utils.MAX_WIDTH = HELP_MIN_WIDTH


def _empty_argument(args: list[str]) -> str | None:
    """An empty argument is almost always an unset shell variable (``--out "$OUT"``): as a path it
    would be the working folder, so it is refused before anything runs, whatever the option."""
    options = True
    for i, arg in enumerate(args):
        if arg == "--" and options:  # what follows is positional, whatever it looks like
            options = False
            continue
        name, eq, value = arg.partition("=")
        if options and arg.startswith("--") and eq and not value:
            return f"{name} is ''; expected a value (is a shell variable empty?)."
        if arg == "":
            before = args[i - 1] if i else ""
            if options and before.startswith("-") and before != "--" and "=" not in before:  # its value, or not
                return f"an empty argument follows {before}; expected a value (is a shell variable empty?)."
            return "an argument is ''; expected a value (is a shell variable empty?)."
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 runtime failure, 2 usage error, 130 Ctrl-C)."""
    try:
        code = _main(argv)
    finally:
        interrupts.disarm()
        if "hw2cli.io.locks" in sys.modules:  # the command's output folders are free again
            sys.modules["hw2cli.io.locks"].release_all()
    if code == 0 and ui.stdout_lost():  # the work is done, but its result reached no one
        return STDOUT_LOST
    return code


# what a shell reports for a command whose output pipe closed (128 + SIGPIPE): `hw2 … | head`
STDOUT_LOST = 141


def _main(argv: list[str] | None) -> int:
    from typer._click import exceptions as click_exceptions

    args = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # an ASCII or Latin-1 terminal: escapes, not a crash
        encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(Exception):
                stream.reconfigure(errors="backslashreplace")
    debug = "--debug" in args or os.environ.get("HW2_DEBUG", "").lower() in ("1", "true", "yes")
    ui.configure(debug=debug, quiet=False)
    warnings.showwarning = _show_warning
    _shown_warnings.clear()
    ui.set_command(args)
    ui.on_interrupt(None)
    interrupts.install()
    _help_width(args)
    empty = _empty_argument(args)
    if empty is not None:
        ui.error(empty)
        return 2
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="hw2", standalone_mode=False)
    except click_exceptions.BadParameter as exc:
        try:
            message = _describe_bad_parameter(exc)
        except Exception:  # the error path must never fail: fall back to Typer's own words
            message = exc.format_message()
        ui.error(message)
        return 2
    except click_exceptions.NoArgsIsHelpError as exc:  # a group called without a command: show its help
        text = exc.format_message()  # Typer's rich help has already printed itself; plain help is returned
        if text.strip():
            ui.err().print(text, markup=False, highlight=False)
        return 2
    except click_exceptions.NoSuchOption as exc:
        ui.error(_global_option_misplaced(command, exc) or _usage_sentence(exc))
        return 2
    except click_exceptions.UsageError as exc:
        ui.error(_usage_sentence(exc))
        return 2
    except click_exceptions.ClickException as exc:
        ui.error(exc.format_message())
        return exc.exit_code
    except typer.Abort:
        ui.error(ui.interrupted())
        return 130
    except SystemExit as exc:
        if isinstance(exc.__context__, BrokenPipeError):  # rich's own answer to a closed pipe: exit 1
            return STDOUT_LOST
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except HW2Error as exc:
        if ui.is_debug():
            traceback.print_exc()
        ui.error(exc.render(as_option), exc.label)
        return exc.exit_code
    except KeyboardInterrupt:
        ui.error(ui.interrupted())
        return 130
    except BrokenPipeError:  # help or a table written straight to a pipe its reader closed
        return STDOUT_LOST
    except Exception as exc:
        if ui.is_debug():
            traceback.print_exc()
        if interrupts.pending():  # a Ctrl-C a library turned into its own error (an import it cut short)
            ui.error(ui.interrupted())
            return 130
        full = _disk_full(exc)
        if full is not None:
            ui.error(full)
            return 1
        ui.error(f"unexpected {type(exc).__name__}: {exc} (run again with --debug for the traceback).")
        return 1
    if code == 130:  # Typer turns Ctrl-C into Exit(130) silently
        ui.error(ui.interrupted())
    return code if isinstance(code, int) else 0


def _usage_sentence(exc: Any) -> str:
    where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return f"{exc.format_message().rstrip('.')}{where}."


def _global_option_misplaced(command: Any, exc: Any) -> str | None:
    """``hw2 data synth out --device cpu``: an option of ``hw2`` itself given after the command,
    where Click only says there is no such option."""
    if exc.ctx is None or exc.ctx.parent is None:
        return None
    name = exc.option_name
    for param in command.params:
        if name in (*param.opts, *param.secondary_opts):
            path = exc.ctx.command_path.split(" ", 1)
            rest = f" {path[1]}" if len(path) > 1 else ""
            value = "" if getattr(param, "is_flag", False) else " …"
            return (
                f"{name} is an option of hw2 itself: put it before the command ({path[0]} {name}{value}{rest} …); "
                f"see '{path[0]} --help'."
            )
    return None


def run() -> None:
    """Console-script entry point.

    Once the command has answered, Ctrl-C has nothing left to stop: a second press while the first
    one's message is printed, or during shutdown, is ignored instead of ending in a traceback. An
    interrupted command (130) leaves with ``os._exit``: a Ctrl-C that lands in Python code a C
    extension runs while it imports (torch does) sets CPython's "unhandled KeyboardInterrupt" flag
    although hw2 handled it, and CPython would then end by killing itself with SIGINT instead of
    exiting with 130, about half the time. Everything was written and closed by then; only the
    buffered streams need a flush.
    """
    import signal

    code = 130
    try:
        code = main()
    except KeyboardInterrupt:  # a further Ctrl-C while the previous one's message was printed
        pass
    finally:
        with contextlib.suppress(KeyboardInterrupt):  # one landing right here is the same further Ctrl-C
            if _on_main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if code == 130:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(130)
    raise SystemExit(code)


def _on_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
