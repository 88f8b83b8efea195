"""Printing: --output json (one document) or table (rich)."""
from __future__ import annotations

import signal
import sys
import time
from enum import Enum

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

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


def signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return ""


def exit_short(a) -> str:
    """The EXIT column: the code, or the signal's name; empty while running."""
    if a is None:
        return ""
    if a.exit_code is not None:
        return str(a.exit_code)
    return (signal_name(a.signal) or f"signal {a.signal}") if a.signal else ""


def exit_text(a) -> str:
    """How an attempt ended, in words: `exit 3`, `killed by signal 9 (SIGKILL)`."""
    if a.exit_code is not None:
        return f"exit {a.exit_code}"
    if a.signal:
        name = signal_name(a.signal)
        return f"killed by signal {a.signal}" + (f" ({name})" if name else "")
    return "exit unknown"


def rss_text(rss_bytes: int | None) -> str:
    # no process has a peak of 0 bytes: 0 means nobody measured it
    return f"{rss_bytes / 2**20:.1f} MiB" if rss_bytes else "unknown"


def fitted_table(columns: list[tuple[str, int]], rows: list[list[str]], width: int | None = None,
                 wrap: tuple[str, ...] = ()) -> Table:
    """A table that fits `width` (the console's) without cutting a cell: the columns are
    (name, rank); rank 0 is never dropped, and the highest ranks go first until the rest
    fit. Columns named in `wrap` fold their text (at least 12 wide); the others never
    wrap nor shorten, so ids and addresses stay whole."""
    width = width or console.width
    need = {name: max([len(name)] + [len(Text.from_markup(r[i]).plain) for r in rows])
            for i, (name, _) in enumerate(columns)}
    keep = [c for c in columns]

    def total() -> int:  # each cell is padded by one space on each side, with a rule between
        return sum(min(need[n], 12) if n in wrap else need[n] for n, _ in keep) + 3 * len(keep) - 1
    for name, rank in sorted(columns, key=lambda c: -c[1]):
        if total() <= width or rank == 0:
            break
        keep.remove((name, rank))
    t = Table(show_edge=False, header_style="bold")
    for name, _ in keep:
        if name in wrap:
            t.add_column(name, overflow="fold", min_width=min(need[name], 12))
        else:
            t.add_column(name, no_wrap=True, min_width=need[name])
    idx = [i for i, c in enumerate(columns) if c in keep]
    for r in rows:
        t.add_row(*(r[i] for i in idx))
    return t


# which columns go first when the console is narrow (0: never)
TASK_COLUMNS = [("ID", 0), ("NAME", 4), ("STATE", 0), ("ATTEMPT", 6), ("NODE", 1), ("EXIT", 2),
                ("TOOK", 5), ("SUBMITTED", 7), ("COMMAND", 3)]


NODE_COLUMNS = [("NODE", 0), ("HOST", 5), ("PID", 7), ("API", 0), ("TYPE", 8), ("CPUS free/total", 1),
                ("MEMORY free/total", 3), ("SLOTS free/total", 2), ("RUNNING", 4), ("HEARTBEAT", 6)]


def tasks_table(records, width: int | None = None) -> Table:
    rows = [[r.id, r.spec.name or "", state_text(r.state), str(r.attempt), r.node or "-",
             exit_short(r.last),
             duration(r), ago(r.submitted_at), escape(r.spec.display()[:80])] for r in records]
    return fitted_table(TASK_COLUMNS, rows, width, wrap=("COMMAND",))
