"""Cluster verbs: up, down, node, nodes."""
from __future__ import annotations

import asyncio
import logging
import math
import os
from pathlib import Path
from typing import Optional

import psutil
import typer

from ..errors import InvalidSpec
from ..cluster.local import LocalCluster
from ..model.sizes import format_size, parse_size
from ..model.task import DEFAULT_NODE_LOSS_RETRIES
from ..settings import NodeSettings, StoreSettings, shoal_home
from .output import NODE_COLUMNS, Output, console, fitted_table, print_json
from .common import client_for


def _duration_s(text: str, field: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError:
        raise InvalidSpec([f"{field}: {text!r} is not a duration (use 90, 90s, 30m, 7d)"]) from None


def register(app: typer.Typer) -> None:

    @app.command()
    def up(nodes: int = typer.Option(1, "--nodes", "-n", min=1, help="How many nodes to start."),
           home: Optional[Path] = typer.Option(None, help="State directory [default: $SHOAL_HOME or ~/.shoal]."),
           lease_ttl: int = typer.Option(5, help="Node lease TTL in seconds."),
           node_loss_retries: int = typer.Option(
               DEFAULT_NODE_LOSS_RETRIES, min=0, help="How often a task is requeued after its node is lost, "
               "for tasks that do not set their own (does not use up `retries`)."),
           etcd_gone_exit: float = typer.Option(
               60.0, min=0, help="Nodes exit once their etcd has been unreachable this many seconds (0 = never)."),
           output: Output = typer.Option(Output.table, "--output", "-o")):
        """Start a local cluster (etcd + N nodes) in the background and return once it is
        ready. Running it again while the cluster runs changes nothing."""
        node_args = ["--node-loss-retries", str(node_loss_retries)]
        if etcd_gone_exit > 0:
            node_args += ["--etcd-gone-exit", f"{etcd_gone_exit:g}"]
        cluster = LocalCluster(home or shoal_home(), nodes=nodes, lease_ttl_s=lease_ttl, node_args=node_args)
        before = cluster.running()
        st = cluster.up()
        if output == Output.json:
            print_json(st)
            return
        word = "already running" if before else "started"
        console.print(f"shoal cluster {word}: etcd {st['etcd']['url']}, {len(st['nodes'])} node(s)")
        for n in st["nodes"]:
            console.print(f"  {n['id']}  {n['api']}  pid {n['pid']}")
        console.print(f"state in {cluster.home}; stop with `shoal down`")

    @app.command()
    def down(home: Optional[Path] = typer.Option(None, help="State directory [default: $SHOAL_HOME or ~/.shoal]."),
             output: Output = typer.Option(Output.table, "--output", "-o")):
        """Stop the local cluster started by `shoal up` (nodes first, then etcd)."""
        cluster = LocalCluster(home or shoal_home())
        was = cluster.down()
        if output == Output.json:
            print_json({"stopped": was})
        else:
            console.print("shoal cluster stopped" if was else "no shoal cluster was running")

    @app.command()
    def node(etcd: str = typer.Option("http://127.0.0.1:2379", envvar="SHOAL_ETCD",
                                      help="etcd endpoints, comma separated (fails over between them)."),
             name: Optional[str] = typer.Option(None, help="Node id [default: <host>-<api port>]."),
             cpus: Optional[float] = typer.Option(None, help="CPUs to offer [default: all]."),
             memory: Optional[str] = typer.Option(None, help="Memory to offer, e.g. 8G [default: all]."),
             disk: str = typer.Option("0", help="Disk to offer, e.g. 100G (0 = not tracked)."),
             gpus: int = typer.Option(0, min=0, help="GPUs to offer."),
             slots: Optional[int] = typer.Option(None, min=1, help="Most attempts at once [default: ceil(cpus)]."),
             labels: str = typer.Option("", help="Labels, comma separated: gpu,zone=eu."),
             machine_type: str = typer.Option("local", help="Machine type (for pricing)."),
             api_host: str = typer.Option("127.0.0.1", help="Address the HTTP API listens on."),
             api_port: int = typer.Option(0, help="HTTP API port (0 = any free port)."),
             home: Optional[Path] = typer.Option(None, help="Where logs go [default: $SHOAL_HOME or ~/.shoal]."),
             lease_ttl: int = typer.Option(5, min=1, help="Lease TTL in seconds."),
             retention: str = typer.Option("7d", help="How long finished tasks are kept (e.g. 1h, 7d; 0 = forever)."),
             max_retries: int = typer.Option(10, min=0, help="Cap on a task's retries."),
             node_loss_retries: int = typer.Option(
                 DEFAULT_NODE_LOSS_RETRIES, min=0, help="How often a task is requeued after its node is lost, "
                 "for tasks that do not set their own (does not use up `retries`)."),
             etcd_gone_exit: Optional[float] = typer.Option(
                 None, min=0, help="Exit once etcd has been unreachable this many seconds "
                                   "[default: keep retrying; `shoal up` sets 60]."),
             prefix: str = typer.Option("/shoal/", help="etcd key prefix."),
             verbose: bool = typer.Option(False, "--verbose", "-v")):
        """Run a node in the foreground: join the etcd cluster, serve the HTTP API, claim
        and run tasks. Stop it with SIGTERM or Ctrl-C (running attempts are killed and
        run again elsewhere)."""
        from ..api.server import serve_node  # node + API: loaded only by this command
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        n_cpus = cpus if cpus is not None else float(os.cpu_count() or 1)
        problems = []
        if n_cpus <= 0:
            problems.append(f"--cpus: {n_cpus} must be above 0")
        try:
            mem = parse_size(memory) if memory else psutil.virtual_memory().total
        except ValueError as e:
            problems.append(f"--memory: {e}")
            mem = 0
        try:
            disk_b = parse_size(disk)
        except ValueError as e:
            problems.append(f"--disk: {e}")
            disk_b = 0
        if problems:
            raise InvalidSpec(problems)
        settings = NodeSettings(
            node_id=name or "", home=home or shoal_home(), cpus=n_cpus, memory_bytes=mem,
            disk_bytes=disk_b, gpus=gpus, slots=slots or max(1, math.ceil(n_cpus)),
            labels=[x.strip() for x in labels.split(",") if x.strip()], machine_type=machine_type,
            api_host=api_host, api_port=api_port, lease_ttl_s=lease_ttl, max_retries=max_retries,
            node_loss_retries=node_loss_retries, etcd_gone_exit_s=etcd_gone_exit or None)
        store = StoreSettings(endpoints=[e.strip() for e in etcd.split(",") if e.strip()], prefix=prefix,
                              retention_s=_duration_s(retention, "--retention"))
        asyncio.run(serve_node(settings, store))

    @app.command()
    def nodes(address: Optional[str] = typer.Option(None, envvar="SHOAL_ADDRESS", help="Any node's API URL."),
              output: Output = typer.Option(Output.table, "--output", "-o")):
        """The nodes of the cluster: resources free/total, running attempts, heartbeat age."""
        with client_for(address) as c:
            rows = c.nodes()
        if output == Output.json:
            print_json(rows)
            return
        console.print(fitted_table(NODE_COLUMNS, [
            [n["id"], n["host"], str(n["pid"]), n["api"], n["machine_type"], f"{n['free_cpus']:g}/{n['cpus']:g}",
             f"{format_size(n['free_memory'])}/{format_size(n['memory'])}", f"{n['free_slots']}/{n['slots']}",
             str(n["running"]), f"{n['heartbeat_age_s']:.1f}s ago"] for n in rows]))
