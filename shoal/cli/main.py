"""Entry point: the typer app, global options, and one place that turns errors into
`Error: <message>` and an exit code."""
from __future__ import annotations

import sys

import typer

from ..errors import ShoalError
from . import cluster, tasks, mapping, dag, flow

app = typer.Typer(
    name="shoal", no_args_is_help=True, rich_markup_mode="rich",
    help="Run shell commands on one machine or a fleet. All state lives in etcd; every node is equal.\n\n"
         "[bold]Start here[/]: `shoal up`, then `shoal submit -- echo hello` or "
         "`shoal map 'gzip -k {}' ::: *.log`.")
_debug = {"on": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    _debug["on"] = debug


cluster.register(app)
tasks.register(app)
mapping.register(app)
dag.register(app)
flow.register(app)


def run() -> None:
    try:
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except ShoalError as e:
        if _debug["on"] or "--debug" in sys.argv:
            raise
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        # usage errors (a missing file argument, a value of the wrong type) show themselves;
        # typer raises its own copy of click's exceptions, so they are known by what they do
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        raise
