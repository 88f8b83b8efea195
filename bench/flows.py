"""Flows: shoal against single-machine tools on the same generated inputs, in one run.

  (1) word count, top 10 words of a Zipf text (bench/flowdata.py)
        shoal      `shoal flow run` of words (x2) -> hash by word -> count (x2) -> collect -> top 10
        coreutils  tr -s ' ' '\\n' < F | LC_ALL=C sort | uniq -c | sort -rn | head -10
        mawk       mawk '{for(i=1;i<=NF;i++)c[$i]++} END{...}' F | sort -rn | head -10
        dask bag   read_text(F, blocksize="64MiB").str.split().flatten().frequencies().topk(10)
                   with the 2-process scheduler
        polars     one process: scan_csv of whole lines, split, explode, group_by, top 10
                   (streaming engine); its answer is the one the others are checked against
  (2) sort of a key<TAB>payload TSV by its key
        shoal      `shoal flow run`: read (x2) -> range edge on sampled keys -> sort (x2),
                   the two sorted parts committed as one file
        coreutils  LC_ALL=C sort -t TAB -k1,1 -S 25% F -o OUT (both cores)
        polars     one process: read_csv, sort, write_csv
                   shoal's and polars' outputs must be as large as the input and have the
                   same key column as coreutils'

Every tool is a separate process timed from spawn to exit (shoal: the CLI, against a
1-node cluster with --cpus 2 started beforehand and destroyed before the peers run).
Inputs are read once before each section so every tool finds them in the page cache.
Ratios are peer seconds / shoal seconds: above 1 means shoal is faster.

Targets: word count of 1 GB <= 12 s (checked as a rate at other sizes); shoal's sort no
slower than coreutils'.

Run: python bench/flows.py [--size 1G|200M] [--only wordcount|sort] [--skip-shoal]
                           [--peers coreutils,mawk,dask,polars] [--repeat 1] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
import flowdata  # noqa: E402
from map_throughput import shoal_cli  # noqa: E402

TARGET_WC_SECONDS_PER_GIB = 12.0   # word count: 1 GB in <= 12 s
WC_PEERS = ("coreutils", "mawk", "dask", "polars")
SORT_PEERS = ("coreutils", "polars")
INSTALL = {"mawk": "apt-get install -y mawk", "dask": "pip install 'dask[bag]'  (or pip install -e '.[bench]')",
           "polars": "pip install -e '.[flows]'", "coreutils": "apt-get install -y coreutils"}
CHILD_TAG = "FLOWBENCH-RESULT "

_running: dict[int, subprocess.Popen] = {}   # pid -> child being timed (its own process group)
_out = sys.stdout


def say(*a, **kw) -> None:
    print(*a, **kw, file=_out, flush=True)


# -- timed child processes ---------------------------------------------------------------

def run_timed(argv: list[str], cwd: Path, timeout_s: float, env: dict | None = None) -> dict:
    """Run argv in its own process group; wall seconds from spawn to exit, CPU seconds of
    it and the children it waited for, exit status, stdout and stderr."""
    out_path, err_path = cwd / ".stdout", cwd / ".stderr"
    with open(out_path, "wb") as so, open(err_path, "wb") as se:
        spawned = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=so, stderr=se, cwd=cwd,
                                start_new_session=True, env=env)
        _running[proc.pid] = proc
        timed_out = threading.Event()

        def on_timeout():
            timed_out.set()
            kill_group(proc.pid)
        timer = threading.Timer(timeout_s, on_timeout)
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
            took = time.perf_counter() - t0
        except BaseException:   # SIGTERM / Ctrl-C while it runs: it goes too
            kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
            _running.pop(proc.pid, None)
        proc.returncode = os.waitstatus_to_exitcode(status)
    # whatever it started and left behind in its group goes too
    for pid in stragglers(proc.pid, spawned):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    res = {"seconds": took, "cpu_s": ru.ru_utime + ru.ru_stime, "rc": proc.returncode,
           "stdout": out_path.read_bytes(), "stderr": err_path.read_bytes(), "timed_out": timed_out.is_set()}
    out_path.unlink(missing_ok=True)
    err_path.unlink(missing_ok=True)
    return res


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stragglers(pgid: int, since: float) -> list[int]:
    """Processes still in group `pgid` that were created after `since` (ours, not a
    newcomer that happens to reuse the number)."""
    import psutil
    out = []
    for p in psutil.process_iter(["create_time"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["create_time"] >= since - 1:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def stop_running() -> None:
    """Kill the process group of every child still being timed (on SIGTERM / Ctrl-C)."""
    for pid, proc in list(_running.items()):
        kill_group(pid)
        try:
            proc.wait(5)
        except (subprocess.TimeoutExpired, ChildProcessError):
            pass
        _running.pop(pid, None)


def tail(b: bytes, n: int = 1500) -> str:
    s = b.decode(errors="replace").strip()
    return ("..." + s[-n:]) if len(s) > n else s


def failed(res: dict, what: str, timeout_s: float) -> str | None:
    if res["timed_out"]:
        return f"{what}: killed after the {timeout_s:.0f}s timeout"
    if res["rc"] != 0:
        return f"{what}: exited {res['rc']}; stderr: {tail(res['stderr']) or '(empty)'}"
    return None


def warm(path: Path) -> float:
    """Read a file once so that every tool finds it in the page cache."""
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass
    return time.perf_counter() - t0


# -- peers run in this file as child processes (--child NAME ...) ------------------------------

def child_polars_wordcount(src: str) -> dict:
    import polars as pl
    lines = pl.scan_csv(src, has_header=False, separator="\x1f", quote_char=None,
                        new_columns=["line"], schema={"line": pl.String})
    top = (lines.select(pl.col("line").str.split(" ").explode().alias("word"))
           .group_by("word").agg(pl.len().alias("n"))
           .top_k(10, by="n").collect(engine="streaming"))
    return {"top": [[w, int(n)] for w, n in top.iter_rows()]}


def child_dask_wordcount(src: str) -> dict:
    import dask.bag as db
    bag = db.read_text(src, blocksize="64MiB").str.split().flatten().frequencies().topk(10, key=1)
    top = bag.compute(scheduler="processes", num_workers=2)
    return {"top": [[w, int(n)] for w, n in top]}


def child_polars_sort(src: str, dst: str) -> dict:
    import polars as pl
    df = pl.read_csv(src, has_header=False, separator="\t", quote_char=None,
                     new_columns=["key", "payload"], schema={"key": pl.String, "payload": pl.String})
    df.sort("key").write_csv(dst, separator="\t", include_header=False, quote_style="never")
    return {"rows": df.height}


CHILDREN = {"polars-wordcount": child_polars_wordcount, "dask-wordcount": child_dask_wordcount,
            "polars-sort": child_polars_sort}


def child_main(name: str, args: list[str]) -> int:
    t0 = time.perf_counter()
    res = CHILDREN[name](*args)
    res["inner_s"] = time.perf_counter() - t0   # without interpreter start-up and imports
    print(CHILD_TAG + json.dumps(res), flush=True)
    return 0


def child_result(stdout: bytes) -> dict:
    for line in stdout.decode(errors="replace").splitlines():
        if line.startswith(CHILD_TAG):
            return json.loads(line[len(CHILD_TAG):])
    raise ValueError("no result line in its output")


def child_argv(name: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", name, *args]


# -- word count -------------------------------------------------------------------------------

def parse_top(text: str) -> list[tuple[str, int]]:
    """Lines of `count word`, `count<TAB>word` or `word<TAB>count` -> [(word, count)]."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        a, b = parts
        if b.isdigit() and not a.isdigit():
            out.append((a, int(b)))
        elif a.isdigit():
            out.append((b, int(a)))
    return out


