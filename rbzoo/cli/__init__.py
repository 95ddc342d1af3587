"""The `rbzoo` command line: a thin shell over the Python API.

Each subcommand lives in its own module and only parses, checks its options before torch loads
(`_check`), calls the library, and prints. Any :class:`rbzoo.errors.RbzooError` becomes a one-line
message and a non-zero exit code; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import warnings as _warnings

import typer
from rich.console import Console
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from ..errors import RbzooError, RbzooWarning


class _Readable:
    """Help that reads as a user types: flags show no `<bool>`; arguments read MODEL, and the usage
    line `MODEL [OUT] INPUTS...` (typer's own is `{model} [[OUT]] {inputs}...`); a docstring's
    paragraphs are re-wrapped to the terminal (typer keeps their source line breaks)."""

    def __init__(self, *args, help: str | None = None, **kwargs) -> None:
        if help:
            import inspect

            help = "\n\n".join(p if p.startswith("\b") else " ".join(p.split())
                                 for p in inspect.cleandoc(help).split("\n\n"))
        super().__init__(*args, help=help, **kwargs)

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for p in params:
            if isinstance(p, TyperOption) and p.is_flag and p.metavar is None:
                p.metavar = ""  # what a flag is needs no type: it takes no value
            elif isinstance(p, TyperArgument) and p.metavar is None:
                p.metavar = p.name.upper() + ("..." if p.nargs != 1 else "")
        return params

    def collect_usage_pieces(self, ctx) -> list[str]:
        rv = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                rv.append(p.metavar if p.required else f"[{p.metavar}]")
        if isinstance(self, TyperGroup):
            rv.append(self.subcommand_metavar)
        return rv


class _Command(_Readable, TyperCommand):
    pass


class _Group(_Readable, TyperGroup):
    pass


class App(typer.Typer):
    """typer.Typer whose commands and groups print readable help (see `_Readable`)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cls=_Group, **kwargs)

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = App(
    name="rbzoo",
    help="Robust binary subnetworks: train, evaluate, and share seed+mask checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Rich assumes 80 columns when output is not a terminal; tables read better wider.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)

# What this invocation is: its arguments, and how to continue it if it stops (see `resume_hint`).
_RUN: dict = {"argv": [], "resume": None}


def resume_hint(hint) -> None:
    """A command that can continue after Ctrl-C or a full disk says how, before its long work starts.

    `hint` is a command line, or a callable returning one (or None when nothing was written yet)."""
    _RUN["resume"] = hint


def same_command(drop: tuple[str, ...] = ("--fresh",)) -> str:
    """`rbzoo` and this invocation's arguments (without the flags in `drop`), quoted for a shell."""
    import shlex

    return shlex.join(["rbzoo", *(a for a in _RUN["argv"] if a not in drop)])



def _version(value: bool) -> None:
    if value:
        from .. import __version__

        console.print(f"rbzoo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Robust binary subnetworks: train, evaluate, and share seed+mask checkpoints."""


def _register_commands() -> None:
    """Import every module of this package; each registers its commands on `app`."""
    import importlib
    import pkgutil

    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{mod}")


_register_commands()

# Exit codes (docs/contracts.md): 0 ok, 1 the system refused (disk full, permission), 2 bad input,
# 3 a verification failed, 130 interrupted (Ctrl-C).
EXIT_OS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _resume_text() -> str | None:
    hint = _RUN["resume"]
    return hint() if callable(hint) else hint


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _fail(message: object, code: int, label: str = "error") -> int:
    """Print ONE line on stderr, never interpreting markup in the message (it may hold `[/x]`)."""
    from rich.text import Text

    err_console.print(Text.assemble((f"{label}:", "bold red" if label == "error" else "yellow"), " ",
                                    _one_line(message)), soft_wrap=True, highlight=False)
    return code


def _os_error(e: OSError) -> int:
    import errno

    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    what = e.strerror or type(e).__name__
    msg = f"{where}: {what}" if where else f"{what}: {e}"
    if e.errno == errno.ENOSPC:
        msg += "; nothing was corrupted (rbzoo writes every file atomically)"
        hint = _resume_text()
        msg += f": free some space, then resume with: {hint}" if hint else ": free some space and run the command again"
    # A file where a folder must be (or the reverse) is a path the user gave: bad input, like
    # `train --out FILE`, not the system refusing.
    return _fail(msg, EXIT_USAGE if e.errno in (errno.ENOTDIR, errno.EISDIR) else EXIT_OS)


def _interrupted() -> int:
    hint = _resume_text()
    return _fail(f"interrupted; resume with: {hint}" if hint else "interrupted", EXIT_INTERRUPTED)


def _click_error(e: Exception) -> int | None:
    """click's (and typer's vendored click's) usage errors, as one line; None if `e` is not one."""
    import click

    kinds = [click.ClickException]
    try:  # recent typer vendors click as typer._click, whose exceptions are not click's
        from typer._click.exceptions import ClickException as TyperClickException

        kinds.append(TyperClickException)
    except ImportError:
        pass
    if not isinstance(e, tuple(kinds)):
        return None
    if type(e).__name__ == "NoArgsIsHelpError":  # `rbzoo data`: the help was printed, as for plain `rbzoo`
        return 0
    ctx = getattr(e, "ctx", None)
    see = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return _fail(f"{e.format_message()}{see}", e.exit_code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Every warning is one line: rbzoo's as they are, a library's with its category (not its source line)."""
    _fail(message if issubclass(category, RbzooWarning) else f"{category.__name__}: {message}", 0, label="warning")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: every error a user can cause becomes ONE line on stderr and
    the exit code above; a bug (any other exception) still shows its traceback."""
    _RUN.update(argv=list(sys.argv[1:] if argv is None else argv), resume=None)
    with _warnings.catch_warnings():
        _warnings.showwarning = _show_warning
        try:
            rv = app(args=argv, standalone_mode=False, prog_name="rbzoo")
        except RbzooError as e:
            return _fail(e, e.exit_code)
        except KeyboardInterrupt:
            return _interrupted()
        except OSError as e:
            return _os_error(e)
        except Exception as e:  # click's own usage errors, Exit and Abort; anything else is a bug
            code = _click_error(e)
            if code is not None:
                return code
            if type(e).__name__ == "Exit" and hasattr(e, "exit_code"):  # click's or typer's vendored Exit
                rv = e.exit_code
            elif type(e).__name__ == "Abort":  # EOF on a prompt
                return _fail("aborted", 1)
            else:
                raise
    # typer turns Ctrl-C into Exit(130) and, outside standalone mode, returns its code.
    if rv == EXIT_INTERRUPTED:
        return _interrupted()
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


def run() -> None:
    try:
        code = main()
    except KeyboardInterrupt:  # a second Ctrl-C while the first one is being reported
        code = EXIT_INTERRUPTED
    sys.exit(code)
