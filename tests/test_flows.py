"""Flows end to end on real clusters: the examples against single-process references,
the Python API, stdin/stdout, node loss, failures, cancel and bad records."""
from __future__ import annotations

import collections
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import shoal
from shoal.errors import FlowCancelled, FlowFailed
from shoal.flows.file import parse_flow

pytestmark = pytest.mark.cluster
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WORDS = [f"w{i}" for i in range(3000)]


def make_text(path: Path, lines: int, seed: int) -> None:
    r = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(WORDS))]
    with open(path, "w") as f:
        for _ in range(lines):
            f.write(" ".join(r.choices(WORDS, weights, k=r.randint(1, 15))) + "\n")


def copy_example(tmp: Path, name: str) -> str:
    shutil.copytree(EXAMPLES / "data", tmp / "data", dirs_exist_ok=True)
    return (EXAMPLES / name).read_text()


def run_yaml(c, text: str, base: Path, **kw):
    spec, _ = parse_flow(text, str(base))
    return c.run_flow(spec, str(base), **kw)


def top10_reference(paths) -> list[tuple[str, int]]:
    counts = collections.Counter()
    for p in paths:
        with open(p) as f:
            for line in f:
                counts.update(line.split())
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]


def read_tsv(path: Path) -> list[list[str]]:
    return [line.rstrip("\n").split("\t") for line in open(path)]


@pytest.fixture
def cluster(make_cluster):
    return make_cluster(nodes=2)


def test_wordcount_example_matches_a_single_process_count(cluster, tmp_path):
    text = copy_example(tmp_path, "wordcount.yaml")
    for i in range(3):    # bigger inputs than the example's, with a skewed (Zipf-like) vocabulary
        make_text(tmp_path / "data" / f"text{i + 1}.txt", 20000, seed=i)
    with shoal.connect(cluster.state()["nodes"][0]["api"]) as c:
        result = run_yaml(c, text, tmp_path)
    got = [(w, int(n)) for w, n in read_tsv(tmp_path / "top10.tsv")]
    assert got == top10_reference(sorted((tmp_path / "data").glob("text*.txt")))   # ties: by word
    assert result.attempts == 1
    words_in = sum(i["in"] for s in result.stages if s["name"] == "words" for i in s["instances"])
    counts_in = sum(i["in"] for s in result.stages if s["name"] == "counts" for i in s["instances"])
    words_out = sum(i["out"] for s in result.stages if s["name"] == "words" for i in s["instances"])
    assert words_in == 60000                      # every line read once
    assert counts_in < words_out / 5              # the combiner shipped (word, n) pairs, not every word
    assert not list(tmp_path.glob(".*part*"))     # no temporary parts left behind


def test_sort_example_spills_and_matches_sorted(cluster, tmp_path):
    text = copy_example(tmp_path, "sort.yaml")
    r = random.Random(3)
    with open(tmp_path / "data" / "records.tsv", "w") as f:
        for i in range(60000):
            f.write(f"{r.randrange(10**9):09d}{r.choice('abc')}\t{i}\tpayload-{r.random():.6f}\n")
    # a 1 MB budget makes each sorting instance spill runs to disk and merge them
    text = text.replace("    op: {sort: {key: 1}}", "    op: {sort: {key: 1}}\n    env: {SHOAL_SPILL_BYTES: '1000000'}")
    with shoal.connect(cluster.state()["nodes"][0]["api"]) as c:
        run_yaml(c, text, tmp_path)
    got = (tmp_path / "sorted.tsv").read_bytes().splitlines()
    src = (tmp_path / "data" / "records.tsv").read_bytes().splitlines()
    assert len(got) == len(src)
    assert [line.split(b"\t")[0] for line in got] == sorted(line.split(b"\t")[0] for line in src)
    assert sorted(got) == sorted(src)


def test_join_example_matches_a_dict_join(cluster, tmp_path):
    text = copy_example(tmp_path, "join.yaml")
    with shoal.connect(cluster.state()["nodes"][0]["api"]) as c:
        run_yaml(c, text, tmp_path)
    users = {u: (name, country) for u, name, country in read_tsv(tmp_path / "data" / "users.tsv")}
    want = sorted([o, u, amount, *users[u]] for o, u, amount in read_tsv(tmp_path / "data" / "orders.tsv")
                  if u in users)
    got = sorted(read_tsv(tmp_path / "orders_by_user.tsv"))
    assert got == want and len(want) > 1000


