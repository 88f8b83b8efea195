"""Python function tasks: shoal vs Ray vs Dask distributed, on this machine, same run.

  (a) throughput   N no-op tasks (`def noop(x): return x`), default 10,000
        shoal  1 node, 2 slots:  c.gather(noop.map(range(N)))
        Ray    ray.init(num_cpus=2):  ray.get([noop.remote(i) for i in range(N)])
        Dask   LocalCluster(n_workers=2, threads_per_worker=1, processes=True):
               client.gather(client.map(noop, range(N)))
  (b) latency      submit-to-result of one small function, --count sequential runs
                   (noop.submit(i).result(), ray.get(noop.remote(i)),
                   client.submit(noop, i).result()): p50/p99/mean
  (c) DAG          about 1,000 tasks with futures as arguments, three shapes:
        flat       999 x inc(i), then one total(*futures)           (fan-out / fan-in)
        two-level  960 x inc(i), 30 x total(*32 futures), 1 x total(*those 30)
        tree       500 x inc(i), then add(a, b) pairwise up to one  (999 tasks, 9 levels)
                   shoal vs Dask (same calls with client.submit), and Ray for reference

Each system gets an untimed warm-up first (workers started, code loaded). They run one
after another, never at the same time: shoal's cluster is destroyed before Dask starts,
and Dask's before Ray's. Ray binds to every interface whatever it is told, so it runs
only in a fresh network namespace (`unshare -n`, loopback only) as a child process of
this script (`--ray-only`), which prints its figures as one JSON line. Dask's cluster
listens on 127.0.0.1 only, with no dashboard; shoal's always does.

The benchmarked functions live in bench/fnbench.py; shoal ships that module by value
(`py_modules=[fnbench]`), since its nodes cannot import it (checked at start).

Targets: (a) shoal >= Dask's rate and >= 0.7 x Ray's; (b) shoal p50 <= 5 ms.
Peers: pip install -e '.[bench]' (ray[default], dask[distributed]).

Run: python bench/functions.py [--n 10000] [--count 200] [--dag-tasks 1000]
                               [--skip-ray] [--skip-dask] [--quick]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import shlex
import statistics
import subprocess
import signal
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
import fnbench  # noqa: E402

TARGET_RAY_FRACTION = 0.7      # (a) shoal >= 0.7 x Ray's tasks/s
TARGET_P50_MS = 5.0            # (b) shoal p50 <= 5 ms
SLOTS = 2                      # concurrency for everyone: 2 node slots, 2 Ray CPUs, 2 Dask workers
RAY_TAG = "FNBENCH-RAY-RESULT "


# -- shared helpers ---------------------------------------------------------------------

def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def lat_summary(xs: list[float]) -> dict:
    return {"p50_ms": pct(xs, 50) * 1e3, "p99_ms": pct(xs, 99) * 1e3,
            "mean_ms": statistics.fmean(xs) * 1e3, "max_ms": max(xs) * 1e3, "count": len(xs)}


def check(what: str, got, want) -> None:
    if got != want:
        raise RuntimeError(f"{what}: wrong result {str(got)[:200]} (expected {str(want)[:200]})")


def reduce_pairs(items: list, add) -> tuple[object, int]:
    """Sum `items` pairwise, level by level, with add(a, b); (root, tasks made)."""
    made = 0
    while len(items) > 1:
        nxt = [add(items[i], items[i + 1]) for i in range(0, len(items) - 1, 2)]
        made += len(nxt)
        if len(items) % 2:
            nxt.append(items[-1])
        items = nxt
    return items[0], made


SHAPES = ("flat", "two-level", "tree")


def dag_plan(shape: str, total_tasks: int) -> dict:
    """How a DAG of about `total_tasks` tasks is made. Every shape sums inc(i) over its
    leaves, so the answer is 1 + 2 + ... + leaves."""
    if shape == "flat":        # leaves, then one total(*all of them)
        leaves = max(1, total_tasks - 1)
        return {"leaves": leaves, "tasks": leaves + 1, "what": f"{leaves} inc + 1 total(*{leaves} futures)"}
    if shape == "two-level":   # leaves, total() of each group of m, total() of those
        m = max(2, math.ceil(math.sqrt(total_tasks)))
        k = max(1, (total_tasks - 1) // (m + 1))
        return {"leaves": k * m, "group": m, "tasks": k * m + k + 1,
                "what": f"{k * m} inc + {k} total(*{m} futures) + 1 total(*{k})"}
    leaves = max(2, (total_tasks + 1) // 2)   # tree: add(a, b) pairwise, level by level
    return {"leaves": leaves, "tasks": 2 * leaves - 1,
            "what": f"{leaves} inc + {leaves - 1} add(a, b) in {math.ceil(math.log2(leaves))} levels"}


def build_dag(shape: str, plan: dict, leaf_map, fan_in, add):
    """Submit one DAG through a system's calls: leaf_map(range) -> futures,
    fan_in(*futures) -> future, add(a, b) -> future. Its root future."""
    fs = leaf_map(range(plan["leaves"]))
    if shape == "flat":
        return fan_in(*fs)
    if shape == "two-level":
        m = plan["group"]
        return fan_in(*[fan_in(*fs[i:i + m]) for i in range(0, len(fs), m)])
    return reduce_pairs(list(fs), add)[0]


def dag_answer(plan: dict) -> int:
    return plan["leaves"] * (plan["leaves"] + 1) // 2


def listening(pids: list[int]) -> list[str]:
    """Addresses the given processes listen on (TCP), for the record."""
    import psutil
    out = set()
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):
        return ["(could not list sockets)"]
    for c in conns:
        if c.pid in pids and c.status == psutil.CONN_LISTEN and c.laddr:
            out.add(f"{c.laddr.ip}:{c.laddr.port}")
    return sorted(out)


def netns_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def pids_in_netns(ns: str, exclude: set[int]) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) not in exclude and netns_of(int(d)) == ns:
            out.append(int(d))
    return out


# -- shoal --------------------------------------------------------------------------------

def shoal_stuck(c, node_id: str) -> int:
    """Queued tasks while the node runs nothing: how many (0 = not stuck)."""
    nodes = {n["id"]: n for n in c.nodes()}
    if nodes.get(node_id, {}).get("running", 1) != 0:
        return 0
    return len(c.list(state="queued", limit=1000))


def shoal_wait_dag(c, fut, node_id: str, deadline_s: float) -> tuple[float | None, int]:
    """Wait for the DAG's last future; (end time or None, tasks left stranded in queued
    while the node sat idle). Polls every 5 s only to notice a stall, so the end time
    is exact when it completes."""
    until = time.monotonic() + deadline_s
    idle_checks = 0
    while time.monotonic() < until:
        try:
            fut.record(timeout=min(5.0, max(0.1, until - time.monotonic())))
            return time.perf_counter(), 0
        except TimeoutError:
            stranded = shoal_stuck(c, node_id)
            idle_checks = idle_checks + 1 if stranded else 0
            if idle_checks >= 2:   # idle node, tasks queued, 10 s on: they will not run
                return None, stranded
    return None, shoal_stuck(c, node_id)


def shoal_dag(c, fns: dict, shape: str, plan: dict, node_id: str, deadline_s: float) -> dict:
    import httpx
    from shoal.errors import ShoalError
    inc, total, add = fns["inc"], fns["total"], fns["add"]
    t0 = time.perf_counter()
    submitted_ids: list[str] = []

    def leaf_map(r):
        fs = inc.map(r)
        submitted_ids.extend(f.id for f in fs)
        return fs
    try:
        root = build_dag(shape, plan, leaf_map, lambda *fs: total.submit(*fs), lambda a, b: add.submit(a, b))
    except ShoalError as e:
        # let what was submitted drain before anything else is timed. After the node's
        # HTTP 500 the next request on the same keep-alive connection can fail with
        # httpx.ReadError (the server dropped the connection): try again
        for attempt in range(3):
            try:
                c.wait(submitted_ids)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        return {"tasks": plan["tasks"], "seconds": None, "error": f"{type(e).__name__}: {e}"}
    submitted = time.perf_counter()
    end, stranded = shoal_wait_dag(c, root, node_id, deadline_s)
    if end is None:
        return {"tasks": plan["tasks"], "seconds": None, "stranded": stranded, "submit_s": submitted - t0}
    check(f"shoal DAG {shape}", root.result(), dag_answer(plan))
    return {"tasks": plan["tasks"], "seconds": end - t0, "submit_s": submitted - t0}


def last_error_line(log: Path) -> str | None:
    """The last exception line in a node's log (what an HTTP 500 hides)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((ln.strip() for ln in reversed(lines) if "Error:" in ln and not ln.startswith(" ")), None)


