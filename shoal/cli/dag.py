r"""`shoal dag`: run a DAG of commands described in YAML (like HTCondor's DAGMan).

    shoal dag validate pipeline.yaml     # check it; submit nothing
    shoal dag run pipeline.yaml          # submit every step, show them live until all end
    shoal dag status nightly-3k9f2a      # each step's state, attempt, node, exit code, time

The file format is described in shoal/logic/dagfile.py (and `shoal dag run --help`).
A run is one job, `<name>-<6 chars>`; each step is one task named after the step, with
`depends_on` set to the task ids of its `after` steps. Steps are submitted layer by
layer in topological order (a layer's steps only wait on earlier layers), so the first
steps start while the rest are being submitted; if submitting fails part way, the steps
already submitted are cancelled. Exit status: 0 when every step succeeded, 1 when one
did not (or on an error), 2 when the file is not a valid DAG (nothing is submitted).
"""
from __future__ import annotations

import os
import re
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..client.dag import load_dag
from ..errors import InvalidSpec, NotFound
from ..cluster.local import LocalCluster
from ..model import FINAL_STATES, TaskRecord, TaskState
from ..settings import shoal_home
from .common import client_for
from .output import Output, console, print_json, state_text
from .tasks import ADDRESS, OUTPUT

FORMAT_HELP = r"""
[bold]The file[/]:

    name: nightly              # job id prefix: each run is the job nightly-<6 chars>
    defaults:                  # task fields for every step that does not set them
      retries: 1
      cpus: 1
      cwd: .                   # a relative cwd is taken from this file's directory
    steps:
      fetch:
        command: seq 1 100 > numbers.txt     # a string runs under /bin/sh -c
      clean:
        command: \["sort", "-rn", "-o", "sorted.txt", "numbers.txt"]   # a list is an argv
        after: \[fetch]         # steps that must succeed first (a name or a list)
        memory: 2G
      report:
        command: wc -l sorted.txt
        after: \[clean]
        allow_failed_deps: false   # true: run even when a step in after failed

A step takes [bold]after[/] and any task field: command (required, here or in
defaults), env (merged with defaults.env), cwd, stdin, cpus, memory, disk, gpus,
labels, priority, retries, backoff, timeout, team, allow_failed_deps. name, job and
depends_on are set by the DAG. Every problem is reported at once, with its line.
"""

if TYPE_CHECKING:
    from ..client.dag import Dag

_TASK_ID = re.compile(r"\bt[0-9a-z]{18}\b")

app = typer.Typer(name="dag", no_args_is_help=True, rich_markup_mode="rich",
                  help="Run a DAG of commands described in YAML: steps, and which run after which.")


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="dag")


