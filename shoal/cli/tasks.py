"""Task verbs: submit, status, ls, logs, cancel, wait."""
from __future__ import annotations

import sys
import warnings
from typing import List, Optional

import typer

from ..errors import InvalidSpec, LogIncomplete, UnplaceableWarning
from ..model import TaskState
from .common import client_for
from .output import Output, console, err_console, exit_text, print_json, rss_text, state_text, tasks_table, ago

ADDRESS = typer.Option(None, "--address", envvar="SHOAL_ADDRESS", help="Any node's API URL.")
OUTPUT = typer.Option(Output.table, "--output", "-o", help="table or json.")


def spec_fields(env: list[str], cwd, stdin, cpus, memory, disk, gpus, label, priority, retries,
                node_loss_retries, backoff, timeout, name, team, job, after) -> dict:
    """TaskSpec fields from CLI options (only those given, so defaults stay the server's)."""
    fields: dict = {}
    if env:
        pairs = {}
        bad = [e for e in env if "=" not in e]
        if bad:
            raise InvalidSpec([f"--env: {b!r} is not NAME=VALUE" for b in bad])
        for e in env:
            k, v = e.split("=", 1)
            pairs[k] = v
        fields["env"] = pairs
    for key, value in dict(cwd=cwd, stdin=stdin, cpus=cpus, memory=memory, disk=disk, gpus=gpus,
                           priority=priority, retries=retries, node_loss_retries=node_loss_retries,
                           backoff=backoff, timeout=timeout, name=name, team=team, job=job).items():
        if value is not None:
            fields[key] = value
    if label:
        fields["labels"] = list(label)
    if after:
        fields["depends_on"] = [a for item in after for a in item.split(",") if a]
    return fields


def task_options(f):
    """The TaskSpec options shared by submit and map."""
    import functools
    import inspect

    opts = {
        "env": (List[str], typer.Option([], "--env", "-e", help="NAME=VALUE, repeatable.")),
        "cwd": (Optional[str], typer.Option(None, help="Working directory on the node; a relative one is taken "
                                            "from here. The task fails if the node lacks it "
                                            "[default: the directory you run this in].")),
        "stdin": (Optional[str], typer.Option(None, help="File on the node fed to stdin.")),
        "cpus": (Optional[float], typer.Option(None, help="CPUs the task needs [default: 1].")),
        "memory": (Optional[str], typer.Option(None, help="Memory it needs and is limited to: 512M, 2G.")),
        "disk": (Optional[str], typer.Option(None, help="Disk it needs: 10G.")),
        "gpus": (Optional[int], typer.Option(None, help="GPUs it needs.")),
        "label": (List[str], typer.Option([], "--label", "-l", help="Label the node must have (key or key=value), repeatable.")),
        "priority": (Optional[int], typer.Option(None, help="-999..999, higher runs first [default: 0].")),
        "retries": (Optional[int], typer.Option(None, help="Times to retry a failed attempt [default: 0].")),
        "node_loss_retries": (Optional[int], typer.Option(
            None, help="Times to run it again after its node died or lost the cluster (these do not use up "
                       "--retries) [default: the cluster's, 3].")),
        "backoff": (Optional[float], typer.Option(None, help="Seconds before the first retry, doubling [default: 1].")),
        "timeout": (Optional[float], typer.Option(None, help="Seconds before an attempt is killed.")),
        "name": (Optional[str], typer.Option(None, help="A name to find it by.")),
        "team": (Optional[str], typer.Option(None, help="Team charged for it [default: default].")),
        "job": (Optional[str], typer.Option(None, help="Job id to group it with.")),
        "after": (List[str], typer.Option([], "--after", help="Run only after this task succeeded (id; repeatable).")),
    }
    sig = inspect.signature(f)
    params = [p for p in sig.parameters.values() if p.name != "spec"]
    extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, annotation=t, default=d)
             for k, (t, d) in opts.items()]

    @functools.wraps(f)
    def wrapper(*args, **kw):
        spec = spec_fields(*(kw.pop(k) for k in opts))
        return f(*args, spec=spec, **kw)
    wrapper.__signature__ = sig.replace(parameters=[*params, *extra])
    return wrapper