def run_shoal(args) -> dict:
    import psutil
    import shoal
    from shoal.exec.daemon import alive
    from shoal.cluster.local import LocalCluster

    fns = {name: shoal.task(getattr(fnbench, name), py_modules=[fnbench]) for name in ("noop", "inc", "add", "total")}
    noop = fns["noop"]
    out: dict = {}
    home = Path(tempfile.mkdtemp(prefix="shoal-bench-fn-"))
    cluster = LocalCluster(home, nodes=1, node_args=["--cpus", str(SLOTS), "--slots", str(SLOTS)],
                           fsync=not args.no_fsync)
    st = None
    children: list[int] = []
    try:
        st = cluster.up()
        node = st["nodes"][0]
        api = node["api"]
        print(f"shoal: 1 node ({SLOTS} slots) at {api}, node pid {node['pid']}, etcd pid {st['etcd']['pid']}"
              f"{', etcd without fsync' if args.no_fsync else ''}, home {home}", flush=True)
        with shoal.connect(api) as c:
            # the nodes cannot import bench/fnbench.py: by reference it fails, by value it runs
            by_ref = shoal.task(fnbench.noop).submit(1)
            err = by_ref.exception(timeout=60)
            check("shoal py_modules", noop.submit(7).result(timeout=60), 7)
            print(f"  fnbench on the node: by reference -> "
                  f"{('fails: ' + str(err.remote_type) + ': ' + str(err.remote_message).split(' (')[0]) if err else 'importable'}; "
                  f"by value (py_modules=[fnbench]) -> runs", flush=True)

            # (a) throughput
            check("shoal warm-up", c.gather(noop.map(range(args.warmup_tasks))), list(range(args.warmup_tasks)))
            best = None
            for _ in range(args.repeat):
                t0w = time.time()
                t0 = time.perf_counter()
                fs = noop.map(range(args.n))
                t1 = time.perf_counter()
                res = c.gather(fs)
                t2 = time.perf_counter()
                check("shoal throughput", res, list(range(args.n)))
                run = {"seconds": t2 - t0, "submit_s": t1 - t0, "gather_s": t2 - t1}
                # after the clock stopped: when the node had finished them all (task records)
                recs = c.wait([f.id for f in fs])
                run["all_finished_s"] = max(r.attempts[-1].finished_at for r in recs) - t0w
                print(f"  shoal throughput: {args.n} tasks in {run['seconds']:.2f}s "
                      f"(map {run['submit_s']:.2f}s + gather {run['gather_s']:.2f}s; the node had run "
                      f"them all {run['all_finished_s']:.2f}s after the start)", flush=True)
                if best is None or run["seconds"] < best["seconds"]:
                    best = run
            # how long gather's per-result fetch alone takes, on tasks already finished
            sample = recs[:min(500, len(recs))]
            t0 = time.perf_counter()
            for r in sample:
                c.fetch_result(r)
            best["fetch_ms_each"] = (time.perf_counter() - t0) / len(sample) * 1e3
            best["rate"] = args.n / best["seconds"]
            out["throughput"] = best

            # (b) latency: submit -> result, sequential; the parts from the task record
            for i in range(args.warmup):
                noop.submit(i).result()
            lats, parts = [], {"client -> API (submitted_at)": [], "API -> started_at": [],
                               "run (started -> finished)": [], "finished -> record at client": [],
                               "result fetch": []}
            for i in range(args.count):
                t0w = time.time()
                t0 = time.perf_counter()
                f = noop.submit(i)
                rec = f.record()
                t_rec = time.time()
                t1 = time.perf_counter()
                v = f.result()
                t2 = time.perf_counter()
                check("shoal latency", v, i)
                lats.append(t2 - t0)
                a = rec.attempts[-1]
                parts["client -> API (submitted_at)"].append(rec.submitted_at - t0w)
                parts["API -> started_at"].append(a.started_at - rec.submitted_at)
                parts["run (started -> finished)"].append(a.finished_at - a.started_at)
                parts["finished -> record at client"].append(t_rec - a.finished_at)
                parts["result fetch"].append(t2 - t1)
            out["latency"] = lat_summary(lats)
            out["latency_parts"] = {k: lat_summary(v) for k, v in parts.items()}
            print(f"  shoal latency: p50 {out['latency']['p50_ms']:.2f} ms over {args.count}", flush=True)

            # (c) DAG
            out["dag"] = {}
            for shape in SHAPES:
                plan = dag_plan(shape, args.dag_tasks)
                tries = []
                for _ in range(args.dag_tries):
                    r = shoal_dag(c, fns, shape, plan, node["id"], args.dag_timeout)
                    tries.append(r)
                    if r["seconds"] is not None or "error" in r:
                        break
                    print(f"  shoal DAG {shape}: STALLED, {r['stranded']} task(s) left queued on the idle node "
                          f"(submitted in {r['submit_s']:.2f}s)", flush=True)
                ok = [t for t in tries if t["seconds"] is not None]
                res = dict(ok[0]) if ok else dict(tries[-1])
                res["stalled_tries"] = sum(1 for t in tries if "stranded" in t)
                res["tries"] = len(tries)
                out["dag"][shape] = res
                if ok:
                    print(f"  shoal DAG {shape}: {res['tasks']} tasks in {res['seconds']:.2f}s "
                          f"(submitting took {res['submit_s']:.2f}s)", flush=True)
                elif "error" in res:
                    cause = last_error_line(Path(node["log"]))
                    if cause:
                        res["error"] += f"; node log: {cause}"
                    print(f"  shoal DAG {shape}: FAILED to submit: {res['error'][:400]}", flush=True)
            try:
                children = [p.pid for p in psutil.Process(node["pid"]).children(recursive=True)]
            except psutil.Error:
                children = []
    finally:
        cluster.destroy()
        pids = ([st["etcd"]["pid"], *(n["pid"] for n in st["nodes"])] if st else []) + children
        time.sleep(0.2)
        left = [p for p in pids if alive(p)]
        print("  shoal cleanup: cluster destroyed" + (f"; STILL ALIVE: {left}" if left else
              ", no etcd/node/worker process left"), flush=True)
    return out


