"""`shoal flow`: run a dataflow from a YAML file, watch it, cancel it."""
from __future__ import annotations

import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import typer
from rich.live import Live
from rich.table import Table

from ..errors import FlowCancelled, FlowFailed, InvalidSpec
from ..client.flows import check, load_flow, require_runtime
from .common import client_for
from .output import Output, console, err_console, print_json, state_text

ADDRESS = typer.Option(None, "--address", envvar="SHOAL_ADDRESS", help="Any node's API URL.")
OUTPUT = typer.Option(Output.table, "--output", "-o", help="table or json.")

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich", help=(
    "Dataflows: stages of shell commands, Python functions or built-in operators (words, count, "
    "reduce, sort, top, distinct, join), joined by scatter / hash / broadcast / collect / merge_sorted "
    "edges. Data moves over direct TCP between the stage instances.\n\n"
    "[bold]shoal flow run examples/wordcount.yaml[/]   [bold]shoal flow run -d FILE[/] (detached)\n"
    "[bold]shoal flow status RUN[/] (-w: until it ends)   [bold]shoal flow cancel RUN[/]   [bold]shoal flow ls[/]"))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="flow")


def _print_problems(file: Path, problems: list[str], running: bool = True) -> None:
    err_console.print(f"{file}: {len(problems)} problem(s)" + ("; nothing was started" if running else ""),
                      highlight=False)
    for p in problems:
        print(f"  {p}", file=sys.stderr)


def _load(file: Path, running: bool = True):
    try:
        return load_flow(str(file))
    except InvalidSpec as e:
        _print_problems(file, e.problems, running)
        raise typer.Exit(2) from None


def _rate(inst: dict) -> float:
    took = max(1e-6, (inst.get("updated") or 0) - (inst.get("started") or 0))
    return inst.get("in", 0) / took if inst.get("started") else 0.0


def status_table(status: dict) -> Table:
    t = Table(show_edge=False, header_style="bold",
              title=f"flow {status.get('id')} · {status.get('state')} · attempt {status.get('attempt')}",
              title_justify="left")
    for col in ("STAGE", "INST", "STATE", "NODE", "IN", "OUT", "IN/S", "BAD"):
        t.add_column(col, justify="right" if col in ("IN", "OUT", "IN/S", "BAD", "INST") else "left", no_wrap=True)
    for stage in status.get("stages", []):
        for inst in stage["instances"]:
            t.add_row(stage["name"], str(inst["index"]), state_text(inst["state"]), inst.get("node") or "-",
                      f"{inst.get('in', 0):,}", f"{inst.get('out', 0):,}", f"{_rate(inst):,.0f}",
                      str(inst.get("bad", 0)))
    return t


@app.command("validate", help="Check a flow file and print its stages, without running anything: its "
                              "fields, its graph, and that each source matches files and no output "
                              "exists unless `overwrite: true`. Every problem is reported at once.\n\n"
                              "Exit status 2 when the file has problems (each printed, with its line "
                              "where known). With [bold]-o json[/]: file, ok, problems, stages.")
def validate(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="The flow file (YAML)."),
             output: Output = OUTPUT):
    problems: list[str] = []
    spec = plan = None
    try:
        spec, plan = load_flow(str(file))
    except InvalidSpec as e:
        problems = list(e.problems)
    if spec is not None:
        try:
            check(spec, None)  # the sources and sinks themselves: files that match, outputs that exist
        except InvalidSpec as e:
            problems += e.problems
    stages = [] if plan is None else [
        {"name": st.name, "parallelism": st.parallelism,
         "feed": ("read " + ", ".join(st.source.paths or ["-"])) if st.source else
         ", ".join(f"{e.edge}{'(' + ','.join(map(str, e.key)) + ')' if e.key else ''} from {e.source}"
                   for e in st.spec.edges),
         "work": st.spec.command or (f"function {st.spec.function}" if st.spec.function else f"op {st.spec.op}"),
         "write": st.spec.write} for st in plan.stages.values()]
    if output == Output.json:
        print_json({"file": str(file), "ok": not problems, "problems": problems, "stages": stages,
                    "instances": plan.instances if plan else None})
    else:
        for st in stages:
            print(f"{st['name']} ×{st['parallelism']}: {st['feed']}; {st['work']}"
                  + (f"; write {st['write']}" if st["write"] else ""))
        if problems:
            _print_problems(file, problems, running=False)
        else:
            print(f"{spec.name}: ok, {len(plan.stages)} stages, {plan.instances} instances")
    if problems:
        raise typer.Exit(2)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _report(e: Exception) -> None:
    print(f"Error: {e}", file=sys.stderr)
    raise typer.Exit(130 if isinstance(e, FlowCancelled) else 1) from None


def _summary(result, output: Output, quiet: bool, seconds: float) -> None:
    if output == Output.json:
        print_json({"id": result.run, "state": "succeeded", "attempts": result.attempts,
                    "seconds": round(result.seconds, 3), "bad_records": result.bad_records,
                    "stages": result.stages})
    elif not quiet:
        total_in = sum(i.get("in", 0) for s in result.stages for i in s["instances"])
        err_console.print(f"flow {result.run} succeeded in {seconds:.2f}s "
                          f"({result.attempts} attempt{'s' if result.attempts > 1 else ''}, "
                          f"{total_in:,} records handled"
                          + (f", {result.bad_records} bad records skipped" if result.bad_records else "") + ")",
                          highlight=False)


def _live(first: dict, where, live: bool):
    """A live status table on the console `where` (when `live`), and the callback that refreshes it."""
    view = Live(status_table(first), console=where, refresh_per_second=2) if live else nullcontext()

    def on_status(status: dict) -> None:
        if live:
            view.update(status_table(status))
    return view, on_status


