"""The `shoal` command as a user runs it: a subprocess per command, against a real local
cluster found through SHOAL_HOME; exit codes, printed output, and `Error:` messages."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from shoal.cluster.local import LocalCluster

pytestmark = pytest.mark.cluster

ID = re.compile(r"^t[0-9a-z]{18}$")


def shoal_env(home: Path) -> dict:
    env = dict(os.environ)
    env["SHOAL_HOME"] = str(home)
    env.pop("SHOAL_ADDRESS", None)
    env.pop("SHOAL_ETCD", None)
    env["COLUMNS"] = "200"
    return env


def run(home: Path, *args: str, timeout: float = 180, cwd: Path | None = None,
        env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal", *args], env={**shoal_env(home), **(env or {})}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def assert_clean_error(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode != 0, p
    assert p.stderr.startswith("Error: "), p.stderr
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    for w in words:
        assert w in p.stderr, (w, p.stderr)


@pytest.fixture(scope="module")
def home():
    """One single-node cluster for the module; the CLI finds it through SHOAL_HOME."""
    h = Path(tempfile.mkdtemp(prefix="shoal-test-cli-"))
    c = LocalCluster(h, nodes=1, lease_ttl_s=5)
    try:
        c.up(timeout_s=120)
        yield h
    finally:
        c.destroy()


@pytest.fixture
def sh(home):
    """Run `shoal ARGS...` against the module's cluster."""
    return lambda *args, **kw: run(home, *args, **kw)


def job_tasks(sh, job: str) -> list[dict]:
    p = sh("ls", "--job", job, "--limit", "1000", "-o", "json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


# -- up / down -------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_up_twice_is_harmless_and_down_stops_it(tmp_path):
    home = tmp_path / "home"
    pids: list[int] = []
    try:
        first = run(home, "up", "--node-loss-retries", "1", "-o", "json")
        assert first.returncode == 0, first.stderr
        st = json.loads(first.stdout)
        pids = [st["etcd"]["pid"]] + [n["pid"] for n in st["nodes"]]
        assert all(psutil.pid_exists(p) for p in pids)
        # its nodes take the cluster's node-loss limit, and exit if etcd stays gone a minute
        argv = " ".join(psutil.Process(st["nodes"][0]["pid"]).cmdline())
        assert "--node-loss-retries 1" in argv and "--etcd-gone-exit 60" in argv, argv

        second = run(home, "up")
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stdout
        for n in st["nodes"]:
            assert f"pid {n['pid']}" in second.stdout and n["api"] in second.stdout

        third = run(home, "up", "-o", "json")
        st3 = json.loads(third.stdout)
        assert [st3["etcd"]["pid"]] + [n["pid"] for n in st3["nodes"]] == pids

        submitted = run(home, "submit", "--wait", "--", "echo", "up-ok")
        assert submitted.returncode == 0 and submitted.stdout == "up-ok\n"
    finally:
        down = run(home, "down")
        if down.returncode != 0:
            LocalCluster(home).down()
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stdout
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.1)
    assert not any(_running(p) for p in pids)
    again = run(home, "down")
    assert again.returncode == 0 and "no shoal cluster was running" in again.stdout


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_commands_say_how_to_start_a_cluster_when_none_runs(tmp_path):
    p = run(tmp_path, "ls")
    assert_clean_error(p, "no shoal cluster is running", "shoal up")


# -- submit, status, ls, logs, cancel, nodes ----------------------------------------------------