def compare_top(got: list, want: list) -> str | None:
    """None when `got` is the same top 10 as `want` (words tied at the 10th count may differ)."""
    got = [(str(w), int(n)) for w, n in got]
    want = [(str(w), int(n)) for w, n in want]
    if sorted((n for _, n in got), reverse=True) != sorted((n for _, n in want), reverse=True):
        return f"counts {sorted((n for _, n in got), reverse=True)} != {sorted((n for _, n in want), reverse=True)}"
    floor = min(n for _, n in want) if want else 0
    g = {w: n for w, n in got if n > floor}
    w = {w: n for w, n in want if n > floor}
    if g != w:
        return f"words {sorted(g.items(), key=lambda x: -x[1])} != {sorted(w.items(), key=lambda x: -x[1])}"
    return None


WORDCOUNT_YAML = """\
name: wordcount
stages:
  - name: words
    read: {src}
    parallelism: 2
    op: words
  - name: counts
    input: {{from: words, edge: hash, key: 1}}
    parallelism: 2
    op: count
  - name: top
    input: {{from: counts, edge: collect}}
    op: {{top: {{k: 10, by: 2}}}}
    write: {{path: {dst}, overwrite: true}}
"""

SORT_YAML = """\
name: sort
stages:
  - name: read
    read: {src}
    parallelism: 2
    op: pass
  - name: sorted
    input: {{from: read, edge: range, key: 1}}
    parallelism: 2
    op: {{sort: {{key: 1}}}}
    write: {{path: {dst}, overwrite: true}}
"""


