"""`shoal map`: GNU parallel on a cluster. One task per input (or per -N inputs, or per
--pipe block); outputs as they finish (or in input order with -k); --joblog, --halt,
--retries, --tag, --results, -j like parallel."""
from __future__ import annotations

import base64
import functools
import heapq
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import InvalidSpec, TooLarge
from ..client.template import (MAX_INPUT_BYTES, as_command, bash_functions, combine, cut_blocks, fill,
                               group_args, parse_block, pipe_window, results_path, split_columns, tag_lines, task_env,
                               uses_slot)
from ..model import FINAL_STATES, TaskRecord, TaskState, new_ids
from .common import client_for
from .output import Output, err_console, print_json
from .tasks import ADDRESS, _print_output, task_options

_FINAL = frozenset(s.value for s in FINAL_STATES)


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


_SEPS = (":::", "::::", ":::+", "::::+")


def parse_sources(args: list[str], pipe: bool = False) -> tuple[str, list[list[str]], list[bool]]:
    """Split `TEMPLATE ::: a b :::+ 1 2 :::: file` into the template, the input sources and
    which of them are linked to the one before (:::+, ::::+). Relative file names are
    read from the caller's directory."""
    if not args:
        raise InvalidSpec(["command: missing (e.g. shoal map 'gzip -k {}' ::: a.log b.log)"])
    i = next((k for k, a in enumerate(args) if a in _SEPS), len(args))
    template = " ".join(args[:i])
    if not template:
        raise InvalidSpec(["command: missing before ::: (e.g. shoal map 'echo {}' ::: a b)"])
    sources: list[list[str]] = []
    linked: list[bool] = []
    while i < len(args):
        sep = args[i]
        j = next((k for k in range(i + 1, len(args)) if args[k] in _SEPS), len(args))
        items = args[i + 1:j]
        if sep.startswith("::::"):
            for n, path in enumerate(items):
                try:
                    with open(path) as f:
                        sources.append([line.rstrip("\n") for line in f if line.strip()])
                except OSError as e:
                    raise InvalidSpec([f"::::: cannot read input file {path!r}: {e.strerror}"]) from None
                linked.append(sep.endswith("+") and n == 0)
        else:
            sources.append(items)
            linked.append(sep.endswith("+"))
        i = j
    if pipe:
        if sources:
            raise InvalidSpec(["--pipe: the input is stdin, cut into blocks; drop the ::: inputs"])
        return template, [], []
    if not sources:
        if sys.stdin.isatty():
            raise InvalidSpec(["inputs: none given (use ::: a b c, :::: FILE, or pipe lines to stdin)"])
        sources, linked = [[line.rstrip("\n") for line in sys.stdin if line.strip()]], [False]
    return template, sources, linked


@dataclass
class Jobs:
    """What each job of the map runs: its arguments, and its stdin block with --pipe."""
    template: str
    args: list[tuple[str, ...]]
    blocks: list[bytes] | None = None
    per_job: int = 0                    # -N, so {n} past the last job's arguments is empty
    functions: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.args)

    def command(self, i: int, slot: int) -> str:
        try:
            return fill(self.template, self.args[i], i + 1, slot=slot, max_args=self.per_job)
        except ValueError as e:
            raise InvalidSpec([f"command: {e}"]) from None

    def spec(self, base: dict, command: str, i: int) -> dict:
        spec = dict(base, command=as_command(command, self.functions))
        if self.blocks is not None:
            spec["input"] = base64.b64encode(self.blocks[i]).decode()
        return spec


def make_jobs(template: str, sources, linked, per_job, colsep, pipe, block, functions) -> Jobs:
    if pipe:
        try:
            size = parse_block(block or "32K")
        except ValueError as e:
            raise InvalidSpec([str(e)]) from None
        blocks = cut_blocks(sys.stdin.buffer.read(), size, per_job)
        big = [len(b) for b in blocks if len(b) > MAX_INPUT_BYTES]
        if big:
            raise TooLarge(f"--pipe: a block of {max(big):,} bytes is more than a task's input holds "
                           f"({MAX_INPUT_BYTES // 1024}K); use a smaller --block (or -N with fewer records), "
                           "or a record that long does not fit")
        return Jobs(template, [() for _ in blocks], blocks, functions=functions)
    combos = combine(sources, linked)
    if colsep is not None:
        try:
            combos = split_columns(combos, colsep)
        except ValueError as e:
            raise InvalidSpec([str(e)]) from None
    return Jobs(template, group_args(combos, per_job), per_job=per_job or 0, functions=functions)


