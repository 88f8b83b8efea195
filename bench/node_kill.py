"""The node a `shoal map` talks to is SIGKILLed mid-run. On a 3-node local cluster, the
CLI runs `--tasks` short tasks (default 300), each appending its input to a file (its
side effect) and printing it. Once `--kill-after` side effects are in, node-1 (the first
node of cluster.json, the one the CLI talks to) gets SIGKILL. Afterwards the script
reads every task of the job and prints: tasks failed, successes recorded twice (an input
with two tasks, or a task with two succeeded attempts), side effects repeated, the CLI's
exit status and outputs, and the seconds from the kill until each task the dead node
was running had a new attempt started on another node.

There is no peer process to race: the comparison is the target, lease TTL + 1 s (the
lease must expire before anyone may take the work over).

Run: python bench/node_kill.py [--tasks 300] [--lease-ttl 5] [--retries N]
"""
from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import shoal
from shoal.cluster.local import LocalCluster


def run_map(cluster: LocalCluster, args, effects: Path, job: str) -> dict:
    """Start `shoal map`, SIGKILL node-1 once enough side effects are in, wait for the CLI."""
    env = dict(os.environ, SHOAL_HOME=str(cluster.home))
    env.pop("SHOAL_ADDRESS", None)
    inputs = [str(i) for i in range(args.tasks)]
    argv = [sys.executable, "-m", "shoal", "map", "--job", job,
            *(["--retries", str(args.retries)] if args.retries is not None else []),
            f"echo {{}} >> {effects}; sleep {args.task_s}; echo {{}}", ":::", *inputs]
    t0 = time.time()
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL) as proc:
        try:
            until = time.monotonic() + 120
            while not (effects.exists() and len(effects.read_text().split()) >= args.kill_after):
                if proc.poll() is not None or time.monotonic() > until:
                    raise RuntimeError("the map ended (or never started) before the kill")
                time.sleep(0.01)
            t_kill = time.time()
            cluster.kill_node("node-1")
            out, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"inputs": inputs, "t0": t0, "t_kill": t_kill, "t_end": time.time(), "rc": proc.returncode,
            "out": out, "err": err}


def summarize(cluster: LocalCluster, res: dict, effects: Path, job: str) -> dict:
    with shoal.connect(cluster.addresses()) as c:
        recs = c.list(job=job, limit=10000)
    per_input = collections.Counter(r.spec.command.split("echo ")[1].split(" ")[0] for r in recs)
    twice = sum(n - 1 for n in per_input.values() if n > 1)
    twice += sum(1 for r in recs if sum(a.state.value == "succeeded" for a in r.attempts) > 1)
    effect_counts = collections.Counter(effects.read_text().split())
    lost = [(r, i) for r in recs for i, a in enumerate(r.attempts)
            if a.node == "node-1" and a.state.value != "succeeded"]
    restarted = [r.attempts[i + 1].started_at - res["t_kill"] for r, i in lost
                 if i + 1 < len(r.attempts) and r.attempts[i + 1].started_at]
    return {"tasks": len(recs), "failed": sum(r.state.value == "failed" for r in recs),
            "succeeded": sum(r.state.value == "succeeded" for r in recs), "twice": twice,
            "lost": len(lost), "restarted": restarted,
            "effects_repeated": sum(n - 1 for n in effect_counts.values()),
            "outputs": sorted(res["out"].split()) == sorted(res["inputs"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=300, help="inputs to map (default 300)")
    ap.add_argument("--task-s", type=float, default=0.2, help="seconds each task sleeps (default 0.2)")
    ap.add_argument("--kill-after", type=int, default=60, help="side effects in before the kill (default 60)")
    ap.add_argument("--lease-ttl", type=int, default=5, help="node lease TTL in seconds (default 5)")
    ap.add_argument("--retries", type=int, default=None, help="pass --retries N to shoal map [default: not given]")
    args = ap.parse_args()

    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f} at start")
    home = Path(tempfile.mkdtemp(prefix="shoal-bench-kill-"))
    work = Path(tempfile.mkdtemp(prefix="shoal-bench-kill-effects-"))
    effects = work / "effects"
    job = f"node-kill-{uuid.uuid4().hex[:6]}"
    cluster = LocalCluster(home, nodes=3, lease_ttl_s=args.lease_ttl)
    try:
        cluster.up()
        print(f"cluster: 3 nodes, lease TTL {args.lease_ttl}s; shoal map of {args.tasks} tasks "
              f"(sleep {args.task_s}s each), retries: {args.retries if args.retries is not None else 'default'}")
        res = run_map(cluster, args, effects, job)
        fig = summarize(cluster, res, effects, job)
    finally:
        cluster.destroy()
        effects.unlink(missing_ok=True)
        work.rmdir()
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    if res["rc"] != 0:
        print("CLI stderr (last 600 chars):\n" + res["err"][-600:])
    target = args.lease_ttl + 1.0
    print()
    print(f"=== SIGKILL of node-1 (the CLI's node) after {args.kill_after} side effects, "
          f"{res['t_kill'] - res['t0']:.1f}s into the map ===")
    rows = [("CLI exit status", f"{res['rc']}", "0"),
            ("all outputs printed once", "yes" if fig["outputs"] else "NO", "yes"),
            ("tasks in the job", f"{fig['tasks']}", f"{args.tasks}"),
            ("tasks failed", f"{fig['failed']}", "0"),
            ("successes recorded twice", f"{fig['twice']}", "0"),
            ("attempts lost with node-1", f"{fig['lost']}", "-"),
            ("side effects repeated", f"{fig['effects_repeated']}", f"<= {fig['lost']}"),
            ("map seconds (start to CLI exit)", f"{res['t_end'] - res['t0']:.1f}", "-")]
    if fig["restarted"]:
        worst = max(fig["restarted"])
        rows.append(("kill -> last lost task restarted, s", f"{worst:.2f}", f"<= {target:g}"))
    for name, got, want in rows:
        print(f"{name:<38}{got:>10}   target {want}")
    if fig["lost"] and len(fig["restarted"]) < fig["lost"]:
        print(f"{fig['lost'] - len(fig['restarted'])} of {fig['lost']} lost attempts were not run again "
              "(their tasks failed: node loss was charged to retries)")
    met = (res["rc"] == 0 and fig["failed"] == 0 and fig["twice"] == 0 and fig["outputs"]
           and (not fig["restarted"] or max(fig["restarted"]) <= target) and len(fig["restarted"]) == fig["lost"])
    if fig["restarted"]:
        print(f"ratio restart / target: {max(fig['restarted']) / target:.2f}")
    print(f"targets: {'MET' if met else 'NOT MET'}")
    return 0 if met else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