def wordcount_peer(name: str, src: Path, work: Path, timeout_s: float) -> dict:
    q = shlex.quote(str(src))
    if name == "coreutils":
        argv = ["bash", "-c", f"tr -s ' ' '\\n' < {q} | LC_ALL=C sort | uniq -c | sort -rn | head -10"]
    elif name == "mawk":
        argv = ["bash", "-c", "mawk '{for(i=1;i<=NF;i++)c[$i]++} END{for(w in c)print c[w]\"\\t\"w}' "
                f"{q} | sort -rn | head -10"]
    else:
        argv = child_argv(f"{name}-wordcount", str(src))
    res = run_timed(argv, work, timeout_s)
    out = {"seconds": res["seconds"], "cpu_s": res["cpu_s"]}
    err = failed(res, name, timeout_s)
    if err:
        return {**out, "error": err}
    if name in ("coreutils", "mawk"):
        out["top"] = parse_top(res["stdout"].decode(errors="replace"))
    else:
        try:
            got = child_result(res["stdout"])
        except ValueError as e:
            return {**out, "error": f"{name}: {e}; stderr: {tail(res['stderr'])}"}
        out["top"], out["inner_s"] = got["top"], got["inner_s"]
    return out


# -- sort ------------------------------------------------------------------------------------------

def digest(path: Path, keys_only: bool) -> str:
    """md5 of the file, or of its first tab-separated column (`cut -f1`)."""
    q = shlex.quote(str(path))
    cmd = f"cut -f1 {q} | md5sum" if keys_only else f"md5sum < {q}"
    return subprocess.run(["bash", "-c", cmd], check=True, capture_output=True, text=True).stdout.split()[0]


def sort_peer(name: str, src: Path, work: Path, timeout_s: float) -> dict:
    dst = work / f"sorted-{name}.tsv"
    if name == "coreutils":
        argv = ["bash", "-c", f"LC_ALL=C sort -t \"$(printf '\\t')\" -k1,1 -S 25% {shlex.quote(str(src))} "
                              f"-o {shlex.quote(str(dst))}"]
    else:
        argv = child_argv("polars-sort", str(src), str(dst))
    res = run_timed(argv, work, timeout_s)
    out = {"seconds": res["seconds"], "cpu_s": res["cpu_s"]}
    try:
        err = failed(res, name, timeout_s)
        if err:
            return {**out, "error": err}
        if name == "polars":
            out["inner_s"] = child_result(res["stdout"])["inner_s"]
        out.update(sort_output(dst))
    finally:
        dst.unlink(missing_ok=True)
    return out


def sort_output(dst: Path) -> dict:
    if not dst.exists():
        return {"error": f"no output file {dst}"}
    return {"out_bytes": dst.stat().st_size, "keys_md5": digest(dst, True), "md5": digest(dst, False)}