def _env_names(f):
    """`--env NAME` (parallel's spelling) sends the caller's value of NAME; NAME=VALUE sets one."""
    @functools.wraps(f)
    def wrapper(*args, **kw):
        kw["env"] = [e if "=" in e else f"{e}={os.environ[e]}" for e in kw.get("env") or []
                     if "=" in e or e in os.environ]
        return f(*args, **kw)
    return wrapper


def register(app: typer.Typer) -> None:

    @app.command("map", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
    @_env_names
    @task_options
    def map_(args: List[str] = typer.Argument(None, metavar="COMMAND ::: INPUTS...",
                                              help="Command template, then ::: inputs or :::: files."),
             keep_order: bool = typer.Option(False, "--keep-order", "-k", help="Print outputs in input order."),
             jobs: Optional[int] = typer.Option(None, "--jobs", "-j", "-P", min=0,
                                                help="At most this many of this map's tasks unfinished at "
                                                     "once (0: no limit) [default: no limit]."),
             per_job: Optional[int] = typer.Option(None, "-N", "--max-replace-args", min=0,
                                                   help="Inputs per job ({1}..{N}); with --pipe, records per job."),
             colsep: Optional[str] = typer.Option(None, "--colsep", "-C",
                                                  help="Split each input into columns {1} {2} at this regex."),
             tag: bool = typer.Option(False, "--tag", help="Start each output line with the job's inputs and a tab."),
             pipe: bool = typer.Option(False, "--pipe", "--spreadstdin",
                                       help="Cut stdin into blocks of whole lines, one job's stdin each."),
             block: Optional[str] = typer.Option(None, "--block", "--block-size",
                                                 help="--pipe block size: 32K = 32768 bytes, 32k = 32000 "
                                                      f"[default: 32K, at most {MAX_INPUT_BYTES // 1024}K]."),
             results: Optional[str] = typer.Option(None, "--results", "--res",
                                                   help="Write each job's stdout, stderr and seq under "
                                                        "DIR/1/<input 1>/2/<input 2>/ instead of printing."),
             getenv: bool = typer.Option(True, "--getenv/--no-getenv",
                                         help="Send your exported variables, less host ones (PATH, HOME, "
                                              "SSH_*, ...)."),
             joblog: Optional[str] = typer.Option(None, help="Write a GNU parallel style job log here."),
             halt: Optional[str] = typer.Option(None, help="soon,fail=N or now,fail=N (or N%): stop after failures."),
             progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                                     help="Progress bar [default: on a terminal]."),
             dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands, run nothing."),
             will_cite: bool = typer.Option(False, "--will-cite", hidden=True),
             address: Optional[str] = ADDRESS, output: Output = typer.Option(Output.table, "--output", "-o"),
             spec: dict = None):
        """Run a command once per input, like GNU parallel, across the cluster.

        [bold]shoal map 'gzip -k {}' ::: data/*.log[/]
        [bold]shoal map -k 'echo {1}-{2}' ::: a b ::: 1 2[/]     (every combination)
        [bold]shoal map -k 'echo {1}-{2}' ::: a b :::+ 1 2[/]    (linked: a-1 b-2)
        [bold]shoal map 'wc -l' :::: files.txt[/]                 (input appended when no {})
        [bold]find . -name '*.csv' | shoal map 'python load.py {}'[/]
        [bold]seq 100000 | shoal map --pipe -N 1000 'paste -sd+ | bc'[/]

        Placeholders: {} input, {1} {2} n-th source (or column, or -N argument), {.} no
        extension, {/} basename, {//} dirname, {/.} basename without extension, {#} job
        number, {%} job slot (1..-j; without -j the cluster's slots). Tasks run in your
        current directory (--cwd to change it); a node without that directory fails the
        task and says so. Environment: your exported variables go with each task, less
        those that describe this machine or session (PATH, HOME, USER, SHELL, PWD, TERM*,
        SSH_*, XDG_*, DISPLAY, ...): add one with --env NAME, set one with --env
        NAME=VALUE, send only named ones with --no-getenv. --retries N runs a job at most
        N times, as parallel does. Exit status: the number of failed jobs (101 for more
        than 100), as parallel's; with --halt ...,fail=1 the failed job's own.
        """
        template, sources, linked = parse_sources(list(args or []), pipe)
        halt_rule = parse_halt(halt)
        try:
            env = task_env(dict(os.environ), dict(spec.pop("env", {})), getenv)
        except ValueError as e:
            raise InvalidSpec([str(e)]) from None
        if env:
            spec["env"] = env
        if spec.get("retries"):
            spec["retries"] = spec["retries"] - 1   # parallel's --retries N: N attempts in all
        work = make_jobs(template, sources, linked, per_job, colsep, pipe, block, bash_functions(env))
        if dry_run:
            print("\n".join(work.command(i, i % (jobs or 1) + 1) for i in range(len(work))))
            return
        if not len(work):
            return
        job = spec.pop("job", None) or new_ids(1, prefix="j")[0]
        show_bar = progress if progress is not None else sys.stderr.isatty()
        show = Show(keep_order, tag, results, output)
        with client_for(address, embedded=True) as c:
            window = jobs or None
            if work.blocks is not None:
                window = min(window or len(work), pipe_window(max(map(len, work.blocks))))
            if window is None and (uses_slot(template) or halt_rule is not None):
                # {%} numbers slots, and --halt must see a failure before the next job
                # starts: both take a window; the cluster's slots keep it as busy as before
                window = max(1, sum(int(n.get("slots", 1)) for n in c.nodes()))
            code = _run(c, work, spec, job, window, joblog, halt_rule, show_bar, show)
        raise typer.Exit(code)


