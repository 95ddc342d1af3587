"""The `rbzoo` command line: a thin shell over the Python API.

Each subcommand lives in its own module and only parses, calls the library, and prints. Any
:class:`rbzoo.errors.RbzooError` becomes a one-line message and a non-zero exit code.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from ..errors import RbzooError

app = typer.Typer(
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    try:
        app(args=argv, standalone_mode=False, prog_name="rbzoo")
    except RbzooError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except (ValueError, KeyError) as e:  # bad option values surfacing from the library
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as e:  # click's own usage errors
        import click

        if isinstance(e, click.exceptions.Exit):
            return e.exit_code
        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            return 1
        try:  # recent typer vendors click as typer._click, whose exceptions are not click's
            from typer._click.exceptions import ClickException as TyperClickException
        except ImportError:
            TyperClickException = None
        if TyperClickException is not None and isinstance(e, TyperClickException):
            e.show()
            return e.exit_code
        raise
    return 0


def run() -> None:
    sys.exit(main())