def check_sort(res: dict, in_bytes: int, ref: dict | None) -> str | None:
    if "error" in res:
        return None
    if res["out_bytes"] != in_bytes:
        return f"output is {res['out_bytes']:,} bytes, input {in_bytes:,}"
    if ref and "keys_md5" in ref and res["keys_md5"] != ref["keys_md5"]:
        return "key column differs from coreutils'"
    return None


# -- shoal ---------------------------------------------------------------------------------------

def cluster_cpu(st: dict) -> float:
    """CPU seconds so far of etcd and the node, with the children the node has reaped."""
    import psutil
    total = 0.0
    for pid in [st["etcd"]["pid"], *(n["pid"] for n in st["nodes"])]:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def node_descendants(st: dict) -> list[int]:
    """PIDs the nodes have started and not yet reaped (flow instances still running)."""
    import psutil
    out = []
    for n in st["nodes"]:
        try:
            out += [c.pid for c in psutil.Process(n["pid"]).children(recursive=True)]
        except psutil.Error:
            pass
    return out


def log_tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def shoal_flow(kind: str, src: Path, work: Path, api: str, st: dict, timeout_s: float) -> dict:
    """One `shoal flow run` of the word count or the sort; its figures and output."""
    dst = work / ("top10.tsv" if kind == "wordcount" else "sorted-shoal.tsv")
    spec = work / f"{kind}.yaml"
    spec.write_text((WORDCOUNT_YAML if kind == "wordcount" else SORT_YAML).format(src=src, dst=dst))
    cpu0 = cluster_cpu(st)
    res = run_timed([*shoal_cli(), "flow", "run", str(spec), "--address", api], work, timeout_s)
    out = {"seconds": res["seconds"], "cpu_s": res["cpu_s"] + cluster_cpu(st) - cpu0}
    try:
        err = failed(res, "shoal flow run", timeout_s)
        if err:
            node_log = log_tail(st["nodes"][0]["log"])
            return {**out, "error": err + (f"\nnode log (last lines):\n{node_log}" if node_log else "")}
        m = re.search(r"succeeded in ([0-9.]+)s", res["stderr"].decode(errors="replace"))
        if m:
            out["inner_s"] = float(m.group(1))   # as the CLI reports it, after its own start-up
        if kind == "wordcount":
            if not dst.exists():
                return {**out, "error": f"no output file {dst}"}
            text = dst.read_text(errors="replace")
            out["top"] = parse_top(text)
            if len(out["top"]) != 10 or len(text.splitlines()) != 10:
                out["error"] = f"expected 10 lines `word<TAB>count` in {dst.name}, got: {text[:300]!r}"
        else:
            out.update(sort_output(dst))
    finally:
        dst.unlink(missing_ok=True)
        spec.unlink(missing_ok=True)
    return out


def run_shoal(args, sections: dict, work: Path) -> dict:
    """Start a 1-node cluster, run each section's flow --repeat times, destroy the cluster."""
    from shoal.exec.daemon import alive
    from shoal.cluster.local import LocalCluster
    home = Path(tempfile.mkdtemp(prefix="shoal-bench-flows-"))
    cluster = LocalCluster(home, nodes=1, node_args=["--cpus", "2"])
    results: dict = {}
    st = None
    try:
        try:
            st = cluster.up()
        except Exception as e:  # noqa: BLE001 - report and go on with the peers
            say(f"shoal: the cluster did not start: {type(e).__name__}: {e}")
            return {k: {"error": f"cluster did not start: {e}"} for k in sections}
        api = st["nodes"][0]["api"]
        say(f"shoal: 1 node (--cpus 2) at {api}, node pid {st['nodes'][0]['pid']}, "
            f"etcd pid {st['etcd']['pid']}, home {home}")
        for kind, (src, _) in sections.items():
            warm(src)
            results[kind] = repeated(f"shoal {kind}", args.repeat,
                                     lambda: shoal_flow(kind, src, work, api, st, args.timeout))
    finally:
        started = node_descendants(st) if st else []
        cluster.destroy()
        if st:
            time.sleep(0.2)
            left = [p for p in [st["etcd"]["pid"], *(n["pid"] for n in st["nodes"]), *started] if alive(p)]
            say("  shoal cleanup: cluster destroyed" + (f"; STILL ALIVE: {left}" if left else
                                                        ", no etcd/node/instance process left"))
    return results


