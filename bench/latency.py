"""Submit-to-start latency on an idle 1-node local cluster, vs a plain local spawn.

Three series of sequential runs (each waits for the previous one to end):
  shoal /bin/true     t0 just before c.submit(["/bin/true"]); start = the attempt's
                      started_at (time.time() on the node, right after its spawn)
  shoal sh date       c.submit(["/bin/sh", "-c", "date +%s.%N"]); start = what the child
                      printed (its own clock once it runs), read from stdout_tail
  local Popen         subprocess.Popen of the same sh/date command: the floor
latency = start - t0. All clocks are time.time() on this one machine.

Run: python bench/latency.py [--count 200] [--warmup 20]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import signal
import sys
import tempfile
import time
from pathlib import Path

import shoal
from shoal.exec.daemon import alive
from shoal.cluster.local import LocalCluster

DATE_CMD = ["/bin/sh", "-c", "date +%s.%N"]
# where shoal's time goes, from the /bin/true series: t0 -> API node stamps submitted_at
# (client + HTTP) and submitted_at -> started_at (etcd commit, watch, claim txn, spawn)
PARTS: dict[str, list[float]] = {"client -> API (submitted_at)": [], "API -> started_at": []}
TARGET_P50_MS = 5.0
TARGET_P99_MS = 20.0


def shoal_true(c) -> float:
    t0 = time.time()
    rec = c.submit(["/bin/true"])
    rec = c.wait(rec.id)
    if rec.state.value != "succeeded":
        raise RuntimeError(f"task {rec.id} {rec.state.value}: {rec.reason_text()}")
    started = rec.attempts[-1].started_at
    PARTS["client -> API (submitted_at)"].append(rec.submitted_at - t0)
    PARTS["API -> started_at"].append(started - rec.submitted_at)
    return started - t0


def shoal_date(c) -> float:
    t0 = time.time()
    rec = c.submit(DATE_CMD)
    rec = c.wait(rec.id)
    if rec.state.value != "succeeded":
        raise RuntimeError(f"task {rec.id} {rec.state.value}: {rec.reason_text()}")
    return float(rec.stdout_tail.strip()) - t0


def local_date(_c) -> float:
    t0 = time.time()
    proc = subprocess.Popen(DATE_CMD, stdout=subprocess.PIPE)
    out, _ = proc.communicate()
    return float(out.strip()) - t0


def series(fn, c, count: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn(c)
    for xs in PARTS.values():
        xs.clear()  # keep only the measured runs
    return [fn(c) for _ in range(count)]


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def summary(xs: list[float]) -> dict:
    return {"p50": pct(xs, 50) * 1e3, "p99": pct(xs, 99) * 1e3, "mean": statistics.fmean(xs) * 1e3,
            "max": max(xs) * 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", "-n", type=int, default=200, help="measured submits per series (default 200)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed submits before each series (default 20)")
    args = ap.parse_args()

    # other work on the machine skews every figure here; show how busy it was
    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f} at start")
    home = Path(tempfile.mkdtemp(prefix="shoal-bench-lat-"))
    cluster = LocalCluster(home, nodes=1)
    st = None
    results: dict[str, dict] = {}
    split: dict[str, dict] = {}
    try:
        st = cluster.up()
        api = st["nodes"][0]["api"]
        print(f"cluster: 1 node at {api}, etcd pid {st['etcd']['pid']}, home {home}")
        with shoal.connect(api) as c:
            for name, fn in (("shoal /bin/true", shoal_true), ("shoal sh date", shoal_date),
                             ("local Popen sh date", local_date)):
                results[name] = summary(series(fn, c, args.count, args.warmup))
                if fn is shoal_true:
                    split = {k: summary(v) for k, v in PARTS.items()}
                print(f"  {name:<20} done ({args.count} runs)")
    finally:
        cluster.destroy()
        left = [p for p in ([st["etcd"]["pid"], *(n["pid"] for n in st["nodes"])] if st else []) if alive(p)]
        print("cleanup: cluster destroyed" + (f"; STILL ALIVE: {left}" if left else ", no etcd/node process left"))

    print(f"load average {os.getloadavg()[0]:.2f} at end")
    print()
    print(f"=== submit-to-start latency, {args.count} sequential submits, idle 1-node cluster (ms) ===")
    print(f"{'series':<22}{'p50':>9}{'p99':>9}{'mean':>9}{'max':>9}")
    for name, r in results.items():
        print(f"{name:<22}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['mean']:>9.2f}{r['max']:>9.2f}")
    print("shoal /bin/true split:")
    for name, r in split.items():
        print(f"  {name:<30}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['mean']:>9.2f}{r['max']:>9.2f}")
    floor = results["local Popen sh date"]
    print()
    for name in ("shoal sh date", "shoal /bin/true"):
        r = results[name]
        print(f"ratio {name} / local Popen: p50 {r['p50'] / floor['p50']:.1f}x, "
              f"p99 {r['p99'] / floor['p99']:.1f}x, mean {r['mean'] / floor['mean']:.1f}x")
    print()
    for name in ("shoal /bin/true", "shoal sh date"):
        r = results[name]
        ok50, ok99 = r["p50"] <= TARGET_P50_MS, r["p99"] <= TARGET_P99_MS
        print(f"target ({name}): p50 <= {TARGET_P50_MS:g} ms -> {r['p50']:.2f} ms {'MET' if ok50 else 'NOT MET'}; "
              f"p99 <= {TARGET_P99_MS:g} ms -> {r['p99']:.2f} ms {'MET' if ok99 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the cluster this run started is destroyed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