@app.command("run", help="Run a flow to the end, showing each stage instance live (records in and out, "
                         "rate). A node of the cluster drives the run: output files appear only when the "
                         "whole flow succeeded, exactly once, and a lost instance or node restarts the run "
                         "(up to `restarts:`).\n\n"
                         "[bold]shoal flow run wordcount.yaml[/]\n"
                         "[bold]shoal flow run -d wordcount.yaml[/]   (print the run id and return; "
                         "`shoal flow status RUN -w` follows it)\n"
                         "[bold]cat access.log | shoal flow run logs.yaml > errors.tsv[/]   (read: '-', write: '-')\n\n"
                         "If this command is killed, a flow of files runs on in the cluster "
                         "(`shoal flow status RUN -w` follows it again). A flow that reads stdin or writes "
                         "to stdout needs this command until it ends: if it dies, the run fails (\"its input "
                         "client went away\") and writes nothing; Ctrl-C cancels such a run.\n\n"
                         "Exit status: 0 on success, 1 when the flow failed (the failing stage's stderr is "
                         "shown), 2 when the file is not valid, 130 when the run was cancelled. With no "
                         "cluster (no --address, $SHOAL_ADDRESS or `shoal up`) it runs on a local cluster "
                         "started for it (not with --detach).")
def run(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="The flow file (YAML)."),
        address: Optional[str] = ADDRESS, output: Output = OUTPUT,
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No live status."),
        detach: bool = typer.Option(False, "--detach", "-d", help="Submit the run, print its id and return.")):
    spec, _ = _load(file)
    require_runtime()    # before any cluster is started for it
    if detach:
        with client_for(address) as c:
            run_id = c.start_flow(spec, str(file.parent))
        if output == Output.json:
            print_json({"id": run_id, "state": "pending"})
        else:
            print(run_id)
        return
    # killed politely (SIGTERM, as `timeout` and service managers do), stop as on Ctrl-C:
    # the run's client side is cancelled and its spool directory removed, not left behind
    signal.signal(signal.SIGTERM, _interrupt)
    view, on_status = _live({"id": "-", "state": "starting", "attempt": 1, "stages": []}, err_console,
                            output == Output.table and err_console.is_terminal and not quiet)
    t0 = time.time()
    submitted: list[str] = []
    with client_for(address, embedded=True) as c:
        try:
            with view:
                result = c.run_flow(spec, str(file.parent), stdin=sys.stdin.buffer, stdout=sys.stdout.buffer,
                                    on_status=on_status, started=submitted.append)
        except (FlowCancelled, FlowFailed) as e:
            _report(e)
        except KeyboardInterrupt:
            if submitted:
                err_console.print(f"flow {submitted[0]}: no longer followed here; a flow of files runs on in "
                                  f"the cluster (`shoal flow status {submitted[0]} -w`, "
                                  f"`shoal flow cancel {submitted[0]}`)", highlight=False)
            raise typer.Exit(130) from None
    _summary(result, output, quiet, time.time() - t0)


@app.command("status", help="A flow run's stages and instances: state, node, records in/out, rate.\n\n"
                            "[bold]shoal flow status RUN[/]\n"
                            "[bold]shoal flow status -w RUN[/]   (live until it ends; exits as `shoal flow run` "
                            "would: 0 succeeded, 1 failed, 130 cancelled)")
def status(run_id: str = typer.Argument(..., help="The run id (`shoal flow ls`)."),
           watch: bool = typer.Option(False, "--watch", "-w", help="Follow the run until it ends."),
           address: Optional[str] = ADDRESS, output: Output = OUTPUT):
    with client_for(address) as c:
        st = c.flow_status(run_id)
        if not watch:
            if output == Output.json:
                print_json(st)
                return
            console.print(status_table(st))
            if st.get("error"):
                print(st["error"], file=sys.stderr)
            return
        live = output == Output.table and console.is_terminal
        view, show = _live(st, console, live)
        last = {"status": st}

        def on_status(status: dict) -> None:
            last["status"] = status
            show(status)
        try:
            with view:
                result = c.follow_flow(run_id, on_status=on_status)
        except (FlowCancelled, FlowFailed) as e:
            if output == Output.json:
                print_json(last["status"])
            elif not live:
                console.print(status_table(last["status"]))
            _report(e)
    if output == Output.json:
        print_json(last["status"])
        return
    if not live:
        console.print(status_table(last["status"]))
    _summary(result, Output.table, False, result.seconds)


@app.command("cancel", help="Stop every instance of a flow run. Its outputs are not written.")
def cancel(run_id: str = typer.Argument(..., help="The run id (`shoal flow ls`)."),
           address: Optional[str] = ADDRESS, output: Output = OUTPUT):
    with client_for(address) as c:
        res = c.cancel_flow(run_id)
    if output == Output.json:
        print_json(res)
    else:
        print(f"flow {run_id}: cancelled {res['cancelled_instances']} instance(s)")


@app.command("ls", help="Recent flow runs, newest first.")
def ls(address: Optional[str] = ADDRESS, output: Output = OUTPUT,
       limit: int = typer.Option(20, "--limit", "-n", min=1, max=1000)):
    with client_for(address) as c:
        runs = c.flows(limit)
    if output == Output.json:
        print_json(runs)
        return
    t = Table(show_edge=False, header_style="bold")
    for col in ("RUN", "STATE", "ATTEMPT", "TOOK", "ERROR"):
        t.add_column(col, no_wrap=col != "ERROR", overflow="fold")
    for r in runs:
        took = f"{(r.get('ended') or time.time()) - r['started']:.1f}s" if r.get("started") else "-"
        t.add_row(r["id"], state_text(r.get("state") or "-"), str(r.get("attempt")), took,
                  (r.get("error") or "")[:120])
    console.print(t)