# -- driver -------------------------------------------------------------------------------------------

def indent(text: str, pad: str = "    ") -> str:
    return "\n".join(pad + ln for ln in text.splitlines())


def repeated(label: str, times: int, run) -> dict:
    """The best of `times` runs of run(), each reported; stops at the first failure."""
    runs = []
    for _ in range(times):
        r = run()
        runs.append(r)
        say(f"  {label}: " + (f"{r['seconds']:.2f}s" if "error" not in r else
                              f"FAILED after {r['seconds']:.2f}s\n" + indent(r["error"])))
        if "error" in r:
            break
    return best_of(runs)


def best_of(runs: list[dict]) -> dict:
    """The fastest run without an error, or the first failure."""
    bad = [r for r in runs if "error" in r]
    if bad:
        return {**bad[0], "runs": [r["seconds"] for r in runs]}
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "runs": [r["seconds"] for r in runs]}


def missing_peer(name: str) -> str | None:
    """Why a peer cannot run here (and how to install it), or None."""
    if name in ("coreutils", "mawk"):
        tool = "sort" if name == "coreutils" else "mawk"
        return None if shutil.which(tool) else f"{tool} not found ({INSTALL[name]})"
    import importlib.util
    mod = {"dask": "dask.bag", "polars": "polars"}[name]
    try:
        if importlib.util.find_spec(mod.split(".")[0]) is None:
            raise ImportError(mod)
        if name == "dask":
            import dask.bag  # noqa: F401 - needs the bag extra's dependencies
    except ImportError as e:
        return f"cannot import {mod} ({e}); install it with: {INSTALL[name]}"
    return None


def run_peers(args, kind: str, src: Path, work: Path) -> dict:
    peers = [p for p in args.peers if p in (WC_PEERS if kind == "wordcount" else SORT_PEERS)]
    if kind == "sort" and "coreutils" not in peers and "polars" not in peers:
        return {}
    warm(src)
    out: dict = {}
    for name in peers:
        why = missing_peer(name)
        if why:
            say(f"  {name}: skipped, {why}")
            out[name] = {"skipped": why}
            continue
        peer = wordcount_peer if kind == "wordcount" else sort_peer
        out[name] = repeated(f"{name} {kind}", args.repeat, lambda: peer(name, src, work, args.timeout))
    return out


def verify(kind: str, tools: dict, meta: dict) -> str:
    """Mark each tool's result `check`: ok, or MISMATCH with why. The reference's name."""
    if kind == "wordcount":
        usable = {n: r for n, r in tools.items() if "top" in r and "error" not in r}
        ref_name = next((n for n in ("polars", "mawk", "coreutils", "dask") if n in usable), None)
        for r in usable.values():
            why = compare_top(r["top"], usable[ref_name]["top"])
            r["check"] = "ok" if why is None else f"MISMATCH with {ref_name}: {why}"
        return ref_name or "-"
    ref_name = "coreutils" if "keys_md5" in tools.get("coreutils", {}) else None
    ref = tools.get(ref_name) if ref_name else None
    for name, r in tools.items():
        if "out_bytes" in r and "error" not in r:
            why = check_sort(r, meta["bytes"], ref)
            r["check"] = "ok" if why is None else f"MISMATCH: {why}"
            if ref and why is None and name != ref_name:
                r["same_bytes_as_coreutils"] = r["md5"] == ref["md5"]
    return ref_name or "-"


def ratio(peer: dict | None, shoal: dict | None) -> float | None:
    if not peer or not shoal or "error" in peer or "error" in shoal or "seconds" not in peer or "seconds" not in shoal:
        return None
    return peer["seconds"] / shoal["seconds"]


