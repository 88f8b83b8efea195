"""Entry point: the typer app, global options, and the one place that turns errors into
a short message and an exit status (never a traceback, unless --debug).

Exit statuses every command shares: 0 success, 1 an error (`Error: ...`), 2 a usage
error (a typo'd command or option, a bad value, a missing file), 130 interrupted.
Commands document their own beyond these (`wait`: 124 on --timeout; `logs`: 3 when
only the end of a log survives)."""
from __future__ import annotations

import os
import sys

import typer
import typer.main
# typer raises its own bundled copy of click's exceptions, not click's: the
# range pinned in pyproject.toml is the one this import is known to work with
from typer._click.exceptions import ClickException

from .. import __version__
from ..errors import ShoalError
from . import cluster, tasks, mapping, dag, flow

app = typer.Typer(
    name="shoal", no_args_is_help=True, rich_markup_mode="rich",
    help="Run shell commands on one machine or a fleet. All state lives in etcd; every node is equal.\n\n"
         "[bold]Start here[/]: `shoal up`, then `shoal submit -- echo hello` or "
         "`shoal map 'gzip -k {}' ::: *.log`.\n\n"
         "Exit status: 0 success, 1 error, 2 usage error (a mistyped command or option, a bad "
         "value, a missing file), 130 interrupted; `wait` and `logs` add their own (see their --help).")
_debug = {"on": False}


def _version(value: bool) -> None:
    if value:
        print(f"shoal {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print shoal's version and exit.")):
    _debug["on"] = debug


cluster.register(app)
tasks.register(app)
mapping.register(app)
dag.register(app)
flow.register(app)


def _keep_defaults(cmd) -> None:
    """Help texts write `[default: 1]` by hand where the default is the server's; rich
    would take that for a markup tag and drop it, so escape it, in every command."""
    for p in getattr(cmd, "params", ()):
        if getattr(p, "help", None):
            p.help = p.help.replace("\\[default:", "[default:").replace("[default:", "\\[default:")
    for sub in getattr(cmd, "commands", {}).values():
        _keep_defaults(sub)


def command():
    """The click command typer builds from `app`, with the defaults in its help kept."""
    cmd = typer.main.get_command(app)
    _keep_defaults(cmd)
    return cmd


def _usage_message(e: ClickException) -> None:
    """Show a usage error, naming the value that was refused. typer checks values with
    pydantic, whose message leaves the value out and may start with "Value error, "."""
    errs = e.__cause__.errors() if callable(getattr(e.__cause__, "errors", None)) else []
    e.message = e.message.replace("Value error, ", "")
    if errs and isinstance(errs[0].get("input"), str) and errs[0]["input"] not in e.message:
        e.message = f"{errs[0]['input']!r} is not valid: {e.message}"
    e.show()


def run() -> None:
    debug = "--debug" in sys.argv
    try:
        rc = command().main(prog_name="shoal", standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except ShoalError as e:
        if debug or _debug["on"]:
            raise
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except ClickException as e:  # usage errors: click's exit status (2), its short message
        _usage_message(e)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("Aborted.", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:      # `shoal logs ID | head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(0)
    except Exception as e:
        if debug or _debug["on"]:
            raise
        print(f"Error: unexpected {type(e).__name__}: {e} (a bug in shoal: run again with --debug "
              "for the traceback, and report it)", file=sys.stderr)
        sys.exit(1)