@dataclass
class Show:
    """How finished jobs are shown: in input order or as they end, tagged, or as files."""
    keep_order: bool
    tag: bool
    results: str | None
    output: Output


@dataclass
class Progressing:
    """What the run has seen so far."""
    ids: list[str] = field(default_factory=list)
    ended: set = field(default_factory=set)
    halted: bool = False


def _run(c, work: Jobs, spec: dict, job: str, window: int | None, joblog, halt: Halt | None,
         show_bar: bool, show: Show) -> int:
    """Run every job; return the exit status parallel would."""
    t0 = time.time()
    seen = Progressing()
    commands: dict[int, str] = {}

    def spec_for(i: int, slot: int) -> dict:
        commands[i] = work.command(i, slot)
        return work.spec(spec, commands[i], i)

    done: dict[int, TaskRecord] = {}
    next_print = 0
    failed = 0
    halt_code = None
    log = open(joblog, "w") if joblog else None
    if log:
        log.write("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n")
    bar = Progress(TextColumn("[bold]shoal map"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[failed]} failed"), TimeRemainingColumn(),
                   console=err_console, transient=False, disable=not show_bar)
    results = []
    ended = (_windowed(c, spec_for, len(work), window, job, seen) if window
             else _all_at_once(c, spec_for, len(work), job, seen))
    try:
        with bar:
            pt = bar.add_task("map", total=len(work), failed=0)
            for i, rec in ended:
                done[i] = rec
                seen.ended.add(rec.id)
                ok = rec.state == TaskState.succeeded
                failed += rec.state == TaskState.failed  # cancelled by --halt is not a failure
                if log:
                    _joblog_line(log, i + 1, rec, commands[i])
                if show.output == Output.json:
                    results.append((i, rec))
                elif show.keep_order:
                    while next_print in done:
                        _emit(c, next_print, done[next_print], work, show)
                        next_print += 1
                else:
                    _emit(c, i, rec, work, show)
                bar.update(pt, advance=1, failed=failed)
                if halt and not seen.halted and not ok and halt.reached(failed, len(done), len(work)):
                    seen.halted = True
                    if halt.fails == 1:
                        halt_code = rec.exit_code or 1
                    _halt(c, seen, halt)
                    err_console.print(f"shoal map: halting after {failed} failure(s) ({halt.when}); "
                                      "no new job starts" + (", running ones killed" if halt.when == "now" else ""))
    except KeyboardInterrupt:
        _halt(c, seen, Halt("now"))
        raise
    finally:
        ended.close()
        if log:
            log.close()
    if show.output == Output.json:
        results.sort(key=lambda r: r[0])
        print_json({"job": job, "seconds": round(time.time() - t0, 3),
                    "tasks": [r.summary() for _, r in results]})
    return halt_code if halt_code is not None else min(failed, 101)