def report(args, res: dict) -> None:
    for kind in ("wordcount", "sort"):
        sec = res.get(kind)
        if not sec:
            continue
        meta = sec["input"]
        mb = meta["bytes"] / 1e6
        title = "word count, top 10" if kind == "wordcount" else "sort by key"
        extra = f", {meta['words']:,} words" if "words" in meta else ""
        say()
        say(f"=== ({'1' if kind == 'wordcount' else '2'}) {title}: {Path(meta['path']).name}, "
            f"{mb:,.0f} MB, {meta['lines']:,} lines{extra}; best of {args.repeat} ===")
        say(f"{'tool':<11}{'seconds':>9}{'MB/s':>8}{'cpu s':>8}  {'peer/shoal':>10}  check")
        tools = sec["tools"]
        shoal = tools.get("shoal")
        for name, r in tools.items():
            if "skipped" in r:
                say(f"{name:<11}{'skipped':>9}  {r['skipped']}")
                continue
            secs = f"{r['seconds']:.2f}" if "error" not in r else "FAILED"
            rate = f"{mb / r['seconds']:.1f}" if "error" not in r else "-"
            cpu = f"{r['cpu_s']:.1f}" if r.get("cpu_s") is not None else "-"
            rt = "-" if name == "shoal" else (f"{ratio(r, shoal):.2f}x" if ratio(r, shoal) else "-")
            chk = r.get("check", "-" if "error" not in r else r["error"].splitlines()[0][:70])
            if r.get("same_bytes_as_coreutils") is not None:
                chk += " (identical bytes)" if r["same_bytes_as_coreutils"] else " (same keys, other bytes)"
            say(f"{name:<11}{secs:>9}{rate:>8}{cpu:>8}  {rt:>10}  {chk}")
        for name, r in tools.items():
            if str(r.get("check", "")).startswith("MISMATCH"):
                say(f"!!! MISMATCH: {name}: {r['check']}")
        notes = [f"{n} {r['inner_s']:.2f}s" for n, r in tools.items() if "inner_s" in r and "error" not in r]
        if notes:
            say("(without interpreter start-up and imports: " + ", ".join(notes) + ")")
        if "cpu_s" in (shoal or {}):
            say("(shoal's cpu s: the CLI, the node and etcd, and the instances the node has reaped)")
        if kind == "wordcount" and sec.get("reference"):
            say(f"(reference for the check: {sec['reference']})")
        t = sec.get("target")
        if t:
            say(f"target: {t['text']} -> {t['verdict']}")


def target_for(kind: str, tools: dict, meta: dict) -> dict:
    s = tools.get("shoal")
    ok = s and "error" not in s and s.get("check") == "ok"
    if kind == "wordcount":
        want_s = TARGET_WC_SECONDS_PER_GIB * meta["bytes"] / 1024 ** 3
        text = (f"shoal word count of 1 GB <= {TARGET_WC_SECONDS_PER_GIB:g} s"
                + (f" (here {meta['bytes'] / 1e6:,.0f} MB: <= {want_s:.2f} s)" if meta["size"] != 1024 ** 3 else ""))
        if not s or "skipped" in s:
            return {"text": text, "verdict": "n/a (shoal not run)", "pass": None}
        if not ok:
            return {"text": text, "verdict": "FAIL (shoal failed or wrong)", "pass": False}
        met = s["seconds"] <= want_s
        return {"text": text, "verdict": f"{s['seconds']:.2f} s: {'PASS' if met else 'FAIL'} "
                                         f"({want_s / s['seconds']:.2f} of target)", "pass": met}
    text = "shoal sort no slower than coreutils sort"
    c = tools.get("coreutils")
    if not s or "skipped" in s:
        return {"text": text, "verdict": "n/a (shoal not run)", "pass": None}
    if not c or "error" in c or "skipped" in c:
        return {"text": text, "verdict": "n/a (coreutils sort did not run)", "pass": None}
    if not ok:
        return {"text": text, "verdict": "FAIL (shoal failed or wrong)", "pass": False}
    met = s["seconds"] <= c["seconds"]
    return {"text": text, "verdict": f"{s['seconds']:.2f} s vs {c['seconds']:.2f} s: "
                                     f"{'PASS' if met else 'FAIL'} ({c['seconds'] / s['seconds']:.2f}x)", "pass": met}


