"""Throughput of many tiny tasks: `shoal map /bin/true :::: FILE` on a throwaway 1-node
local cluster vs GNU parallel and xargs running the same N commands on this machine.

Run: python bench/map_throughput.py [--tasks 2000] [--repeat 3] [--jobs 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import signal
import sys
import tempfile
import time
from pathlib import Path

import shoal
from shoal.exec.daemon import alive
from shoal.cluster.local import LocalCluster

TARGET_TASKS_PER_S = 1000.0


def shoal_cli() -> list[str]:
    """The `shoal` console script of this interpreter's environment (what a user runs)."""
    script = Path(sys.executable).parent / "shoal"
    if script.exists():
        return [str(script)]
    found = shutil.which("shoal")
    return [found] if found else [sys.executable, "-m", "shoal"]


def write_inputs(path: Path, n: int) -> Path:
    path.write_text("".join(f"{i}\n" for i in range(1, n + 1)))
    return path


def run_cmd(argv: list[str], stdin_path: Path | None = None) -> float:
    """Wall-clock seconds of one whole command; raises if it did not exit 0."""
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    try:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        took = time.perf_counter() - t0
    finally:
        if stdin_path:
            stdin.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')[-1000:]}")
    return took


def make_tools(api: str, jobs: int, have_parallel: bool) -> dict:
    """name -> function(inputs_file, n) -> seconds for the whole run."""
    tools = {
        "shoal map (CLI)": lambda f, n: run_cmd([*shoal_cli(), "map", "--address", api, "--no-progress",
                                              "/bin/true", "::::", str(f)]),
    }
    if have_parallel:
        tools["GNU parallel"] = lambda f, n: run_cmd(["parallel", "--will-cite", f"-j{jobs}", "/bin/true",
                                                   "::::", str(f)])
    tools["xargs"] = lambda f, n: run_cmd(["xargs", f"-P{jobs}", "-n1", "/bin/true"], stdin_path=f)
    return tools


def sdk_run(c, n: int) -> float:
    """Seconds for run_many of n /bin/true tasks inside this process (no CLI start-up)."""
    t0 = time.perf_counter()
    bad = sum(1 for rec in c.run_many([{"command": ["/bin/true"]}] * n) if rec.state.value != "succeeded")
    took = time.perf_counter() - t0
    if bad:
        raise RuntimeError(f"SDK run: {bad} of {n} tasks did not succeed")
    return took


def check_stopped(st: dict | None) -> list[int]:
    """PIDs we started (etcd, nodes) that are still alive after destroy()."""
    if not st:
        return []
    pids = [st["etcd"]["pid"], *(n["pid"] for n in st["nodes"])]
    return [p for p in pids if alive(p)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", "-n", type=int, default=2000, help="tasks per timed run (default 2000)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per tool; the best is reported (default 3)")
    ap.add_argument("--warmup", type=int, default=200, help="tasks in the untimed warm-up run of each tool")
    ap.add_argument("--jobs", "-j", type=int, default=2,
                    help="concurrency: node slots for shoal, -j for parallel, -P for xargs (default 2)")
    args = ap.parse_args()

    have_parallel = shutil.which("parallel") is not None
    if not have_parallel:
        print("GNU parallel is not installed; skipping it. Install it with: apt-get install -y parallel")

    # other work on the machine skews every figure here; show how busy it was
    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f} at start")
    home = Path(tempfile.mkdtemp(prefix="shoal-bench-map-"))
    # same concurrency for everyone: the node runs at most --jobs attempts at once
    cluster = LocalCluster(home, nodes=1, node_args=["--cpus", str(args.jobs), "--slots", str(args.jobs)])
    st = None
    best: dict[str, float] = {}
    cli_fixed = 0.0
    try:
        st = cluster.up()
        api = st["nodes"][0]["api"]
        print(f"cluster: 1 node ({args.jobs} slots) at {api}, etcd pid {st['etcd']['pid']}, home {home}")
        warm = write_inputs(home / "warmup.txt", args.warmup)
        inputs = write_inputs(home / "inputs.txt", args.tasks)
        tools = make_tools(api, args.jobs, have_parallel)
        with shoal.connect(api) as c:
            tools["shoal SDK run_many"] = lambda f, n: sdk_run(c, n)
            for name, fn in tools.items():
                fn(warm, args.warmup)
                runs = []
                for _ in range(args.repeat):
                    runs.append(fn(inputs, args.tasks))
                best[name] = min(runs)
                print(f"  {name:<20} runs: " + ", ".join(f"{r:.3f}s" for r in runs))
            # the CLI's fixed cost per command: start-up, connect, one task, exit
            one = write_inputs(home / "one.txt", 1)
            cli_fixed = min(tools["shoal map (CLI)"](one, 1) for _ in range(args.repeat))
    finally:
        cluster.destroy()
        left = check_stopped(st)
        print("cleanup: cluster destroyed" + (f"; STILL ALIVE: {left}" if left else ", no etcd/node process left"))

    rate = {name: args.tasks / s for name, s in best.items()}
    cli = rate["shoal map (CLI)"]
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    print()
    print(f"=== map throughput: {args.tasks} x /bin/true, concurrency {args.jobs}, best of {args.repeat} ===")
    print(f"{'tool':<22}{'best wall s':>12}{'tasks/s':>10}")
    for name in best:
        print(f"{name:<22}{best[name]:>12.3f}{rate[name]:>10.0f}")
    print()
    if "GNU parallel" in rate:
        print(f"ratio shoal CLI / GNU parallel : {cli / rate['GNU parallel']:.2f}x")
    else:
        print("ratio shoal CLI / GNU parallel : n/a (apt-get install -y parallel)")
    print(f"ratio shoal CLI / xargs        : {cli / rate['xargs']:.2f}x")
    print(f"ratio shoal SDK / shoal CLI    : {rate['shoal SDK run_many'] / cli:.2f}x "
          f"(the CLI costs {best['shoal map (CLI)'] - best['shoal SDK run_many']:.2f}s more per run; "
          f"a 1-task `shoal map` takes {cli_fixed:.2f}s)")
    met = cli >= TARGET_TASKS_PER_S
    print(f"target: shoal map >= {TARGET_TASKS_PER_S:.0f} tasks/s -> {cli:.0f} tasks/s: "
          f"{'MET' if met else 'NOT MET'} ({cli / TARGET_TASKS_PER_S:.2f} of target)")
    return 0


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the cluster this run started is destroyed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