def test_log_pipeline_of_shell_stages_to_stdout(cluster, tmp_path):
    import io
    text = copy_example(tmp_path, "logs.yaml")
    out = io.BytesIO()
    with shoal.connect(cluster.state()["nodes"][0]["api"]) as c:
        run_yaml(c, text, tmp_path, stdout=out)
    shell = subprocess.run(
        "grep -E '\" 5[0-9][0-9] ' data/access.log | awk '{print $1 \"\\t\" $7}' | sort | uniq -c "
        "| sort -k1,1nr -k2 | awk '{print $2 \"\\t\" $3 \"\\t\" $1}'",
        shell=True, cwd=tmp_path, capture_output=True, check=True).stdout
    assert out.getvalue() == shell and shell.count(b"\n") > 50


def test_python_api_word_count_from_items_with_functions(cluster):
    lines = [f"The cat and THE dog {i % 7}" for i in range(2000)]
    with shoal.connect(cluster.state()["nodes"][1]["api"]) as c:
        f = shoal.flow("api-wc")
        rows = (f.from_items(lines)
                .map(lambda rec: rec[0].lower())               # per record: the line, lowered
                .words(parallelism=2)
                .map_batches(lambda df: df.filter(df[df.columns[0]] != "and"))   # per batch
                .count(parallelism=2)
                .top(3, by=2)
                .collect_rows(c))
    assert rows == [("the", "4000"), ("cat", "2000"), ("dog", "2000")]