def summary(args, res: dict) -> dict:
    """The JSON summary: figures only (no tool output)."""
    out = {k: v for k, v in res.items() if k not in ("wordcount", "sort")}
    for kind in ("wordcount", "sort"):
        sec = res.get(kind)
        if not sec:
            continue
        mb = sec["input"]["bytes"] / 1e6
        tools = {}
        for name, r in sec["tools"].items():
            t = dict(r)
            if "seconds" in r and "error" not in r:
                t["mb_s"] = mb / r["seconds"]
                if name != "shoal":
                    t["ratio_peer_over_shoal"] = ratio(r, sec["tools"].get("shoal"))
            tools[name] = t
        out[kind] = {**sec, "tools": tools}
    return out


def main() -> int:
    global _out
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="input size per section: 1G (default), 200M, ...")
    ap.add_argument("--only", choices=("wordcount", "sort"), help="run one section only")
    ap.add_argument("--skip-shoal", action="store_true", help="peers only")
    ap.add_argument("--peers", default=",".join(WC_PEERS),
                    help="comma-separated peers to run (default coreutils,mawk,dask,polars; "
                         "the sort uses coreutils and polars)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool; the fastest counts (default 1)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before one run is killed")
    ap.add_argument("--data", type=Path, default=None,
                    help="where inputs are cached (default $SHOAL_BENCH_DATA or bench/.data)")
    ap.add_argument("--json", action="store_true",
                    help="print a JSON summary on stdout (the readable report goes to stderr)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)   # internal: one peer's process
    args = ap.parse_args()
    if args.child:
        return child_main(args.child[0], args.child[1:])
    try:
        size = flowdata.parse_size(args.size)
    except ValueError as e:
        ap.error(str(e))
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in args.peers if p not in WC_PEERS]
    if unknown:
        ap.error(f"--peers: unknown {unknown[0]!r}; expected some of {', '.join(WC_PEERS)}")
    if args.repeat < 1:
        ap.error("--repeat: must be at least 1")
    if args.json:
        _out = sys.stderr

    kinds = [args.only] if args.only else ["wordcount", "sort"]
    # other work on the machine skews every figure here; show how busy it was
    res: dict = {"machine": {"cpus": os.cpu_count(), "load_start": os.getloadavg()[0]}, "size": size}
    say(f"machine: {os.cpu_count()} cpus, load average {res['machine']['load_start']:.2f} at start")
    if res["machine"]["load_start"] > 0.5:
        say("  the machine is busy: every figure below is skewed by the other work")
    sections = {}
    for kind in kinds:
        ensure = flowdata.ensure_zipf_text if kind == "wordcount" else flowdata.ensure_sort_tsv
        path, meta = ensure(size, args.data, out=_out)
        sections[kind] = (path, {**meta, "path": str(path)})
        say(f"input {kind}: {path} ({meta['bytes'] / 1e6:,.0f} MB, {meta['lines']:,} lines)")

    work = Path(tempfile.mkdtemp(prefix="shoal-bench-flows-out-"))
    tools: dict = {k: {} for k in kinds}
    try:
        if args.skip_shoal:
            for k in kinds:
                tools[k]["shoal"] = {"skipped": "--skip-shoal"}
        else:
            for k, r in run_shoal(args, sections, work).items():
                tools[k]["shoal"] = r
        for kind in kinds:
            tools[kind].update(run_peers(args, kind, sections[kind][0], work))
    finally:
        stop_running()
        shutil.rmtree(work, ignore_errors=True)

    res["machine"]["load_end"] = os.getloadavg()[0]
    say(f"load average {res['machine']['load_end']:.2f} at end")
    for kind in kinds:
        meta = sections[kind][1]
        ref = verify(kind, tools[kind], meta)
        res[kind] = {"input": meta, "tools": tools[kind], "reference": ref}
        res[kind]["target"] = target_for(kind, tools[kind], meta)
    report(args, res)
    if args.json:
        print(json.dumps(summary(args, res), indent=1, default=str))
    return 0


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C: the cluster and the child being timed are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
