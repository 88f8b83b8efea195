"""A wide fan-in: N trivial tasks `inc(i)`, then one `total(*futures)` submitted while
most of them have not ended, shoal vs Dask distributed on this machine, same run.

  shoal  1 node, 2 slots:  fs = inc.map(range(N)); total.submit(*fs).result()
  Dask   LocalCluster(n_workers=2, threads_per_worker=1, processes=True):
         fs = client.map(inc, range(N)); client.submit(total, *fs).result()

Timed from the first submit to the sum back in this process; best of --repeat, after an
untimed warm-up. shoal's line also splits the time: when the last `inc` ended (ending
tasks with a dependent), how long `total` then waited to start, and how long it ran
(fetching its N arguments); and, run just before, when the same N `inc` ended with no
dependent, so the cost of ending a task that has a dependent shows on its own. The two run one after the other (shoal's cluster is gone before Dask's
starts). Also prints how long submitting `total` took: on shoal that is recording N edges.
Peer: pip install -e '.[bench]'.

Run: python bench/fanin.py [--n 10000] [--repeat 2] [--skip-dask]
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("fnbench", HERE / "fnbench.py")
fnbench = importlib.util.module_from_spec(_spec)
sys.modules["fnbench"] = fnbench
_spec.loader.exec_module(fnbench)
sys.path.insert(0, str(HERE))   # Dask's workers import fnbench from here

SLOTS = 2


def run_shoal(n: int, repeat: int) -> tuple[float, float]:
    import shoal
    from shoal.cluster.local import LocalCluster

    inc = shoal.task(fnbench.inc, py_modules=[fnbench])
    total = shoal.task(fnbench.total, py_modules=[fnbench])
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="shoal-bench-fanin-")), nodes=1,
                           node_args=["--cpus", str(SLOTS), "--slots", str(SLOTS)])
    best = record = float("inf")
    try:
        api = cluster.up()["nodes"][0]["api"]
        with shoal.connect(api) as c:
            assert total.submit(*inc.map(range(20))).result(timeout=120) == sum(range(1, 21))   # warm-up
            # futures dropped mid-run release their results meanwhile: keep them all to the end
            keep: list = []
            for _ in range(repeat):
                # the same N tasks with no dependent: what ending them costs without edges
                wall0 = time.time()
                keep.append(inc.map(range(n)))
                plain = c.wait([f.id for f in keep[-1]], timeout=3600)
                plain_end = max(r.finished_at for r in plain) - wall0
                t0, wall0 = time.perf_counter(), time.time()
                fs = inc.map(range(n))
                t1 = time.perf_counter()
                root = total.submit(*fs)
                t2 = time.perf_counter()
                got = root.result(timeout=3600)
                took = time.perf_counter() - t0
                assert got == n * (n + 1) // 2, got
                ends = c.wait([f.id for f in fs] + [root.id], timeout=600)
                last_inc = max(r.finished_at for r in ends[:-1])
                print(f"  shoal: {n} inc + total(*{n} futures) in {took:.2f}s "
                      f"(submitting total: {t2 - t1:.2f}s; last inc ended at {last_inc - wall0:.2f}s, "
                      f"total started {ends[-1].started_at - last_inc:.2f}s later and ran "
                      f"{ends[-1].finished_at - ends[-1].started_at:.2f}s)", flush=True)
                print(f"  shoal: the same {n} inc with no dependent ended at {plain_end:.2f}s: a dependent "
                      f"costs {(last_inc - wall0 - plain_end) / n * 1000:.2f} ms a task", flush=True)
                best, record = min(best, took), min(record, t2 - t1)
                keep += [fs, root]
    finally:
        cluster.destroy()
    return best, record


def run_dask(n: int, repeat: int) -> float:
    from distributed import Client, LocalCluster

    lc = LocalCluster(n_workers=SLOTS, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR,
                      scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
    best = float("inf")
    try:
        with Client(lc) as client:
            inc, total = fnbench.inc, fnbench.total
            assert client.submit(total, *client.map(inc, range(20), pure=False), pure=False).result() == 210
            for _ in range(repeat):
                t0 = time.perf_counter()
                fs = client.map(inc, range(n), pure=False)
                got = client.submit(total, *fs, pure=False).result()
                took = time.perf_counter() - t0
                assert got == n * (n + 1) // 2, got
                print(f"  dask:  {n} inc + total(*{n} futures) in {took:.2f}s", flush=True)
                best = min(best, took)
    finally:
        lc.close()
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip-dask", action="store_true")
    args = ap.parse_args()
    shoal_s, record_s = run_shoal(args.n, args.repeat)
    dask_s = None if args.skip_dask else run_dask(args.n, args.repeat)
    print(f"\nfan-in of {args.n}: shoal {shoal_s:.2f}s (of which submitting total {record_s:.2f}s)"
          + (f", dask {dask_s:.2f}s, shoal/dask = {shoal_s / dask_s:.2f}x" if dask_s else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