def _load_or_exit(path: Path, output: Output) -> Dag:
    try:
        return load_dag(path)
    except InvalidSpec as e:
        if output == Output.json:
            print_json({"file": str(path), "ok": False, "problems": e.problems})
        n = len(e.problems)
        print(f"Error: {path} is not a valid DAG ({n} problem{'s' if n > 1 else ''}; nothing was submitted):",
              file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        raise typer.Exit(2) from None


# -- rows and tables shared by run and status ---------------------------------------------

def _named(text: str | None, names: dict[str, str]) -> str | None:
    """`text` with task ids of this DAG replaced by their step names."""
    return _TASK_ID.sub(lambda m: names.get(m.group(0), m.group(0)), text) if text else text


def _row(rec: TaskRecord, names: dict[str, str]) -> dict:
    last = rec.last
    took = (last.finished_at or time.time()) - last.started_at if last and last.started_at else None
    bad = rec.is_final and rec.state != TaskState.succeeded
    return {"step": rec.spec.name or rec.id, "id": rec.id, "state": rec.state.value, "attempt": rec.attempt,
            "node": rec.node, "exit_code": rec.exit_code, "started_at": rec.started_at,
            "finished_at": rec.finished_at, "duration_s": round(took, 3) if took is not None else None,
            "after": [names.get(d, d) for d in rec.spec.depends_on],
            "reason": _named(rec.reason_text(), names) if bad else None}


def _overall(states: list[str]) -> str:
    """running until every step ended; then succeeded, or failed if any step did not."""
    if any(s not in {f.value for f in FINAL_STATES} for s in states):
        return "running"
    return "succeeded" if all(s == "succeeded" for s in states) else "failed"


def _counts(states: list[str]) -> str:
    c: dict[str, int] = {}
    for s in states:
        c[s] = c.get(s, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in c.items())


def _table(rows: list[dict], title: str | None = None, ids: bool = True) -> Table:
    """One line per step; the AFTER, TASK ID and NOTE columns only when they say something."""
    cols = ["STEP", "STATE", "ATTEMPT", "NODE", "EXIT", "TOOK"]
    cols += ["AFTER"] if any(r.get("after") for r in rows) else []
    cols += ["TASK ID"] if ids else []
    cols += ["NOTE"] if any(r.get("reason") for r in rows) else []
    t = Table(show_edge=False, header_style="bold", title=title, title_justify="left")
    for col in cols:
        t.add_column(col, no_wrap=col not in ("AFTER", "NOTE"), overflow="fold")
    for r in rows:
        cells = {"STEP": r["step"], "ATTEMPT": str(r.get("attempt") or "-"), "NODE": r.get("node") or "-",
                 "STATE": state_text(TaskState(r["state"])) if r["state"] in TaskState.__members__
                 else f"[dim]{r['state']}[/]",
                 "EXIT": "" if r.get("exit_code") is None else str(r["exit_code"]),
                 "TOOK": "-" if r.get("duration_s") is None else f"{r['duration_s']:.2f}s",
                 "AFTER": ", ".join(r.get("after") or []), "TASK ID": r["id"], "NOTE": r.get("reason") or ""}
        t.add_row(*(cells[c] for c in cols))
    return t


def _print_table(t: Table) -> None:
    """A table, at full width when writing to a file or pipe (no terminal to fit)."""
    out = console if console.is_terminal else Console(width=max(console.width, 160), highlight=False)
    out.print(t)


class Board:
    """The live view of a run: final records as they arrive, the rest derived from them."""

    def __init__(self, dag: Dag, ids: dict[str, str], job: str):
        self.dag, self.ids, self.job = dag, ids, job
        self.names = {tid: name for name, tid in ids.items()}
        self.done: dict[str, TaskRecord] = {}
        self.t0 = time.monotonic()

    def update(self, rec: TaskRecord) -> str:
        name = self.names.get(rec.id, rec.spec.name or rec.id)
        self.done[name] = rec
        return name

    def rows(self) -> list[dict]:
        out = []
        for step in self.dag.steps.values():
            if step.name in self.done:
                out.append(_row(self.done[step.name], self.names))
                continue
            ready = all(a in self.done for a in step.after)
            out.append({"step": step.name, "id": self.ids[step.name], "after": list(step.after),
                        "state": "queued/running" if ready else "waiting"})
        return out

    def __rich__(self) -> Table:
        title = (f"[bold]{self.job}[/]: {len(self.done)}/{len(self.ids)} steps ended, "
                 f"{time.monotonic() - self.t0:.0f}s")
        return _table(self.rows(), title, ids=False)  # the ids were printed at submit


# -- commands ---------------------------------------------------------------------------------

@app.command("validate")
def validate(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="The DAG file (YAML)."),
             output: Output = OUTPUT):
    """Check a DAG file and print OK, or every problem with its line (exit 2). Submits nothing."""
    dag = _load_or_exit(file, output)
    if output == Output.json:
        print_json({"file": str(file), "ok": True, "name": dag.name, "order": dag.order,
                    "layers": [[s.name for s in layer] for layer in dag.layers()]})
        return
    print(f"OK: {file}: {len(dag.steps)} step{'s' if len(dag.steps) != 1 else ''} "
          f"in {len(dag.layers())} layer(s), job prefix {dag.name!r}; order: {', '.join(dag.order)}")


@app.command("run", help="Submit every step of a DAG file as one job, then (by default) show each "
                         "step's state live until all have ended.\n\n"
                         "[bold]shoal dag run pipeline.yaml[/]\n"
                         "[bold]shoal dag run --no-wait -o json pipeline.yaml[/]   (submit, print ids, return)\n\n"
                         "Exit status: 0 when every step succeeded, 1 when one did not, 2 when the file is "
                         "not valid (then nothing is submitted). With no cluster to use (no --address, "
                         "$SHOAL_ADDRESS or `shoal up`), --wait runs the DAG on a local cluster started for "
                         "it (and stopped after); otherwise Ctrl-C stops watching, not the DAG.\n" + FORMAT_HELP)