# -- Dask -----------------------------------------------------------------------------------

def run_dask(args) -> dict:
    import psutil
    from distributed import Client, LocalCluster

    noop, inc, add, total = fnbench.noop, fnbench.inc, fnbench.add, fnbench.total
    out: dict = {}
    started: list[int] = []
    lc = LocalCluster(n_workers=SLOTS, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR,
                      # no dashboard; its bare HTTP server (health, metrics) on a free loopback port
                      scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
    try:
        with Client(lc) as client:
            started = [p.pid for p in psutil.Process().children(recursive=True)]
            print(f"dask: {SLOTS} worker processes x 1 thread, scheduler {lc.scheduler_address}; "
                  f"listening: {', '.join(listening([os.getpid(), *started]))}", flush=True)
            check("dask warm-up", client.gather(client.map(noop, range(args.warmup_tasks), pure=False)),
                  list(range(args.warmup_tasks)))
            best = None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                res = client.gather(client.map(noop, range(args.n), pure=False))
                took = time.perf_counter() - t0
                check("dask throughput", res, list(range(args.n)))
                print(f"  dask throughput: {args.n} tasks in {took:.2f}s", flush=True)
                best = took if best is None else min(best, took)
            out["throughput"] = {"seconds": best, "rate": args.n / best}

            for i in range(args.warmup):
                client.submit(noop, i, pure=False).result()
            lats = []
            for i in range(args.count):
                t0 = time.perf_counter()
                v = client.submit(noop, i, pure=False).result()
                lats.append(time.perf_counter() - t0)
                check("dask latency", v, i)
            out["latency"] = lat_summary(lats)
            print(f"  dask latency: p50 {out['latency']['p50_ms']:.2f} ms", flush=True)

            out["dag"] = {}
            for shape in SHAPES:
                plan = dag_plan(shape, args.dag_tasks)
                t0 = time.perf_counter()
                root = build_dag(shape, plan, lambda r: client.map(inc, r, pure=False),
                                 lambda *fs: client.submit(total, *fs, pure=False),
                                 lambda a, b: client.submit(add, a, b, pure=False))
                v = root.result()
                took = time.perf_counter() - t0
                check(f"dask DAG {shape}", v, dag_answer(plan))
                out["dag"][shape] = {"tasks": plan["tasks"], "seconds": took}
                print(f"  dask DAG {shape}: {plan['tasks']} tasks in {took:.2f}s", flush=True)
                del root
    finally:
        lc.close()
        time.sleep(0.5)
        left = []
        for p in started:
            try:
                proc = psutil.Process(p)
                cmd = " ".join(proc.cmdline())
                if "multiprocessing.resource_tracker" in cmd:
                    continue  # the stdlib's helper for spawned processes: it ends with this process
                if proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{p} ({cmd[:80]})")
            except psutil.Error:
                pass
        print("  dask cleanup: cluster closed" + (f"; STILL ALIVE: {left}" if left else
              ", no worker/nanny process left"), flush=True)
    return out


# -- Ray (only inside its own network namespace) ----------------------------------------

def ray_only(args) -> int:
    """Run in `unshare -n`: measure Ray, shut it down, print one JSON line."""
    import ray

    me = os.getpid()
    ns = netns_of(me)
    if ns is None or ns in (netns_of(1), netns_of(os.getppid())):
        print("refusing to run Ray outside a private network namespace", file=sys.stderr)
        return 2
    out: dict = {"netns": ns}
    tmp = tempfile.mkdtemp(prefix="ray-fnb-")
    try:
        ray.init(address="local", num_cpus=SLOTS, include_dashboard=False, _temp_dir=tmp,
                 _node_ip_address="127.0.0.1", log_to_driver=False, logging_level=logging.WARNING)
        try:
            noop, inc, add, total = (ray.remote(getattr(fnbench, n)) for n in ("noop", "inc", "add", "total"))
            out["listening"] = listening(pids_in_netns(ns, set()))
            check("ray warm-up", ray.get([noop.remote(i) for i in range(args.warmup_tasks)]),
                  list(range(args.warmup_tasks)))
            best = None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                res = ray.get([noop.remote(i) for i in range(args.n)])
                took = time.perf_counter() - t0
                check("ray throughput", res, list(range(args.n)))
                best = took if best is None else min(best, took)
            out["throughput"] = {"seconds": best, "rate": args.n / best}

            for i in range(args.warmup):
                ray.get(noop.remote(i))
            lats = []
            for i in range(args.count):
                t0 = time.perf_counter()
                v = ray.get(noop.remote(i))
                lats.append(time.perf_counter() - t0)
                check("ray latency", v, i)
            out["latency"] = lat_summary(lats)

            out["dag"] = {}
            for shape in SHAPES:
                plan = dag_plan(shape, args.dag_tasks)
                t0 = time.perf_counter()
                root = build_dag(shape, plan, lambda r: [inc.remote(i) for i in r], total.remote, add.remote)
                v = ray.get(root)
                took = time.perf_counter() - t0
                check(f"ray DAG {shape}", v, dag_answer(plan))
                out["dag"][shape] = {"tasks": plan["tasks"], "seconds": took}
        finally:
            ray.shutdown()
        # everything Ray started lives in this namespace: wait for it to go, then make sure
        until = time.monotonic() + 15
        while (left := pids_in_netns(ns, {me})) and time.monotonic() < until:
            time.sleep(0.2)
        for pid in left:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        out["left_after_shutdown"] = left
    finally:
        subprocess.run(["rm", "-rf", tmp], check=False)
    print(RAY_TAG + json.dumps(out), flush=True)
    return 0


def run_ray(args) -> dict | None:
    """The --ray-only child in a new network namespace; its JSON, or None."""
    inner = [sys.executable, str(Path(__file__).resolve()), "--ray-only", "--n", str(args.n),
             "--count", str(args.count), "--warmup", str(args.warmup), "--warmup-tasks", str(args.warmup_tasks),
             "--dag-tasks", str(args.dag_tasks), "--repeat", str(args.repeat)]
    script = "ip link set lo up && exec " + " ".join(shlex.quote(a) for a in inner)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")])),
               RAY_USAGE_STATS_ENABLED="0")
    print("ray: starting `unshare -n` child (network namespace with loopback only)", flush=True)
    proc = subprocess.Popen(["unshare", "-n", "sh", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    ns = None
    for _ in range(50):  # note the child's namespace, to sweep it afterwards
        ns = netns_of(proc.pid)
        if ns and ns != netns_of(os.getpid()):
            break
        time.sleep(0.02)
    try:
        stdout, stderr = proc.communicate(timeout=args.ray_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        print(f"  ray: child timed out after {args.ray_timeout:g}s and was killed (pid {proc.pid})")
    left = pids_in_netns(ns, {os.getpid()}) if ns and ns != netns_of(os.getpid()) else []
    for pid in left:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    line = next((ln for ln in stdout.splitlines() if ln.startswith(RAY_TAG)), None)
    if proc.returncode != 0 or line is None:
        print(f"  ray: child exited {proc.returncode} without figures; its stderr ends:\n"
              + "\n".join("    " + ln for ln in stderr.strip().splitlines()[-15:]))
        return None
    out = json.loads(line[len(RAY_TAG):])
    t, lat = out["throughput"], out["latency"]
    print(f"  ray: listening inside its namespace on {', '.join(out.get('listening', [])) or '-'}")
    print(f"  ray throughput: {args.n} tasks in {t['seconds']:.2f}s; latency p50 {lat['p50_ms']:.2f} ms; "
          + "; ".join(f"DAG {s} {d['seconds']:.2f}s" for s, d in out["dag"].items()))
    stray = out.get("left_after_shutdown", []) + left
    print("  ray cleanup: ray.shutdown() done, namespace child exited"
          + (f"; had to kill leftover pids {stray}" if stray else ", no Ray process left"), flush=True)
    return out


# -- report ---------------------------------------------------------------------------------

def fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def ratio(a, b) -> str:
    return "-" if a is None or b is None or not b else f"{a / b:.2f}x"


def report(args, res: dict) -> None:
    s, r, d = res.get("shoal"), res.get("ray"), res.get("dask")
    g = lambda x, *path: _dig(x, path)  # noqa: E731
    print()
    print(f"=== Python function tasks: shoal vs Ray vs Dask, {SLOTS}-way concurrency, {os.cpu_count()} cpus ===")
    print()
    print(f"(a) throughput: {args.n} x noop, best of {args.repeat} (tasks/s, higher is better)")
    sr, rr, dr = g(s, "throughput", "rate"), g(r, "throughput", "rate"), g(d, "throughput", "rate")
    print(f"    {'shoal':<8}{fmt(sr, '10.0f')}   ({fmt(g(s, 'throughput', 'seconds'), '.2f')}s: "
          f"map {fmt(g(s, 'throughput', 'submit_s'), '.2f')}s + gather {fmt(g(s, 'throughput', 'gather_s'), '.2f')}s; "
          f"gather fetches each result in {fmt(g(s, 'throughput', 'fetch_ms_each'), '.2f')} ms)")
    if g(s, "throughput", "all_finished_s"):
        print(f"    {'':<8}{'':>10}   (the node had run all {args.n} by {s['throughput']['all_finished_s']:.2f}s: "
              f"{args.n / s['throughput']['all_finished_s']:.0f} tasks/s before fetching results)")
    print(f"    {'Ray':<8}{fmt(rr, '10.0f', '   skipped')}")
    print(f"    {'Dask':<8}{fmt(dr, '10.0f', '   skipped')}")
    print(f"    ratio shoal/Ray {ratio(sr, rr)}, shoal/Dask {ratio(sr, dr)}")
    print()
    print(f"(b) submit-to-result latency, {args.count} sequential (ms, lower is better)")
    print(f"    {'':<8}{'p50':>9}{'p99':>9}{'mean':>9}{'max':>9}")
    for name, x in (("shoal", s), ("Ray", r), ("Dask", d)):
        lat = g(x, "latency")
        if lat:
            print(f"    {name:<8}{lat['p50_ms']:>9.2f}{lat['p99_ms']:>9.2f}{lat['mean_ms']:>9.2f}{lat['max_ms']:>9.2f}")
        else:
            print(f"    {name:<8}{'skipped':>9}")
    for name, x in (("Ray", r), ("Dask", d)):
        if g(s, "latency") and g(x, "latency"):
            print(f"    ratio shoal/{name}: p50 {ratio(s['latency']['p50_ms'], x['latency']['p50_ms'])}, "
                  f"p99 {ratio(s['latency']['p99_ms'], x['latency']['p99_ms'])}")
    if g(s, "latency_parts"):
        print("    shoal's p50/p99 by part (from the task record; clocks on this one machine):")
        for k, v in s["latency_parts"].items():
            print(f"      {k:<32}{v['p50_ms']:>9.2f}{v['p99_ms']:>9.2f}")
    print()
    print("(c) DAG with futures as arguments (seconds, lower is better; ratio > 1: shoal is slower)")
    print(f"    {'shape':<10}{'tasks':>6}{'shoal':>9}{'Dask':>9}{'Ray':>9}{'shoal/Dask':>12}{'shoal/Ray':>11}")
    notes = []
    for shape in SHAPES:
        sd = g(s, "dag", shape)
        ss, ds, rs = g(s, "dag", shape, "seconds"), g(d, "dag", shape, "seconds"), g(r, "dag", shape, "seconds")
        n = dag_plan(shape, args.dag_tasks)["tasks"]
        if sd is None:
            shoal_txt = "skipped"
        elif ss is not None:
            shoal_txt = f"{ss:.2f}"
        else:
            shoal_txt = "FAILED" if "error" in sd else "STALLED"
        print(f"    {shape:<10}{n:>6}{shoal_txt:>9}{fmt(ds, '9.2f', '  skipped')}{fmt(rs, '9.2f', '  skipped')}"
              f"{ratio(ss, ds):>12}{ratio(ss, rs):>11}")
        if sd and sd.get("stalled_tries"):
            notes.append(f"shoal {shape}: stalled in {sd['stalled_tries']} of {sd['tries']} tries "
                         f"(tasks left queued on an idle node; each try is a fresh DAG)")
        if sd and "error" in sd:
            notes.append(f"shoal {shape}: submitting failed: {sd['error'][:400]}")
    for shape in SHAPES:
        print(f"    {shape}: {dag_plan(shape, args.dag_tasks)['what']}")
    for note in notes:
        print(f"    ! {note}")
    print()
    print("targets:")
    if sr is not None and dr is not None:
        print(f"  (a) shoal >= Dask: {sr:.0f} vs {dr:.0f} tasks/s -> {'MET' if sr >= dr else 'NOT MET'} "
              f"({sr / dr:.2f} of target)")
    else:
        print("  (a) shoal >= Dask: n/a (Dask skipped)")
    if sr is not None and rr is not None:
        want = TARGET_RAY_FRACTION * rr
        print(f"  (a) shoal >= {TARGET_RAY_FRACTION:g} x Ray = {want:.0f} tasks/s: {sr:.0f} -> "
              f"{'MET' if sr >= want else 'NOT MET'} ({sr / want:.2f} of target)")
    else:
        print(f"  (a) shoal >= {TARGET_RAY_FRACTION:g} x Ray: n/a (Ray skipped or failed)")
    if g(s, "latency"):
        p50 = s["latency"]["p50_ms"]
        print(f"  (b) shoal p50 <= {TARGET_P50_MS:g} ms: {p50:.2f} ms -> {'MET' if p50 <= TARGET_P50_MS else 'NOT MET'} "
              f"({TARGET_P50_MS / p50:.2f} of target)")


def _dig(x, path):
    for p in path:
        if not isinstance(x, dict) or p not in x:
            return None
        x = x[p]
    return x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", "-n", type=int, default=None, help="tasks in the throughput run (default 10000)")
    ap.add_argument("--count", type=int, default=None, help="sequential submits in the latency run (default 200)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed submits before the latency run (default 20)")
    ap.add_argument("--warmup-tasks", type=int, default=None,
                    help="tasks in each system's untimed warm-up map (default 200)")
    ap.add_argument("--dag-tasks", type=int, default=None, help="tasks in each DAG (default 1000)")
    ap.add_argument("--repeat", type=int, default=1, help="throughput runs per system; the best counts (default 1)")
    ap.add_argument("--dag-tries", type=int, default=3,
                    help="shoal DAG attempts per shape when one stalls (default 3)")
    ap.add_argument("--dag-timeout", type=float, default=300.0, help="seconds before a shoal DAG is given up")
    ap.add_argument("--ray-timeout", type=float, default=900.0, help="seconds before the Ray child is killed")
    ap.add_argument("--skip-ray", action="store_true", help="do not run Ray")
    ap.add_argument("--skip-dask", action="store_true", help="do not run Dask")
    ap.add_argument("--skip-shoal", action="store_true", help="do not run shoal (peers only)")
    ap.add_argument("--no-fsync", action="store_true",
                    help="run shoal's etcd with --unsafe-no-fsync (not durable; shows what fsync costs)")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes for a smoke run: --n 1000 --count 50 --warmup 5 --dag-tasks 200")
    ap.add_argument("--ray-only", action="store_true", help=argparse.SUPPRESS)  # internal: the namespaced child
    args = ap.parse_args()
    quick = dict(n=1000, count=50, warmup=5, warmup_tasks=50, dag_tasks=200)
    full = dict(n=10000, count=200, warmup=20, warmup_tasks=200, dag_tasks=1000)
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    if args.ray_only:
        return ray_only(args)

    # other work on the machine skews every figure here; show how busy it was
    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    res: dict = {}
    if not args.skip_shoal:
        res["shoal"] = run_shoal(args)
    if not args.skip_dask:
        if importlib.util.find_spec("distributed") is None:
            print("dask: not installed, skipped (pip install -e '.[bench]')")
        else:
            res["dask"] = run_dask(args)
    if not args.skip_ray:
        if importlib.util.find_spec("ray") is None:
            print("ray: not installed, skipped (pip install -e '.[bench]')")
        else:
            res["ray"] = run_ray(args)
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    report(args, res)
    return 0


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the cluster this run started is destroyed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
