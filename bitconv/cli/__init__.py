"""The `bitconv` command line: the Typer app, thin command modules over library calls, and the one place where
errors become output. A `BitconvError` (bitconv.errors) or an OSError (a full disk, a permission) is one line on
stderr and exit code 1; a usage error is exit code 2; Ctrl-C is exit code 130 and SIGTERM 143, each after the
outputs being written were removed; anything else is a bug and keeps its traceback.

Command modules, each with `register(app)`: convert (convert, inspect), evaluate (eval, compare, report),
export (export, generate), recover, hub (push).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.markup import escape

from bitconv.errors import BitconvError

app = typer.Typer(
    help="Convert transformer checkpoints into packed ternary (1.58-bit) models, recover, measure and ship them.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
_state = {"debug": False, "signal": None}
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


# the exception types of the click that typer runs on: typer >= 0.22 vendors its own (typer._click), older ones use
# click itself; both are caught
_CLICK_ERRORS = tuple({click.ClickException, *(c for c in [getattr(typer, "TyperException", None)] if c)})
_EXITS = tuple({click.exceptions.Exit, typer.Exit})
_ABORTS = tuple({click.exceptions.Abort, typer.Abort})
_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells report them
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _one_line(text: str) -> str:
    """A message as one line of plain text: control characters (from a file's header, say) shown escaped, never
    sent to the terminal."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


def _stop(signum, frame) -> None:
    """SIGINT and SIGTERM both unwind the command as Ctrl-C does, so every staged output is removed on the way out."""
    _state["signal"] = signum
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point: one line per error, exit code 1 (2 for usage errors, 130 for Ctrl-C, 143 for SIGTERM),
    traceback with --debug."""
    _state["signal"] = None
    previous = {signum: signal.signal(signum, _stop) for signum in _SIGNAL_EXIT}
    try:
        code = _run()
    finally:  # main() also runs inside test processes: give them their handlers back
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    sys.exit(code)


def _run() -> int:
    command = typer.main.get_command(app)
    code = 0
    try:
        code = command.main(standalone_mode=False)  # returns the exit code of a typer.Exit (typer turns Ctrl-C into one)
    except _EXITS as exc:
        code = exc.exit_code
    except _CLICK_ERRORS as exc:
        exc.show()
        code = exc.exit_code
    except KeyboardInterrupt:  # our handler's, for SIGINT and SIGTERM: the line is printed below
        code = 130
    except _ABORTS:  # older click turns Ctrl-C into Abort: then the signal's line below is the only one
        if _state["signal"] is None:
            err_console.print("aborted")
        code = 1
    except BitconvError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {escape(_one_line(str(exc)))}", highlight=False, soft_wrap=True)
        code = 1
    except OSError as exc:  # the environment (a disk, a permission, a vanished file), not a bug: one line
        if _state["debug"]:
            raise
        where = f"{exc.filename}: " if exc.filename is not None else ""
        err_console.print(f"[bold red]error:[/] {escape(_one_line(where + (exc.strerror or str(exc))))}",
                          highlight=False, soft_wrap=True)
        code = 1
    if _state["signal"] is not None:
        name = "interrupted" if _state["signal"] == signal.SIGINT else "terminated (SIGTERM)"
        err_console.print(f"{name}: stopped; outputs that were not finished were removed", highlight=False)
        code = _SIGNAL_EXIT[_state["signal"]]
    return code if isinstance(code, int) else 0