def run(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="The DAG file (YAML)."),
        wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for every step and show them live."),
        address: Optional[str] = ADDRESS, output: Output = OUTPUT):
    dag = _load_or_exit(file, output)
    with client_for(address, embedded=wait) as c:
        # steps go in layer by layer; if that stops part way, those already in are cancelled
        started = c.run_dag(dag, on_stopped=lambda note: print(note, file=sys.stderr))
        job, ids = started.job, started.ids
        if output == Output.table:
            console.print(f"job [bold]{job}[/]", highlight=False)
            t = Table(show_edge=False, header_style="bold")
            for col in ("STEP", "TASK ID", "AFTER"):
                t.add_column(col, no_wrap=col != "AFTER")
            for s in dag.steps.values():
                t.add_row(s.name, ids[s.name], ", ".join(s.after))
            _print_table(t)
        if not wait:
            if output == Output.json:
                print_json({"job": job, "steps": [{"step": s.name, "id": ids[s.name], "after": list(s.after)}
                                                  for s in dag.steps.values()]})
            return
        board = Board(dag, ids, job)
        try:
            _follow(c, board, output)
        except KeyboardInterrupt:
            print(f"\nstopped watching job {job}; "
                  + ("its local cluster is stopped with it" if _embedded(address)
                     else f"it keeps running: shoal dag status {job}"), file=sys.stderr)
            raise typer.Exit(130) from None
    rows = board.rows()
    ok = all(r["state"] == "succeeded" for r in rows)
    if output == Output.json:
        print_json({"job": job, "state": _overall([r["state"] for r in rows]), "steps": rows})
    else:
        for r in rows:
            if r["state"] == "failed":
                print(f"step {r['step']} failed: {r['reason']} (see: shoal logs --stderr {r['id']})",
                      file=sys.stderr)
        print(f"job {job}: {_counts([r['state'] for r in rows])}", file=sys.stderr)
    raise typer.Exit(0 if ok else 1)


def _embedded(address: str | None) -> bool:
    """Whether client_for(address, embedded=True) started a cluster just for this command."""
    return not (address or os.environ.get("SHOAL_ADDRESS") or LocalCluster(shoal_home()).running())


def _follow(c, board: Board, output: Output) -> None:
    """Update the board from as_finished (etcd watches, no polling) until every step ended."""
    live = output == Output.table and console.is_terminal
    view = Live(board, console=console, refresh_per_second=4) if live else nullcontext()
    with view:
        for rec in c.as_finished(list(board.ids.values())):
            name = board.update(rec)
            if output == Output.table and not live:
                r = _row(rec, board.names)
                took = "" if r["duration_s"] is None else f", {r['duration_s']:.2f}s"
                where = f" on {r['node']}" if r["node"] else ""
                why = f": {r['reason']}" if r["reason"] else ""
                console.print(f"{name}: {rec.state.value}{where}{took}{why}", markup=False, highlight=False)
    if output == Output.table and not live:
        _print_table(board.__rich__())


@app.command("status")
def status(job: str = typer.Argument(..., help="The job id `shoal dag run` printed (name-suffix)."),
           address: Optional[str] = ADDRESS, output: Output = OUTPUT):
    """Each step of a DAG run: state, attempt, node, exit code, time taken, why it failed.

    Steps are listed in the order they were submitted (topological); task ids in the
    reasons are replaced by step names. Also: --output json."""
    with client_for(address) as c:
        recs = c.list(job=job, limit=10000)
    if not recs:
        raise NotFound(f"no tasks in job {job!r} (`shoal dag run` prints the job id, such as nightly-3k9f2a)")
    recs.sort(key=lambda r: r.id)  # ids are time-ordered: the order they were submitted in
    names = {r.id: r.spec.name or r.id for r in recs}
    rows = [_row(r, names) for r in recs]
    states = [r["state"] for r in rows]
    if output == Output.json:
        print_json({"job": job, "state": _overall(states), "steps": rows})
        return
    _print_table(_table(rows, f"[bold]{job}[/]: {_overall(states)} ({_counts(states)})"))
