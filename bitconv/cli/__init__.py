"""The `bitconv` command line: the Typer app, thin command modules over library calls, and the one place where
errors become output. A `BitconvError` (bitconv.errors) is one line on stderr and exit code 1; a usage error is
exit code 2; Ctrl-C is exit code 130; anything else is a bug and keeps its traceback.

Command modules, each with `register(app)`: convert (convert, inspect), evaluate (eval, compare, report),
export (export, generate), recover, hub (push).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import click
import typer
from rich.console import Console

from bitconv.errors import BitconvError

app = typer.Typer(
    help="Convert transformer checkpoints into packed ternary (1.58-bit) models, recover, measure and ship them.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
_state = {"debug": False}
COMMAND_MODULES = ("convert", "evaluate", "export", "recover", "hub")


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False) -> None:
    _state["debug"] = debug or os.environ.get("BITCONV_DEBUG") == "1"


def _register_plugins() -> None:
    """Commands that live in their own modules (evaluation, export, recovery, hub) register themselves here."""
    import importlib

    for module in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"bitconv.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bitconv.cli.{module}" or exc.name == "bitconv.cli":
                continue
            raise
        mod.register(app)


_register_plugins()


def main() -> None:
    """Console entry point: one line per error, exit code 1 (2 for usage errors), traceback with --debug."""
    command = typer.main.get_command(app)
    try:
        command.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("interrupted: nothing was left half-written")
        sys.exit(130)
    except BitconvError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