def test_submit_prints_an_id_then_status_ls_logs_and_cancel(sh):
    p = sh("submit", "--name", "cli-hi", "--", "echo", "hi")
    assert p.returncode == 0, p.stderr
    tid = p.stdout.strip()
    assert ID.match(tid), p.stdout

    waited = sh("wait", tid)
    assert waited.returncode == 0, waited.stderr

    p = sh("status", tid, "-o", "json")
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["id"] == tid and st["state"] == "succeeded" and st["exit_code"] == 0
    assert st["spec"]["command"] == ["echo", "hi"] and st["spec"]["name"] == "cli-hi"
    assert st["stdout_tail"] == "hi\n" and st["node"] == "node-1"

    p = sh("status", tid)
    assert p.returncode == 0 and tid in p.stdout and "succeeded" in p.stdout and "echo hi" in p.stdout

    p = sh("ls", "--state", "succeeded", "-o", "json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert tid in [r["id"] for r in rows]
    assert all(r["state"] == "succeeded" for r in rows)
    p = sh("ls", "--name", "cli-hi")
    assert p.returncode == 0 and tid in p.stdout

    p = sh("logs", tid)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hi\n"

    p = sh("cancel", tid)
    assert_clean_error(p, tid, "already ended succeeded", "nothing to cancel")


def test_submit_a_shell_string(sh):
    p = sh("submit", "--wait", "echo $((6*7)) | tr 4 X")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "X2\n"


def test_submit_takes_node_loss_retries_apart_from_retries(sh):
    p = sh("submit", "--retries", "1", "--node-loss-retries", "5", "--", "true")
    assert p.returncode == 0, p.stderr
    st = json.loads(sh("status", p.stdout.strip(), "-o", "json").stdout)
    assert st["spec"]["retries"] == 1 and st["spec"]["node_loss_retries"] == 5
    p = sh("submit", "--node-loss-retries", "-1", "--", "true")
    assert_clean_error(p, "node_loss_retries")


def test_submit_warns_when_no_node_could_ever_run_it_and_status_says_why(sh):
    p = sh("submit", "--cpus", "100", "--", "true")
    assert p.returncode == 0, p.stderr
    tid = p.stdout.strip()
    assert ID.match(tid), p.stdout
    assert p.stderr.startswith("Warning: no live node can run it: no node has 100 cpus; the largest offers"), p.stderr
    assert "Traceback" not in p.stderr
    deadline = time.monotonic() + 60
    while "no node can run it" not in (st := sh("status", tid)).stdout and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "queued" in st.stdout and "no node has 100 cpus; the largest offers" in st.stdout, st.stdout
    assert sh("cancel", tid).returncode == 0


def test_submit_wait_prints_output_and_exits_with_the_tasks_code(sh):
    p = sh("submit", "--wait", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert p.returncode == 3, p
    assert p.stdout == "out\n"
    assert "err\n" in p.stderr and "exit code 3" in p.stderr
    assert "Traceback" not in p.stderr


def test_submit_wait_prints_the_whole_output_not_only_the_tail(sh):
    p = sh("submit", "--wait", "--", "seq", "1", "5000")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "".join(f"{i}\n" for i in range(1, 5001))


def test_cancel_a_running_task(sh):
    p = sh("submit", "--", "sleep", "60")
    tid = p.stdout.strip()
    assert ID.match(tid), p
    p = sh("cancel", tid)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{tid}: cancel")
    p = sh("wait", tid, "-o", "json")
    assert p.returncode == 1
    assert json.loads(p.stdout)[0]["state"] == "cancelled"


def test_bad_input_is_an_error_without_traceback(sh):
    p = sh("submit", "--memory", "2 gigs", "--", "true")
    assert_clean_error(p, "memory", "2 gigs", "512M")
    p = sh("submit", "--env", "NOEQUALS", "--", "true")
    assert_clean_error(p, "--env", "NAME=VALUE")


def test_logs_and_status_of_an_unknown_id_are_errors(sh):
    for cmd in ("logs", "status", "cancel"):
        p = sh(cmd, "t0000000000nosuchid")
        assert_clean_error(p, "no task", "t0000000000nosuchid")


def test_nodes_json(sh):
    p = sh("nodes", "-o", "json")
    assert p.returncode == 0, p.stderr
    nodes = json.loads(p.stdout)
    assert len(nodes) == 1
    n = nodes[0]
    for key in ("id", "host", "pid", "api", "machine_type", "cpus", "free_cpus", "running", "heartbeat_age_s"):
        assert key in n, key
    assert n["id"] == "node-1" and n["api"].startswith("http://127.0.0.1:") and psutil.pid_exists(n["pid"])
    assert n["machine_type"] == "local" and n["cpus"] > 0 and 0 <= n["free_cpus"] <= n["cpus"]
    assert n["running"] >= 0 and n["heartbeat_age_s"] >= 0
    p = sh("nodes")
    assert p.returncode == 0 and "node-1" in p.stdout


# -- map ---------------------------------------------------------------------------------------

def test_map_keep_order(sh, tmp_path):
    p = sh("map", "-k", "echo {}", ":::", "c", "a", "b", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["c", "a", "b"]


def test_map_every_combination_of_two_sources(sh, tmp_path):
    p = sh("map", "-k", "echo {1}-{2}", ":::", "a", "b", ":::", "1", "2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["a-1", "a-2", "b-1", "b-2"]


def test_map_without_placeholder_appends_the_input(sh, tmp_path):
    p = sh("map", "-k", "echo pre", ":::", "x", "y z", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["pre x", "pre y z"]


def test_map_reads_inputs_from_a_file(sh, tmp_path):
    f = tmp_path / "inputs.txt"
    f.write_text("one\ntwo words\n\nthree\n")
    p = sh("map", "-k", "echo [{}]", "::::", str(f), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["[one]", "[two words]", "[three]"]
    p = sh("map", "echo {}", "::::", str(tmp_path / "missing.txt"), cwd=tmp_path)
    assert_clean_error(p, "missing.txt")


def test_map_joblog(sh, tmp_path):
    log = tmp_path / "joblog"
    p = sh("map", "--joblog", str(log), "sh -c 'exit {}'", ":::", "0", "1", "2", cwd=tmp_path)
    assert p.returncode == 2, p
    lines = log.read_text().splitlines()
    assert lines[0].split("\t") == ["Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval",
                                    "Signal", "Command"]
    rows = sorted((line.split("\t") for line in lines[1:]), key=lambda r: int(r[0]))
    assert len(rows) == 3
    for i, row in enumerate(rows):
        assert len(row) == 9, row
        seq, host, start, runtime, send, receive, exitval, sig, command = row
        assert int(seq) == i + 1 and host == "node-1"
        assert float(start) > 0 and float(runtime) >= 0
        assert int(exitval) == i and int(sig) == 0
        assert command == f"sh -c 'exit {i}'"


def test_map_exit_status_is_the_number_of_failures(sh, tmp_path):
    p = sh("map", "test {} -lt 2", ":::", "1", "2", "3", "0", cwd=tmp_path)
    assert p.returncode == 2, p
    assert "Traceback" not in p.stderr


def test_map_retries(sh, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    job = f"retry-{uuid.uuid4().hex[:8]}"
    cmd = f"sh -c 'test -e {marks}/x.{{}} || {{ touch {marks}/x.{{}}; exit 1; }}; echo ok {{}}'"
    p = sh("map", "-k", "--retries", "2", "--backoff", "0", "--job", job, cmd, ":::", "1", "2", cwd=tmp_path)
    assert p.returncode == 0, p
    assert p.stdout.splitlines() == ["ok 1", "ok 2"]
    recs = job_tasks(sh, job)
    assert len(recs) == 2
    for r in recs:
        assert r["state"] == "succeeded" and r["attempt"] == 2
        assert [a["exit_code"] for a in r["attempts"]] == [1, 0]
    # without retries the same command fails once per input
    marks2 = tmp_path / "marks2"
    marks2.mkdir()
    p = sh("map", cmd.replace(str(marks), str(marks2)), ":::", "1", "2", cwd=tmp_path)
    assert p.returncode == 2


def test_map_output_json(sh, tmp_path):
    p = sh("map", "-o", "json", "--job", "json-job", "echo {}", ":::", "b", "a", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["job"] == "json-job" and doc["seconds"] >= 0
    assert [t["stdout_tail"] for t in doc["tasks"]] == ["b\n", "a\n"]  # input order
    assert all(t["state"] == "succeeded" and t["exit_code"] == 0 and t["spec"]["job"] == "json-job"
               for t in doc["tasks"])


def test_map_dry_run_runs_nothing(sh, tmp_path):
    p = sh("map", "--dry-run", "gzip -k {}", ":::", "a b.log", "c.log", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["gzip -k 'a b.log'", "gzip -k c.log"]


@pytest.mark.timeout(300)
def test_map_halt_soon_starts_nothing_after_the_failure(sh, tmp_path):
    # warm up: a node that just ran short tasks claims a few ahead of its free slots
    assert sh("map", "true {}", ":::", *map(str, range(20)), cwd=tmp_path).returncode == 0
    job = f"halt-{uuid.uuid4().hex[:8]}"
    inputs = [str(i) for i in range(1, 13)]
    p = sh("map", "--halt", "soon,fail=1", "--job", job,
           "sh -c 'if [ {} = 1 ]; then exit 1; fi; sleep 2'", ":::", *inputs, cwd=tmp_path)
    assert p.returncode == 1, p   # the failed job's exit status, as parallel's
    assert "halting after 1 failure" in p.stderr
    recs = job_tasks(sh, job)
    states = [r["state"] for r in recs]
    assert all(s in ("succeeded", "failed", "cancelled") for s in states), states
    assert states.count("failed") == 1
    failure = next(r for r in recs if r["state"] == "failed")
    # those already running when it failed may finish; not one starts after it
    for r in recs:
        for a in r["attempts"]:
            assert a["started_at"] <= failure["finished_at"], (r["id"], a, failure)
    assert len(recs) < len(inputs)


# -- where a task runs ------------------------------------------------------------------------

def test_a_task_runs_in_the_directory_it_was_submitted_from(sh, tmp_path):
    (tmp_path / "sub").mkdir()
    p = sh("submit", "--wait", "--", "pwd", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout == f"{tmp_path}\n", p
    p = sh("submit", "--wait", "--cwd", "sub", "--", "pwd", cwd=tmp_path)   # relative: from here
    assert p.returncode == 0 and p.stdout == f"{tmp_path / 'sub'}\n", p


def test_the_sdk_submits_from_the_callers_directory_too(home, tmp_path, monkeypatch):
    import shoal
    monkeypatch.chdir(tmp_path)
    api = LocalCluster(home).running()["nodes"][0]["api"]
    with shoal.connect(api) as c:
        rec = c.wait(c.submit(["pwd"]))
        assert rec.stdout_tail == f"{tmp_path}\n"
        [rec] = [r for r in c.run_many([{"command": "pwd"}])]
        assert rec.stdout_tail == f"{tmp_path}\n"
        [tid] = c.submit_many([{"command": "pwd"}])
        assert c.wait(tid).stdout_tail == f"{tmp_path}\n"


def test_a_task_whose_directory_the_node_lacks_fails_with_that_reason(sh):
    p = sh("submit", "--wait", "--cwd", "/nonexistent/shoal-dir", "--", "true")
    assert p.returncode == 1, p
    assert "cwd /nonexistent/shoal-dir does not exist on node node-1" in p.stderr
    assert "Traceback" not in p.stderr


# -- wait, status and tables in words ------------------------------------------------------------

def test_wait_timeout_is_a_message_and_status_124(sh):
    tid = sh("submit", "--", "sleep", "60").stdout.strip()
    try:
        p = sh("wait", "--timeout", "1", tid)
        assert p.returncode == 124, p
        assert "Traceback" not in p.stderr and "TimeoutError" not in p.stderr
        assert p.stderr.startswith("Error: timed out after 1s") and tid in p.stderr, p.stderr
    finally:
        sh("cancel", tid)


def test_status_says_killed_by_signal_and_unknown_rss(sh):
    p = sh("submit", "--wait", "--", "sh", "-c", "kill -9 $$")
    tid = sh("ls", "--limit", "1", "-o", "json")
    tid = json.loads(tid.stdout)[0]["id"]
    p = sh("status", tid)
    assert "killed by signal 9 (SIGKILL)" in p.stdout and "exit None" not in p.stdout, p.stdout
    p = sh("ls", "--limit", "1")
    assert "SIGKILL" in p.stdout
    p = sh("submit", "--wait", "--cwd", "/nonexistent/shoal-dir", "--", "true")
    tid = json.loads(sh("ls", "--limit", "1", "-o", "json").stdout)[0]["id"]
    p = sh("status", tid)
    assert "max rss unknown" in p.stdout and "0.0 MiB" not in p.stdout, p.stdout


def test_ls_and_nodes_at_80_columns_keep_ids_and_addresses_whole(sh):
    tid = sh("submit", "--wait", "--name", "narrow", "--", "echo", "a long enough command line " * 3)
    tid = json.loads(sh("ls", "--name", "narrow", "-o", "json").stdout)[0]["id"]
    p = sh("ls", "--name", "narrow", env={"COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    assert tid in p.stdout and "…" not in p.stdout, p.stdout
    assert max(len(line) for line in p.stdout.splitlines()) <= 80
    assert all(h in p.stdout for h in ("ID", "STATE", "NODE"))
    api = json.loads(sh("nodes", "-o", "json").stdout)[0]["api"]
    p = sh("nodes", env={"COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    assert api in p.stdout and "node-1" in p.stdout and "…" not in p.stdout, p.stdout
    assert max(len(line) for line in p.stdout.splitlines()) <= 80


def test_logs_output_json(sh):
    tid = sh("submit", "--", "echo", "hi").stdout.strip()
    assert sh("wait", tid).returncode == 0
    doc = json.loads(sh("logs", tid, "-o", "json").stdout)
    assert doc["text"] == "hi\n" and doc["complete"] is True and doc["stream"] == "stdout"


# -- logs after the node that ran the task is gone --------------------------------------------

@pytest.mark.timeout(300)
def test_logs_after_the_node_died(make_cluster):
    cluster = make_cluster(nodes=2)
    nodes = {n["id"]: n for n in cluster.state()["nodes"]}
    first = next(iter(nodes.values()))["api"]
    lines = "".join(f"line {i:05d} of the output\n" for i in range(6000))
    tid = run(cluster.home, "submit", "--address", first, "--", "seq", "-f", "line %05g of the output",
              "0", "5999").stdout.strip()
    assert run(cluster.home, "wait", tid, "--address", first).returncode == 0
    rec = json.loads(run(cluster.home, "status", tid, "--address", first, "-o", "json").stdout)
    ran_on = rec["node"]
    other = next(n["api"] for nid, n in nodes.items() if nid != ran_on)
    cluster.kill_node(ran_on, sig=9)

    # the nodes of a local cluster share one log directory: the whole log is still there
    p = run(cluster.home, "logs", rec["id"], "--address", other)
    assert p.returncode == 0 and p.stdout == lines, (p.returncode, p.stderr)

    # a node on another machine takes its log with it: only the end kept in the record is left
    for f in (cluster.home / "logs" / ran_on).glob(f"{rec['id']}.*"):
        f.unlink()
    p = run(cluster.home, "logs", rec["id"], "--address", other)
    assert p.returncode == 3, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    total = len(lines)
    assert p.stdout and lines.endswith(p.stdout) and p.stdout.startswith("line "), p.stdout[:80]
    kept = len(p.stdout)
    assert f"({kept} of {total} bytes)" in p.stderr and f"node {ran_on}" in p.stderr, p.stderr
    assert p.stderr.startswith(f"Warning: only the last {kept / 1024:.1f} KiB"), p.stderr

    doc = json.loads(run(cluster.home, "logs", rec["id"], "--address", other, "-o", "json").stdout)
    assert (doc["complete"], doc["kept_bytes"], doc["total_bytes"]) == (False, kept, total)
    assert doc["text"] == p.stdout


# -- node ---------------------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_node_with_unreachable_etcd_exits_with_advice(tmp_path):
    t0 = time.monotonic()
    p = run(tmp_path, "node", "--etcd", "http://127.0.0.1:1", "--home", str(tmp_path), timeout=60)
    took = time.monotonic() - t0
    assert_clean_error(p, "http://127.0.0.1:1", "shoal up", "--etcd")
    assert took < 60


# -- map as GNU parallel: environment, --pipe limits, -j -------------------------------------------

def run_map(home: Path, *args: str, env: dict | None = None, stdin: bytes | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal", "map", "--no-progress", *args],
                          env={**shoal_env(home), **(env or {})}, cwd=cwd, input=stdin or b"",
                          capture_output=True, timeout=180)


def test_map_sends_exported_variables_but_not_the_callers_path(home, tmp_path):
    path = f"/nonexistent/map-probe:{os.environ['PATH']}"
    env = {"MAPVAR": "from-the-caller", "PATH": path}
    p = run_map(home, "-k", "echo $MAPVAR; echo $PATH", ":::", "x", env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    var, node_path = p.stdout.decode().splitlines()
    assert var == "from-the-caller" and "map-probe" not in node_path
    # --env NAME sends one anyway; --no-getenv sends only the named ones
    p = run_map(home, "-k", "--env", "PATH", "--no-getenv", "echo $PATH; echo ${MAPVAR:-unset}", ":::", "x",
                env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().splitlines() == [path, "unset x"]  # the input goes last


def test_map_refuses_a_bulky_environment_with_advice(home, tmp_path):
    p = run_map(home, "echo", ":::", "x", env={"MAPBIG": "x" * 20000}, cwd=tmp_path)
    assert p.returncode == 1 and p.stderr.decode().startswith("Error: environment:"), p.stderr
    assert b"MAPBIG" in p.stderr and b"--no-getenv" in p.stderr and b"Traceback" not in p.stderr
    p = run_map(home, "--no-getenv", "echo", ":::", "x", env={"MAPBIG": "x" * 20000}, cwd=tmp_path)
    assert p.returncode == 0 and p.stdout == b"x\n", p.stderr


def test_map_pipe_block_too_large_for_a_task(home, tmp_path):
    p = run_map(home, "--pipe", "--block", "1M", "wc -c", stdin=b"x" * 100_000 + b"\n", cwd=tmp_path)
    assert p.returncode == 1, p
    err = p.stderr.decode()
    assert err.startswith("Error: --pipe: a block of 100,001 bytes") and "--block" in err, err
    p = run_map(home, "--pipe", "--block", "big", "wc -c", stdin=b"x\n", cwd=tmp_path)
    assert p.returncode == 1 and b"--block: 'big' is not a size" in p.stderr, p.stderr


def test_map_jobs_limits_how_many_are_unfinished(sh, tmp_path):
    job = f"window-{uuid.uuid4().hex[:8]}"
    p = sh("map", "-j", "1", "--job", job, "sleep 0.2; echo {}", ":::", "a", "b", "c", "d", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["a", "b", "c", "d"]
    recs = sorted(job_tasks(sh, job), key=lambda r: r["attempts"][0]["started_at"])
    # one at a time: each task was submitted only after the one before had ended
    for before, after in zip(recs, recs[1:]):
        assert after["submitted_at"] >= before["finished_at"], (before, after)


def test_map_runs_exported_bash_functions(home, tmp_path):
    if not shutil.which("bash"):
        pytest.skip("no bash")
    env = {"BASH_FUNC_doit%%": '() {  echo "did $1"\n}'}   # what `export -f doit` puts in the environment
    p = run_map(home, "-k", "doit", ":::", "1", "2", env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"did 1\ndid 2\n"


@pytest.mark.timeout(300)
def test_map_pipe_of_megabytes_keeps_the_node_going(home, tmp_path):
    # every block rides in its task's record; a node that claimed many at once used to
    # send etcd one transaction too large to take, and retry it forever
    from shoal.logic.mapinput import cut_blocks
    data = b"".join(b"%d\n" % i for i in range(1, 400001))   # 2.6 MB
    blocks = cut_blocks(data, 32 * 1024)                      # the default --block, 32K
    p = run_map(home, "-k", "--pipe", "md5sum", stdin=data, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().splitlines() == [f"{hashlib.md5(b).hexdigest()}  -" for b in blocks]
