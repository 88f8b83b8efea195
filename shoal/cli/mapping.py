"""`shoal map`: GNU parallel on a cluster. One task per input; outputs as they finish
(or in input order with -k); --joblog, --halt, --retries like parallel."""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import InvalidSpec
from ..client.template import as_command, combine, fill
from ..model import TaskState, new_ids
from .common import client_for
from .output import Output, err_console, print_json
from .tasks import ADDRESS, task_options


@dataclass(frozen=True)
class Halt:
    when: str        # "soon" (start nothing new) or "now" (also kill what runs)
    fails: int = 0   # absolute count, or
    percent: float = 0.0

    def reached(self, failed: int, done: int, total: int) -> bool:
        if self.percent:
            return done > 0 and failed * 100.0 / total >= self.percent and failed > 0
        return failed >= self.fails


def parse_halt(text: str | None) -> Halt | None:
    if not text or text == "never":
        return None
    m = re.fullmatch(r"(soon|now),(?:fail=)?(\d+)(%?)", text.strip())
    if not m:
        raise InvalidSpec([f"--halt: {text!r} is not a halt rule (use soon,fail=1 or now,fail=10%)"])
    if m.group(3):
        return Halt(m.group(1), percent=float(m.group(2)))
    return Halt(m.group(1), fails=max(1, int(m.group(2))))


def parse_sources(args: list[str]) -> tuple[str, list[list[str]]]:
    """Split `TEMPLATE ::: a b ::: c d :::: file` into the template and input sources."""
    if not args:
        raise InvalidSpec(["command: missing (e.g. shoal map 'gzip -k {}' ::: a.log b.log)"])
    seps = (":::", "::::")
    i = next((k for k, a in enumerate(args) if a in seps), len(args))
    template = " ".join(args[:i])
    if not template:
        raise InvalidSpec(["command: missing before ::: (e.g. shoal map 'echo {}' ::: a b)"])
    sources: list[list[str]] = []
    while i < len(args):
        sep = args[i]
        j = next((k for k in range(i + 1, len(args)) if args[k] in seps), len(args))
        items = args[i + 1:j]
        if sep == ":::":
            sources.append(items)
        else:
            for path in items:
                try:
                    with open(path) as f:
                        sources.append([line.rstrip("\n") for line in f if line.strip()])
                except OSError as e:
                    raise InvalidSpec([f"::::: cannot read input file {path!r}: {e.strerror}"]) from None
        i = j
    if not sources:
        if sys.stdin.isatty():
            raise InvalidSpec(["inputs: none given (use ::: a b c, :::: FILE, or pipe lines to stdin)"])
        sources = [[line.rstrip("\n") for line in sys.stdin if line.strip()]]
    return template, sources


def register(app: typer.Typer) -> None:

    @app.command("map", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
    @task_options
    def map_(args: List[str] = typer.Argument(None, metavar="COMMAND ::: INPUTS...",
                                              help="Command template, then ::: inputs or :::: files."),
             keep_order: bool = typer.Option(False, "--keep-order", "-k", help="Print outputs in input order."),
             joblog: Optional[str] = typer.Option(None, help="Write a GNU parallel style job log here."),
             halt: Optional[str] = typer.Option(None, help="soon,fail=N or now,fail=N (or N%): stop after failures."),
             progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                                     help="Progress bar [default: on a terminal]."),
             dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands, run nothing."),
             address: Optional[str] = ADDRESS, output: Output = typer.Option(Output.table, "--output", "-o"),
             spec: dict = None):
        """Run a command once per input, like GNU parallel, across the cluster.

        [bold]shoal map 'gzip -k {}' ::: data/*.log[/]
        [bold]shoal map -k 'echo {1}-{2}' ::: a b ::: 1 2[/]     (every combination)
        [bold]shoal map 'wc -l' :::: files.txt[/]                 (input appended when no {})
        [bold]find . -name '*.csv' | shoal map 'python load.py {}'[/]

        Placeholders: {} input, {1} {2} n-th source, {.} no extension, {/} basename,
        {//} dirname, {/.} basename without extension, {#} job number. Exit status: the
        number of failed tasks (101 for more than 100), as parallel does.
        """
        template, sources = parse_sources(list(args or []))
        halt_rule = parse_halt(halt)
        combos = combine(sources)
        commands = [fill(template, a, i + 1) for i, a in enumerate(combos)]
        if dry_run:
            print("\n".join(commands))
            return
        if not commands:
            return
        job = spec.pop("job", None) or new_ids(1, prefix="j")[0]
        show_bar = progress if progress is not None else sys.stderr.isatty()
        with client_for(address, embedded=True) as c:
            failed = _run(c, commands, combos, spec, job, keep_order, joblog, halt_rule, show_bar, output)
        raise typer.Exit(min(failed, 101))


