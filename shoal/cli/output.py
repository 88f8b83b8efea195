"""Printing: --output json (one document) or table (rich)."""
from __future__ import annotations

import sys
import time
from enum import Enum

import orjson
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


class Output(str, Enum):
    table = "table"
    json = "json"


def print_json(data) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


STATE_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan",
               "queued": "white", "waiting": "magenta", "held": "magenta", "upstream_failed": "red"}


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    s = time.time() - ts
    if s < 60:
        return f"{s:.0f}s ago"
    if s < 3600:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def duration(rec) -> str:
    last = rec.last
    if not last or not last.started_at:
        return "-"
    end = last.finished_at or time.time()
    return f"{end - last.started_at:.2f}s"


def state_text(state) -> str:
    v = state.value if hasattr(state, "value") else str(state)
    return f"[{STATE_STYLE.get(v, 'white')}]{v}[/]"


def tasks_table(records) -> Table:
    t = Table(show_edge=False, header_style="bold")
    for col in ("ID", "NAME", "STATE", "ATTEMPT", "NODE", "EXIT", "TOOK", "SUBMITTED", "COMMAND"):
        t.add_column(col, overflow="fold" if col == "COMMAND" else "ellipsis", no_wrap=col != "COMMAND")
    for r in records:
        t.add_row(r.id, r.spec.name or "", state_text(r.state), str(r.attempt), r.node or "-",
                  "" if r.exit_code is None else str(r.exit_code), duration(r), ago(r.submitted_at),
                  r.spec.display()[:80])
    return t