def register(app: typer.Typer) -> None:

    @app.command(context_settings={"allow_interspersed_args": False})
    @task_options
    def submit(command: List[str] = typer.Argument(..., help="The command; put it after `--`. "
                                                   "One argument is run by the shell, several as argv."),
               wait: bool = typer.Option(False, "--wait", "-w", help="Wait for it, print its output, exit with its exit code."),
               address: Optional[str] = ADDRESS, output: Output = OUTPUT, spec: dict = None):
        """Submit one task and print its id.

        [bold]shoal submit -- python scrape.py a[/]  (argv)
        [bold]shoal submit 'sort big.txt | uniq -c > counts'[/]  (one argument: a shell string)
        [bold]shoal submit --wait --memory 2G --retries 2 -- ./train.sh[/]

        It runs in the directory you submit it from (or --cwd); if the node that runs it
        lacks that directory, the task fails and says so.
        """
        cmd = command[0] if len(command) == 1 else list(command)
        with client_for(address, embedded=wait) as c:
            with warnings.catch_warnings(record=True) as caught:   # accepted, but no node fits it
                warnings.simplefilter("always", UnplaceableWarning)
                rec = c.submit(cmd, **spec)
            for w in (w for w in caught if w.category is UnplaceableWarning):
                err_console.print(f"Warning: {w.message}", style="yellow", markup=False, highlight=False)
            if not wait:
                if output == Output.json:
                    print_json(rec.summary())
                else:
                    print(rec.id)
                return
            rec = c.wait(rec.id)
            _print_output(c, rec)
        if output == Output.json:
            print_json(rec.summary())
        elif rec.state != TaskState.succeeded:
            print(f"task {rec.id} {rec.state.value}: {rec.reason_text()}", file=sys.stderr)
        raise typer.Exit(_exit_code(rec))

    @app.command()
    def status(task_id: str = typer.Argument(..., help="Task id."), address: Optional[str] = ADDRESS,
               output: Output = OUTPUT):
        """Everything about one task: state, attempts, resources, output tails."""
        with client_for(address) as c:
            rec = c.get(task_id)
        if output == Output.json:
            print_json(rec.summary())
            return
        console.print(f"[bold]{rec.id}[/] {rec.spec.name or ''}  {state_text(rec.state)}"
                      + (f"  ({rec.reason})" if rec.reason else ""))
        console.print(f"  command   {rec.spec.display()}", markup=False, highlight=False)
        if rec.progress:
            p = rec.progress
            console.print(f"  progress  {p['fraction'] * 100:.0f}% {p.get('message', '')} ({ago(p.get('at'))})",
                          markup=False, highlight=False)
        console.print(f"  submitted {ago(rec.submitted_at)}   team {rec.spec.team}   job {rec.spec.job or '-'}"
                      f"   priority {rec.spec.priority}   retries {rec.spec.retries}")
        for a in rec.attempts:
            took = f"{a.finished_at - a.started_at:.2f}s" if a.finished_at and a.started_at else "running"
            ended = "" if a.state == TaskState.running else f"{exit_text(a)}, "
            console.print(f"  attempt {a.n} on {a.node}: {a.state.value}, {ended}{took}, "
                          f"cpu {a.cpu_s or 0:.2f}s, max rss {rss_text(a.max_rss_bytes)}"
                          + (f" - {a.reason}" if a.reason else ""), markup=False, highlight=False)
        for label, text in (("stdout", rec.stdout_tail), ("stderr", rec.stderr_tail)):
            if text:
                console.print(f"  --- {label} (last {len(text.encode())} bytes) ---")
                console.print(text.rstrip("\n"), markup=False, highlight=False)

    @app.command("ls")
    def ls(state: Optional[TaskState] = typer.Option(None, help="Only tasks in this state."),
           name: Optional[str] = None, job: Optional[str] = None, team: Optional[str] = None,
           node: Optional[str] = None,
           limit: int = typer.Option(50, callback=_in_range("--limit", 1, 10000),
                                     help="How many (newest first), 1 to 10000."),
           before: Optional[str] = typer.Option(None, help="Page: only tasks older than this id."),
           address: Optional[str] = ADDRESS, output: Output = OUTPUT):
        """List tasks, newest first."""
        with client_for(address) as c:
            recs = c.list(state=state.value if state else None, name=name, job=job, team=team, node=node,
                          limit=limit, before=before)
        if output == Output.json:
            print_json([r.summary() for r in recs])
        else:
            console.print(tasks_table(recs))

    @app.command()
    def logs(task_id: str = typer.Argument(..., help="Task id."),
             follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the task ends."),
             stderr: bool = typer.Option(False, "--stderr", help="Show stderr instead of stdout."),
             attempt: Optional[int] = typer.Option(None, help="Which attempt [default: the latest]."),
             address: Optional[str] = ADDRESS, output: Output = OUTPUT):
        """Print a task's output, from whichever node holds it.

        Exit status 3 when only the end of the log survives (the node that ran the
        attempt is gone with the full log): what is left is printed from its first whole
        line, and stderr says how much of how much. With [bold]-o json[/] one document:
        id, stream, attempt, text, complete, kept_bytes, total_bytes, lost.
        """
        stream = "stderr" if stderr else "stdout"
        parts: list[str] = []
        lost = None
        with client_for(address) as c:
            try:
                for chunk in c.logs(task_id, stream, follow, attempt):
                    if output == Output.json:
                        parts.append(chunk)
                    else:
                        sys.stdout.write(chunk)
                        sys.stdout.flush()
            except LogIncomplete as e:
                lost = e
        if output == Output.json:
            text = "".join(parts)
            print_json({"id": task_id, "stream": stream, "attempt": attempt, "text": text,
                        "complete": lost is None,
                        "kept_bytes": lost.kept_bytes if lost else len(text.encode()),
                        "total_bytes": lost.total_bytes if lost else len(text.encode()),
                        "lost": str(lost) if lost else None})
        elif lost is not None:
            err_console.print(f"Warning: {lost}", markup=False, highlight=False)
        if lost is not None:
            raise typer.Exit(LOG_INCOMPLETE)

    @app.command()
    def cancel(task_ids: List[str] = typer.Argument(..., help="Task ids."), address: Optional[str] = ADDRESS,
               output: Output = OUTPUT):
        """Cancel tasks: queued ones at once, running ones by killing their process group."""
        out = []
        with client_for(address) as c:
            for tid in task_ids:
                rec = c.cancel(tid)
                out.append(rec.summary())
                if output == Output.table:
                    print(f"{tid}: {'cancelled' if rec.state == TaskState.cancelled else 'cancelling'}")
        if output == Output.json:
            print_json(out)

    @app.command()
    def wait(task_ids: List[str] = typer.Argument(..., help="Task ids."),
             timeout: Optional[float] = typer.Option(None, help="Give up after this many seconds "
                                                     f"(exit status {WAIT_TIMED_OUT}) [default: no limit]."),
             address: Optional[str] = ADDRESS, output: Output = OUTPUT):
        """Wait until the tasks end. Exits 0 if all succeeded, else the first failure's exit
        code (or 1); 124 (as timeout(1) does) when --timeout passed first."""
        with client_for(address) as c:
            try:
                recs = c.wait(list(task_ids), timeout=timeout)
            except TimeoutError:
                left = [r for r in (c.get(t) for t in task_ids[:20]) if not r.is_final]
                say = ", ".join(f"{r.id} is {r.state.value}" for r in left[:5])
                print(f"Error: timed out after {timeout:g}s before all {len(task_ids)} task(s) ended"
                      + (f": {say}" if say else "") + ("; ..." if len(task_ids) > 5 else ""), file=sys.stderr)
                raise typer.Exit(WAIT_TIMED_OUT) from None
        if output == Output.json:
            print_json([r.summary() for r in recs])
        else:
            console.print(tasks_table(recs))
        bad = [r for r in recs if r.state != TaskState.succeeded]
        raise typer.Exit(_exit_code(bad[0]) if bad else 0)


WAIT_TIMED_OUT = 124   # as timeout(1)
LOG_INCOMPLETE = 3     # `logs`: only the end of the log survives


def _in_range(name: str, low: int, high: int):
    def check(value: int) -> int:
        if not low <= value <= high:
            raise typer.BadParameter(f"{value} is out of range: use {low} to {high}", param_hint=f"'{name}'")
        return value
    return check


def _exit_code(rec) -> int:
    if rec.state == TaskState.succeeded:
        return 0
    code = rec.exit_code
    return code if code not in (None, 0) else 1


def _print_output(c, rec) -> None:
    """The task's stdout and stderr, in full (from the node if the tail is not all of it)."""
    for stream, tail, size, dest in (("stdout", rec.stdout_tail, rec.stdout_bytes, sys.stdout),
                                     ("stderr", rec.stderr_tail, rec.stderr_bytes, sys.stderr)):
        if size and len(tail.encode()) < size:
            for chunk in c.logs(rec.id, stream):
                dest.write(chunk)
        else:
            dest.write(tail)
        dest.flush()