def test_stdin_to_stdout_through_the_cli(cluster, tmp_path):
    (tmp_path / "upper.yaml").write_text(
        "name: upper\nstages:\n  - name: up\n    read: '-'\n    parallelism: 2\n    command: tr a-z A-Z\n"
        "  - name: out\n    input: {from: up, edge: merge_sorted, key: 1}\n    op: pass\n    write: '-'\n")
    data = "".join(f"k{i:05d}\tv\n" for i in range(5000))
    env = dict(os.environ, SHOAL_ADDRESS=cluster.state()["nodes"][0]["api"])
    p = subprocess.run([sys.executable, "-m", "shoal", "flow", "run", "-q", str(tmp_path / "upper.yaml")],
                       input=data.encode(), capture_output=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    # each instance's share stays in order, and merge_sorted restores the global order
    assert p.stdout.decode() == data.upper()


def test_sigkill_of_a_node_restarts_the_run_and_writes_the_output_once(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, lease_ttl_s=2)
    # a slow instance takes a core: no node (2 cores) holds all three, so one runs off node-1;
    # 64K chunks of a ~400 KB file give each of them lines to work on
    (tmp_path / "in.tsv").write_text("".join(f"{i}\tx\t{'p' * 120}\n" for i in range(3000)))
    text = ("name: slow\nrestarts: 2\nstages:\n"
            "  - name: slow\n    read: {path: in.tsv, chunk: 64K}\n    parallelism: 3\n    cpus: 1\n"
            "    command: \"while read a b c; do printf '%s\\\\t%s\\\\n' $a $b; sleep 0.002; done\"\n"
            "  - name: total\n    input: {from: slow, edge: hash, key: 2}\n    parallelism: 2\n"
            "    op: {reduce: {key: 2, value: 1, fn: sum}}\n    write: {path: out.tsv}\n")
    killed = {}

    def kill_one_busy_node():
        with shoal.connect(cluster.state()["nodes"][0]["api"]) as c2:
            deadline = time.time() + 60
            while time.time() < deadline and not killed:
                for run in c2.flows():
                    st = c2.flow_status(run["id"])
                    nodes = {i["node"] for s in st["stages"] for i in s["instances"]
                             if i["state"] == "running" and i.get("in", 0) > 0} - {None, "node-1"}
                    if st.get("attempt") == 1 and nodes:
                        killed["node"] = sorted(nodes)[0]
                        cluster.kill_node(killed["node"], sig=9)
                        return
                time.sleep(0.2)

    t = threading.Thread(target=kill_one_busy_node)
    t.start()
    try:
        with shoal.connect(cluster.state()["nodes"][0]["api"]) as c:
            result = run_yaml(c, text, tmp_path)
    finally:
        t.join()
    assert killed, "no instance was seen running on a node other than node-1"
    assert result.attempts >= 2
    assert read_tsv(tmp_path / "out.tsv") == [["x", str(sum(range(3000)))]]
    assert not list(tmp_path.glob(".out.tsv*"))


def test_a_failing_command_fails_the_flow_with_its_stderr_and_writes_nothing(cluster, tmp_path):
    (tmp_path / "in.txt").write_text("a\nb\n")
    text = ("name: bad\nstages:\n  - name: boom\n    read: in.txt\n"
            "    command: \"cat >/dev/null; echo 'disk on fire' >&2; exit 7\"\n    write: out.txt\n")
    with shoal.connect(cluster.state()["nodes"][0]["api"]) as c:
        with pytest.raises(FlowFailed) as e:
            run_yaml(c, text, tmp_path)
    assert "boom[0]" in str(e.value) and "disk on fire" in str(e.value) and "status 7" in str(e.value)
    assert not (tmp_path / "out.txt").exists() and not list(tmp_path.glob(".out.txt*"))


def test_flow_cancel_stops_every_instance(cluster, tmp_path):
    (tmp_path / "in.txt").write_text("x\n" * 10)
    text = ("name: long\nstages:\n  - name: sleepy\n    read: in.txt\n    parallelism: 2\n"
            "    command: 'sleep 60; cat'\n    write: {path: out.txt}\n")
    api = cluster.state()["nodes"][0]["api"]
    errors: list[BaseException] = []

    def go():
        with shoal.connect(api) as c:
            try:
                run_yaml(c, text, tmp_path)
            except BaseException as e:
                errors.append(e)

    th = threading.Thread(target=go)
    th.start()
    with shoal.connect(api) as c:
        deadline = time.time() + 30
        while time.time() < deadline:
            runs = c.flows()
            if runs and all(i["state"] == "running" for s in c.flow_status(runs[0]["id"])["stages"]
                            for i in s["instances"]) and c.flow_status(runs[0]["id"])["stages"]:
                break
            time.sleep(0.2)
        t0 = time.time()
        res = c.cancel_flow(runs[0]["id"])
        th.join(30)
        assert res["cancelled_instances"] == 2
        assert errors and isinstance(errors[0], FlowCancelled), errors
        assert time.time() - t0 < 10
        st = c.flow_status(runs[0]["id"])
    assert st["state"] == "cancelled"
    assert all(i["state"] == "cancelled" for s in st["stages"] for i in s["instances"])
    assert not (tmp_path / "out.txt").exists()


def test_bad_records_fail_the_flow_past_the_threshold_with_examples(cluster, tmp_path):
    (tmp_path / "in.tsv").write_text("a\t1\nb\t2\nshort\nc\t3\nalso-short\n")
    flow = ("name: bad-records\nbad_records: {n}\nstages:\n  - name: read\n    read: in.tsv\n    op: pass\n"
            "  - name: sums\n    input: {{from: read, edge: hash, key: 2}}\n"
            "    op: {{reduce: {{key: 1, value: 2, fn: sum}}}}\n    write: {{path: out.tsv, overwrite: true}}\n")
    with shoal.connect(cluster.state()["nodes"][0]["api"]) as c:
        with pytest.raises(FlowFailed) as e:
            run_yaml(c, flow.format(n=1), tmp_path)
        assert "2 bad records" in str(e.value) and "short" in str(e.value)
        assert not (tmp_path / "out.tsv").exists()
        result = run_yaml(c, flow.format(n=5), tmp_path)
    assert result.bad_records == 2
    assert sorted(read_tsv(tmp_path / "out.tsv")) == [["a", "1"], ["b", "2"], ["c", "3"]]


def test_flow_status_and_ls_from_the_cli(cluster, tmp_path):
    text = copy_example(tmp_path, "wordcount.yaml")
    (tmp_path / "wc.yaml").write_text(text)
    env = dict(os.environ, SHOAL_ADDRESS=cluster.state()["nodes"][0]["api"])
    run = subprocess.run([sys.executable, "-m", "shoal", "flow", "run", "-o", "json", str(tmp_path / "wc.yaml")],
                         capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    import json
    run_id = json.loads(run.stdout)["id"]
    ls = subprocess.run([sys.executable, "-m", "shoal", "flow", "ls"], capture_output=True, text=True,
                        env=env, timeout=60)
    assert run_id in ls.stdout and "succeeded" in ls.stdout
    st = subprocess.run([sys.executable, "-m", "shoal", "flow", "status", run_id], capture_output=True,
                        text=True, env=env, timeout=60)
    assert st.returncode == 0 and "words" in st.stdout and "counts" in st.stdout and "top" in st.stdout
    again = subprocess.run([sys.executable, "-m", "shoal", "flow", "cancel", run_id], capture_output=True,
                           text=True, env=env, timeout=60)
    assert again.returncode == 1 and "already ended succeeded" in again.stderr


def test_word_counts_land_in_a_postgres_table_once(cluster, tmp_path, postgres):
    import psycopg
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS word_counts")
        conn.execute("CREATE TABLE word_counts (word text PRIMARY KEY, n bigint NOT NULL)")
    make_text(tmp_path / "t.txt", 3000, seed=9)
    text = ("name: wc-pg\nstages:\n  - name: words\n    read: t.txt\n    parallelism: 2\n    op: words\n"
            "  - name: counts\n    input: {from: words, edge: hash, key: 1}\n    parallelism: 2\n    op: count\n"
            f"    write: {{postgres: '{postgres}', table: word_counts}}\n")
    with shoal.connect(cluster.state()["nodes"][0]["api"]) as c:
        run_yaml(c, text, tmp_path)
    want = collections.Counter(open(tmp_path / "t.txt").read().split())
    with psycopg.connect(postgres) as conn:
        got = dict(conn.execute("SELECT word, n FROM word_counts").fetchall())
        staging = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'word_counts__%'").fetchone()[0]
    assert got == dict(want)
    assert staging == 0


def test_a_full_spill_disk_fails_the_flow_with_the_reason(cluster, tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        r = random.Random(5)
        (tmp_path / "in.tsv").write_text("".join(f"{r.random():.12f}\t{'x' * 40}\n" for _ in range(40000)))
        text = ("name: spill-full\nstages:\n  - name: s\n    read: in.tsv\n    op: {sort: {key: 1}}\n"
                f"    env: {{SHOAL_SPILL_BYTES: '200000', TMPDIR: '{mnt}'}}\n    write: out.tsv\n")
        with shoal.connect(cluster.state()["nodes"][0]["api"]) as c:
            with pytest.raises(FlowFailed) as e:
                run_yaml(c, text, tmp_path)
        assert "No space left on device" in str(e.value) and "s[0]" in str(e.value)
        assert not (tmp_path / "out.tsv").exists()
        assert not any(mnt.iterdir())          # the spill runs were removed
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_range_edge_sort_balances_instances_and_concatenates_in_order(cluster, tmp_path):
    r = random.Random(11)
    lines = [f"{r.choice('abcdefgh')}{r.randrange(10**6):06d}\t{i}\n" for i in range(50000)]
    (tmp_path / "in.tsv").write_text("".join(lines))
    text = ("name: rsort\nstages:\n  - name: read\n    read: in.tsv\n    parallelism: 2\n    op: pass\n"
            "  - name: sorted\n    input: {from: read, edge: range, key: 1}\n    parallelism: 3\n"
            "    op: {sort: {key: 1}}\n    write: {path: out.tsv}\n")
    with shoal.connect(cluster.state()["nodes"][0]["api"]) as c:
        result = run_yaml(c, text, tmp_path)
    got = (tmp_path / "out.tsv").read_text().splitlines(keepends=True)
    assert [x.split("\t")[0] for x in got] == sorted(x.split("\t")[0] for x in lines)
    assert sorted(got) == sorted(lines)
    shares = [i["in"] for s in result.stages if s["name"] == "sorted" for i in s["instances"]]
    assert len(shares) == 3 and min(shares) > 50000 / 3 * 0.6, shares   # sampled ranges: even shares


# -- the run is driven in the cluster --------------------------------------------------------

SLOW = ("name: slow\nrestarts: 2\nstages:\n"
        "  - name: slow\n    read: {path: in.tsv, chunk: 64K}\n    parallelism: 3\n    cpus: 1\n"
        "    command: \"while read a b c; do printf '%s\\\\t%s\\\\n' $a $b; sleep 0.002; done\"\n"
        "  - name: total\n    input: {from: slow, edge: hash, key: 2}\n    parallelism: 2\n"
        "    op: {reduce: {key: 2, value: 1, fn: sum}}\n    write: {path: out.tsv}\n")


def slow_input(tmp_path: Path) -> list[list[str]]:
    """~400 KB in 64K chunks, so each slow instance has lines to work on for a few seconds;
    returns what the single-process reference makes of it."""
    rows = [(i, "x" if i % 3 else "y") for i in range(3000)]
    (tmp_path / "in.tsv").write_text("".join(f"{i}\t{k}\t{'p' * 120}\n" for i, k in rows))
    totals = collections.Counter()
    for i, k in rows:
        totals[k] += i
    return sorted([k, str(n)] for k, n in totals.items())


def wait_until_busy(c, run_id: str | None = None, timeout_s: float = 60) -> dict:
    """The status of a run once its first attempt has instances at work."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for run in ([{"id": run_id}] if run_id else c.flows()):
            st = c.flow_status(run["id"])
            if st["state"] == "running" and any(i["state"] == "running" and i.get("in", 0) > 0
                                                for s in st["stages"] for i in s["instances"]):
                return st
        time.sleep(0.1)
    raise AssertionError("no flow run got busy")


def test_sigkill_of_the_flow_run_command_leaves_the_run_to_the_cluster(cluster, tmp_path):
    want = slow_input(tmp_path)
    (tmp_path / "slow.yaml").write_text(SLOW)
    api = cluster.state()["nodes"][0]["api"]
    cli = subprocess.Popen([sys.executable, "-m", "shoal", "flow", "run", "-q", str(tmp_path / "slow.yaml")],
                           env=dict(os.environ, SHOAL_ADDRESS=api), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with shoal.connect(api) as c:
            st = wait_until_busy(c)
            os.kill(cli.pid, 9)
            assert cli.wait(10) == -9
            result = c.follow_flow(st["id"])
            final = c.flow_status(st["id"])
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert result.attempts == 1 and final["state"] == "succeeded"
    assert sorted(read_tsv(tmp_path / "out.tsv")) == want           # committed, once
    assert not list(tmp_path.glob(".out.tsv*"))


def test_sigkill_of_the_node_driving_a_run_hands_it_to_another(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, lease_ttl_s=2)
    want = slow_input(tmp_path)
    spec, _ = parse_flow(SLOW, str(tmp_path))
    nodes = {n["id"]: n["api"] for n in cluster.state()["nodes"]}
    with shoal.connect(nodes["node-1"]) as c:
        run_id = c.start_flow(spec, str(tmp_path))
        st = wait_until_busy(c, run_id)
    driver = st["driver"]
    assert driver in nodes
    cluster.kill_node(driver, sig=9)
    survivor = next(api for node, api in nodes.items() if node != driver)
    with shoal.connect(survivor) as c:
        result = c.follow_flow(run_id)
        final = c.flow_status(run_id)
    assert final["state"] == "succeeded" and final["driver"] not in (None, driver)
    assert sorted(read_tsv(tmp_path / "out.tsv")) == want           # committed, once
    assert not list(tmp_path.glob(".out.tsv*"))
    # instances on the dead node were lost: the new driver restarted the attempt and said why
    lost = [i for s in st["stages"] for i in s["instances"] if i["node"] == driver]
    assert result.attempts == (2 if lost else 1)
    assert len(final["restarted"]) == result.attempts - 1


def test_detach_then_status_watch_follows_the_run_to_its_end(cluster, tmp_path):
    text = copy_example(tmp_path, "wordcount.yaml")
    (tmp_path / "wc.yaml").write_text(text)
    (tmp_path / "bad.yaml").write_text("name: bad\nstages:\n  - name: boom\n    read: data/text1.txt\n"
                                       "    command: \"cat >/dev/null; echo 'disk on fire' >&2; exit 7\"\n"
                                       "    write: out.txt\n")
    env = dict(os.environ, SHOAL_ADDRESS=cluster.state()["nodes"][0]["api"])

    def shoal_cli(*args):
        return subprocess.run([sys.executable, "-m", "shoal", "flow", *args], capture_output=True, text=True,
                              env=env, timeout=120, stdin=subprocess.DEVNULL)

    started = shoal_cli("run", "--detach", str(tmp_path / "wc.yaml"))
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    assert run_id.startswith("wordcount-")
    watched = shoal_cli("status", run_id, "-w")
    assert watched.returncode == 0, watched.stderr
    assert "succeeded" in watched.stdout + watched.stderr
    got = [(w, int(n)) for w, n in read_tsv(tmp_path / "top10.tsv")]
    assert got == top10_reference(sorted((tmp_path / "data").glob("text*.txt")))
    failed = shoal_cli("status", shoal_cli("run", "-d", str(tmp_path / "bad.yaml")).stdout.strip(), "-w")
    assert failed.returncode == 1 and "boom[0]" in failed.stderr and "disk on fire" in failed.stderr
    # a flow that needs its client cannot be detached
    (tmp_path / "cat.yaml").write_text("name: cat\nstages:\n  - name: c\n    read: '-'\n    op: pass\n"
                                       "    write: '-'\n")
    refused = shoal_cli("run", "-d", str(tmp_path / "cat.yaml"))
    assert refused.returncode == 1 and "cannot be detached" in refused.stderr


def test_a_stdin_flow_fails_when_its_client_dies_and_writes_nothing(cluster, tmp_path):
    (tmp_path / "feed.yaml").write_text(
        "name: fed\nstages:\n  - name: slow\n    read: '-'\n    parallelism: 2\n"
        "    command: \"while read a; do echo $a; sleep 0.01; done\"\n    write: {path: out.txt}\n")
    api = cluster.state()["nodes"][0]["api"]
    cli = subprocess.Popen([sys.executable, "-m", "shoal", "flow", "run", "-q", str(tmp_path / "feed.yaml")],
                           env=dict(os.environ, SHOAL_ADDRESS=api), stdin=subprocess.PIPE,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cli.stdin.write("".join(f"line {i}\n" for i in range(5000)).encode())
        cli.stdin.close()
        with shoal.connect(api) as c:
            st = wait_until_busy(c)
            os.kill(cli.pid, 9)
            cli.wait(10)
            with pytest.raises(FlowFailed) as e:
                c.follow_flow(st["id"])
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert "its input client went away" in str(e.value)
    assert not (tmp_path / "out.txt").exists() and not list(tmp_path.glob(".out.txt*"))


def test_a_bad_run_record_is_refused_naming_the_field(cluster):
    import httpx
    api = cluster.state()["nodes"][0]["api"]
    bad = {"id": "x 1", "name": "x", "base_dir": "/tmp",
           "spec": {"name": "x", "stages": [{"name": "a", "read": "in.txt", "op": "pass", "parallelism": 0}]}}
    r = httpx.post(f"{api}/v1/flows", json=bad)
    assert r.status_code == 422
    problems = r.json()["problems"]
    assert any(p.startswith("id:") for p in problems), problems
    assert any(p.startswith("spec.stages") and "parallelism" in p for p in problems), problems
    running = {"id": "x-1", "name": "x", "base_dir": "/tmp", "state": "running",
               "spec": {"name": "x", "stages": [{"name": "a", "read": "-", "op": "pass", "write": "o.txt"}]}}
    r = httpx.post(f"{api}/v1/flows", json=running)
    assert r.status_code == 422 and any(p.startswith("state:") for p in r.json()["problems"])
    assert any(p.startswith("client:") for p in r.json()["problems"])