def _run(c, commands, combos, spec, job, keep_order, joblog, halt, show_bar, output) -> int:
    t0 = time.time()
    ids: list[str] = []
    index: dict[str, int] = {}

    def submitted(chunk_ids):
        for tid in chunk_ids:
            index[tid] = len(ids)
            ids.append(tid)
    done: dict[int, object] = {}
    next_print = 0
    failed = 0
    halted = False
    log = open(joblog, "w") if joblog else None
    if log:
        log.write("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n")
    bar = Progress(TextColumn("[bold]shoal map"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[failed]} failed"), TimeRemainingColumn(),
                   console=err_console, transient=False, disable=not show_bar)
    results = []
    try:
        with bar:
            pt = bar.add_task("map", total=len(commands), failed=0)
            for rec in c.run_many([dict(spec, command=as_command(cmd)) for cmd in commands], job=job,
                                  on_submitted=submitted, keep_submitting=lambda: not halted):
                i = index[rec.id]
                done[i] = rec
                ok = rec.state == TaskState.succeeded
                failed += rec.state == TaskState.failed  # cancelled by --halt is not a failure
                if log:
                    _joblog_line(log, i + 1, rec, commands[i])
                if output == Output.json:
                    results.append(rec)
                elif keep_order:
                    while next_print in done:
                        _emit(c, done[next_print])
                        next_print += 1
                else:
                    _emit(c, rec)
                bar.update(pt, advance=1, failed=failed)
                if halt and not halted and not ok and halt.reached(failed, len(done), len(commands)):
                    halted = True
                    _halt(c, ids, done, index, halt)
                    err_console.print(f"shoal map: halting after {failed} failure(s) ({halt.when}); "
                                      "unstarted tasks cancelled" + (", running ones killed" if halt.when == "now" else ""))
    except KeyboardInterrupt:
        _halt(c, ids, done, index, Halt("now"))
        raise
    finally:
        if log:
            log.close()
    if output == Output.json:
        results.sort(key=lambda r: index[r.id])
        print_json({"job": job, "seconds": round(time.time() - t0, 3),
                    "tasks": [r.summary() for r in results]})
    return failed


def _emit(c, rec) -> None:
    from .tasks import _print_output
    _print_output(c, rec)


def _halt(c, ids, done, index, halt: Halt) -> None:
    """Cancel what has not ended: what has not started (soon; a node may have claimed
    some ahead, so only it knows which), or also what runs (now)."""
    pending = [tid for tid in ids if index[tid] not in done]
    for tid in pending:
        try:
            c.cancel(tid, unstarted_only=halt.when != "now")
        except Exception:
            pass  # it ended meanwhile


def _joblog_line(log, seq: int, rec, command: str) -> None:
    a = rec.last
    start = a.started_at if a and a.started_at else rec.submitted_at
    runtime = (a.finished_at - a.started_at) if a and a.finished_at and a.started_at else 0.0
    exitval = a.exit_code if a and a.exit_code is not None else (-1 if rec.state != TaskState.succeeded else 0)
    sig = a.signal if a and a.signal else 0
    log.write(f"{seq}\t{rec.node or ':'}\t{start:.3f}\t{runtime:.3f}\t0\t{rec.stdout_bytes}\t{exitval}\t{sig}\t"
              f"{command}\n")
    log.flush()