def _all_at_once(c, spec_for, n: int, job: str, seen: Progressing):
    """(input index, record) of each task as it ends; all submitted at once, in chunks."""
    index: dict[str, int] = {}

    def submitted(chunk_ids):
        for tid in chunk_ids:
            index[tid] = len(seen.ids)
            seen.ids.append(tid)
    for rec in c.run_many([spec_for(i, 1) for i in range(n)], job=job, on_submitted=submitted,
                          keep_submitting=lambda: not seen.halted):
        yield index[rec.id], rec


def _windowed(c, spec_for, n: int, window: int, job: str, seen: Progressing):
    """(input index, record) of each task as it ends, with at most `window` unfinished:
    the next ones are submitted only after one has ended (and not after a halt). Each
    takes the lowest free slot, {%}."""
    free = list(range(1, window + 1))
    open_: dict[str, tuple[int, int]] = {}   # id -> (index, slot)
    next_i = 0
    events = c.events(job=job)
    try:
        next(events)  # hello: the watch is in place, so no task can end unseen

        def top_up():
            nonlocal next_i
            batch = []
            while free and next_i < n and not seen.halted:
                batch.append((next_i, heapq.heappop(free)))
                next_i += 1
            if batch:
                ids = c.submit_many([spec_for(i, slot) for i, slot in batch], job=job)
                seen.ids.extend(ids)
                open_.update(zip(ids, batch))
        top_up()
        while open_:
            ev = next(events)
            if ev["type"] == "reset":  # the watch lost its place: read what it may have missed
                ended = [r for r in (c.get(tid) for tid in list(open_)) if r.is_final]
            elif ev["type"] == "task" and ev["task"]["id"] in open_ and ev["task"]["state"] in _FINAL:
                ended = [TaskRecord.model_validate(ev["task"])]
            else:
                continue
            for rec in ended:
                i, slot = open_.pop(rec.id)
                heapq.heappush(free, slot)
                yield i, rec
            top_up()
    finally:
        events.close()


def _emit(c, i: int, rec: TaskRecord, work: Jobs, show: Show) -> None:
    if show.results is None and not show.tag:
        _print_output(c, rec)
        return
    args = work.args[i] if work.blocks is None else (str(i + 1),)
    if show.results is not None:
        where = Path(results_path(show.results, args))
        where.mkdir(parents=True, exist_ok=True)
        (where / "seq").write_text(str(i + 1))
        for stream in ("stdout", "stderr"):
            (where / stream).write_text(_full_output(c, rec, stream))
        return
    label = " ".join(args)
    for stream, dest in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        dest.write(tag_lines(label, _full_output(c, rec, stream)))
        dest.flush()


def _full_output(c, rec: TaskRecord, stream: str) -> str:
    """A stream's whole text: the record's tail when that is all of it, else from the node."""
    tail, size = (rec.stdout_tail, rec.stdout_bytes) if stream == "stdout" else (rec.stderr_tail, rec.stderr_bytes)
    if size and len(tail.encode()) < size:
        return "".join(c.logs(rec.id, stream))
    return tail


def _halt(c, seen: Progressing, halt: Halt) -> None:
    """Cancel what has not ended: what has not started (soon; a node may have claimed
    some ahead, so only it knows which), or also what runs (now)."""
    for tid in seen.ids:
        if tid in seen.ended:
            continue
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
