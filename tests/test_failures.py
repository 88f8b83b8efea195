"""Failure behaviour a user would notice, on real local clusters: a node SIGKILLed mid-run,
etcd going away and coming back, failing commands, timeouts, cancels, bad cwd/stdin,
memory limits and tasks that fit no node."""
from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

import shoal
from shoal import UnplaceableWarning
from shoal.model import EndedBy, TaskState

pytestmark = pytest.mark.cluster


# -- helpers ---------------------------------------------------------------------------

def wait_for(pred, timeout: float, what: str, interval: float = 0.05):
    """Poll `pred` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def health(api: str) -> dict:
    return httpx.get(api + "/v1/health", timeout=5).json()


def live(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid`."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return out


def read_pid(path: Path, timeout: float = 60) -> int:
    def ready():
        try:
            text = path.read_text().strip()
        except OSError:
            return None
        return int(text) if text else None
    return wait_for(ready, timeout, f"the task to write {path}")


def lost_attempt_index(rec, node: str) -> int | None:
    for i, a in enumerate(rec.attempts):
        if a.node == node and a.reason and "lost" in a.reason:
            return i
    return None


# -- (a) a node is SIGKILLed in the middle of a run ----------------------------------------

@pytest.mark.parametrize("victim_role", ["worker", "reaper"])
def test_sigkill_node_mid_run_requeues_its_tasks_elsewhere(make_cluster, victim_role):
    ttl = 2
    cluster = make_cluster(nodes=3, lease_ttl_s=ttl)
    nodes = {n["id"]: n["api"] for n in cluster.state()["nodes"]}
    reaper = wait_for(lambda: next((nid for nid, api in nodes.items() if health(api)["reaper"]), None),
                      30, "a reaper to be elected")
    victim = reaper if victim_role == "reaper" else next(nid for nid in sorted(nodes) if nid != reaper)
    survivor_api = next(api for nid, api in nodes.items() if nid != victim)

    with shoal.connect(survivor_api) as c:
        wait_for(lambda: len(c.nodes()) == 3, 30, "all three nodes to register")
        # default settings: no `retries`, so any task charged for the node's death would fail
        ids = c.submit_many([{"command": "sleep 0.05", "name": f"a{i}"} for i in range(300)])

        # kill the victim in the middle of the run, at a moment it holds running tasks
        def mid_run():
            done = len(c.list(state="succeeded", limit=1000))
            if done >= 240:
                pytest.fail(f"the run was nearly over ({done}/300) before {victim} was seen running tasks")
            on_victim = c.list(state="running", node=victim, limit=1000)
            return on_victim if done >= 60 and on_victim else None
        running_on_victim = wait_for(mid_run, 120, f"the run to be under way with tasks on {victim}",
                                     interval=0.01)
        t_kill = time.time()
        cluster.kill_node(victim, sig=9)
        t_killed = time.time()

        records = c.wait(ids, timeout=180)

    by_id = {r.id: r for r in records}
    not_ok = [(r.id, r.state.value, r.reason) for r in records if r.state != TaskState.succeeded]
    assert not not_ok, f"{len(not_ok)} tasks did not succeed: {not_ok[:5]}"

    doubled = [(r.id, [(a.n, a.node, a.state.value) for a in r.attempts]) for r in records
               if sum(a.state == TaskState.succeeded for a in r.attempts) != 1]
    assert not doubled, f"tasks without exactly one succeeded attempt: {doubled[:5]}"

    for r in records:
        assert [a.n for a in r.attempts] == list(range(1, len(r.attempts) + 1)), r.attempts
        for a in r.attempts:
            if a.node == victim:
                assert a.started_at is not None and a.started_at <= t_killed, \
                    f"{r.id}: attempt {a.n} started on {victim} after it was killed"
                if a.state == TaskState.succeeded:
                    assert a.finished_at <= t_killed, f"{r.id}: {victim} finished an attempt after it died"

    lost = {r.id: lost_attempt_index(r, victim) for r in records}
    lost = {tid: i for tid, i in lost.items() if i is not None}
    assert lost, f"no task records an attempt lost with {victim}, yet it was running " \
                 f"{[t.id for t in running_on_victim]} just before the kill"
    # what we saw running there just before the kill either ended there before the kill
    # or was lost with the node
    for t in running_on_victim:
        r = by_id[t.id]
        assert t.id in lost or (r.attempts[t.attempt - 1].node == victim
                                and r.attempts[t.attempt - 1].state == TaskState.succeeded), \
            f"{t.id} was running on {victim} at the kill: {r.attempts}"

    delays, requeued = {}, {}
    for tid, i in lost.items():
        r = by_id[tid]
        assert r.attempts[i].state == TaskState.failed
        assert r.attempts[i].ended_by == EndedBy.node_lost and r.attempts[i].reason == f"node {victim} was lost"
        assert r.node_losses == 1, r.attempts
        assert i + 1 < len(r.attempts), f"{tid}: no new attempt after the one lost with {victim}"
        nxt = r.attempts[i + 1]
        assert nxt.node != victim and nxt.node in nodes, f"{tid}: retried on {nxt.node}"
        delays[tid] = nxt.started_at - t_kill
        requeued[tid] = r.attempts[i].finished_at - t_kill  # when the reaper gave up on it
    worst = max(delays.values())
    assert worst <= ttl + 1, (
        f"{len(delays)} tasks lost with {victim}: their new attempts started {min(delays.values()):.2f}s to "
        f"{worst:.2f}s after the kill; the lease TTL is {ttl}s, so the limit is {ttl + 1}s; the reaper "
        f"requeued them {min(requeued.values()):.2f}s to {max(requeued.values()):.2f}s after the kill "
        f"(slowest: {sorted(delays.items(), key=lambda kv: -kv[1])[:3]})")


# -- (b) etcd goes away in the middle of a run and comes back ------------------------------

@pytest.mark.parametrize("ttl, outage_s", [(10, 2.0), (3, 7.0)], ids=["outage-shorter-than-ttl",
                                                                        "outage-longer-than-ttl"])
def test_etcd_outage_mid_run_loses_no_task(make_cluster, ttl, outage_s):
    cluster = make_cluster(nodes=2, lease_ttl_s=ttl)
    apis = [n["api"] for n in cluster.state()["nodes"]]
    with shoal.connect(apis[0]) as c, shoal.connect(apis[1]) as watcher:
        wait_for(lambda: len(c.nodes()) == 2, 30, "both nodes to register")
        leases_before = {n["id"]: n["lease"] for n in c.nodes()}
        ids = c.submit_many([{"command": "sleep 0.1", "retries": 3, "name": f"b{i}"} for i in range(200)])

        # a user already waiting on the run (through the other node) rides the outage out
        waited: dict = {}

        def wait_all():
            try:
                waited["records"] = watcher.wait(ids, timeout=240)
            except BaseException as e:  # handed to the test thread
                waited["error"] = e
        waiter = threading.Thread(target=wait_all, daemon=True)
        waiter.start()

        wait_for(lambda: len(c.list(state="succeeded", limit=1000)) >= 30, 120, "the run to be under way")
        running = c.list(state="running", limit=1000)
        assert running, "nothing was running when etcd was stopped"
        cluster.stop_etcd()
        time.sleep(outage_s)
        cluster.start_etcd()

        records = c.wait(ids, timeout=240)
        waiter.join(timeout=60)
        assert not waiter.is_alive(), "a wait begun before the outage never returned"
        assert "error" not in waited, f"a wait begun before the outage failed: {waited.get('error')!r}"
        assert [r.id for r in waited["records"]] == ids

        assert len(records) == len(ids) == 200
        not_ok = [(r.id, r.state.value, r.reason) for r in records if r.state != TaskState.succeeded]
        assert not not_ok, f"{len(not_ok)} tasks did not succeed: {not_ok[:5]}"
        doubled = [r.id for r in records if sum(a.state == TaskState.succeeded for a in r.attempts) != 1]
        assert not doubled, f"tasks without exactly one succeeded attempt: {doubled[:5]}"

        # the nodes are back in the cluster and take new work
        nodes_after = wait_for(lambda: (lambda ns: ns if len(ns) == 2 else None)(c.nodes()), 30,
                               "both nodes to be registered after the outage")
        leases_after = {n["id"]: n["lease"] for n in nodes_after}
        if outage_s < ttl:
            assert leases_after == leases_before, "a short outage made nodes register again"
        else:
            changed = {nid for nid in leases_before if leases_after[nid] != leases_before[nid]}
            assert changed == set(leases_before), \
                f"after an outage longer than the TTL every node must have registered again: {leases_after}"
        after = c.wait(c.submit_many([{"command": "true"} for _ in range(10)]), timeout=60)
        assert all(r.state == TaskState.succeeded for r in after)
        assert {r.node for r in after} <= set(leases_before)


def test_a_node_given_an_etcd_gone_limit_logs_the_outage_and_exits_with_a_clear_message(make_cluster):
    cluster = make_cluster(nodes=1, lease_ttl_s=2, node_args=["--etcd-gone-exit", "4"])
    node = cluster.state()["nodes"][0]
    with shoal.connect(node["api"]) as c:
        t = c.submit("sleep 300")
        wait_for(lambda: c.get(t.id).state == TaskState.running, 30, "the task to run")
    cluster.stop_etcd()
    wait_for(lambda: not live(node["pid"]), 120, "the node to exit once etcd had been gone 4s")
    log = Path(node["log"]).read_text()
    assert f"etcd at {cluster.state()['etcd']['url']} is unreachable: " in log, log
    assert "Error: node node-1: etcd at " in log and "; exiting (--etcd-gone-exit 4)" in log, log
    assert "Traceback" not in log, log


# -- (c) a failing command is retried, then fails ---------------------------------------

def test_nonzero_exit_is_retried_then_fails_with_every_attempt_recorded(make_cluster):
    cluster = make_cluster(nodes=1)
    with shoal.connect(cluster.address) as c:
        t = c.submit("echo try $SHOAL_ATTEMPT >&2; exit 3", retries=2, backoff=0)
        rec = c.wait(t.id, timeout=60)
    assert rec.state == TaskState.failed
    assert [a.n for a in rec.attempts] == [1, 2, 3]
    for a in rec.attempts:
        assert a.state == TaskState.failed
        assert a.exit_code == 3
        assert a.node == "node-1"
        assert a.started_at is not None and a.finished_at is not None and a.finished_at >= a.started_at
    assert rec.attempt == 3
    assert "exit code 3" in rec.reason, rec.reason
    assert "3 attempts" in rec.reason, rec.reason
    assert rec.stderr_tail.strip() == "try 3"


def test_wait_on_a_task_between_retries_returns_only_when_it_has_ended(make_cluster):
    cluster = make_cluster(nodes=1)
    with shoal.connect(cluster.address) as c:
        t = c.submit("exit 4", retries=2, backoff=0.5)
        between = wait_for(lambda: (lambda r: r if r.attempts and r.attempts[0].state == TaskState.failed
                                    and not r.is_final else None)(c.get(t.id)), 60, "the first attempt to fail")
        assert between.state in (TaskState.queued, TaskState.running)
        rec = c.wait(t.id, timeout=60)
    assert rec.state == TaskState.failed, (rec.state, rec.reason)
    assert [a.n for a in rec.attempts] == [1, 2, 3] and all(a.exit_code == 4 for a in rec.attempts)


# -- (d) a task past its timeout is killed, process group and all ------------------------

def test_timeout_kills_the_whole_process_group(make_cluster, tmp_path):
    cluster = make_cluster(nodes=1)
    bg, sh = tmp_path / "bg.pid", tmp_path / "sh.pid"
    with shoal.connect(cluster.address) as c:
        t = c.submit(f"sleep 100 & echo $! > {bg}; echo $$ > {sh}; sleep 100", timeout=1)
        leader, child = read_pid(sh), read_pid(bg)
        rec = c.wait(t.id, timeout=60)
    assert rec.state == TaskState.failed
    assert "timed out" in rec.reason and "1s" in rec.reason, rec.reason
    assert len(rec.attempts) == 1
    wait_for(lambda: not group_members(leader), 10, f"process group {leader} to be gone")
    assert not live(leader) and not live(child), "a process of the timed-out task survived"


# -- (e) cancel -----------------------------------------------------------------------------

def test_cancel_queued_running_and_finished_tasks(make_cluster, tmp_path):
    cluster = make_cluster(nodes=1, node_args=["--slots", "1"])
    pidfile = tmp_path / "sh.pid"
    with shoal.connect(cluster.address) as c:
        done = c.submit("true")
        assert c.wait(done.id, timeout=60).state == TaskState.succeeded

        long = c.submit(f"echo $$ > {pidfile}; sleep 60")
        leader = read_pid(pidfile)
        wait_for(lambda: c.get(long.id).state == TaskState.running, 30, "the long task to run")

        queued = c.submit("echo should-not-run")
        time.sleep(1.0)
        assert c.get(queued.id).state == TaskState.queued  # the one slot is busy

        rec = c.cancel(queued.id)
        assert rec.state == TaskState.cancelled  # at once, in the reply
        got = c.get(queued.id)
        assert got.state == TaskState.cancelled and got.attempts == [], got
        assert "cancelled" in got.reason

        t0 = time.monotonic()
        c.cancel(long.id)
        rec = c.wait(long.id, timeout=30)
        took = time.monotonic() - t0
        assert rec.state == TaskState.cancelled, (rec.state, rec.reason)
        assert took <= 1.0, f"a running task took {took:.2f}s to be cancelled (limit 1s)"
        assert "cancelled" in rec.reason
        wait_for(lambda: not group_members(leader), 10, f"the cancelled task's process group {leader} to go")

        for finished in (done, queued, long):
            with pytest.raises(shoal.Conflict) as exc:
                c.cancel(finished.id)
            msg = str(exc.value)
            assert finished.id in msg and "already ended" in msg and "nothing to cancel" in msg, msg

        # the slot is free again
        assert c.wait(c.submit("true").id, timeout=60).state == TaskState.succeeded


# -- (f) a cwd or stdin that does not exist on the node ------------------------------------

def test_missing_cwd_or_stdin_fails_with_a_clear_reason(make_cluster):
    cluster = make_cluster(nodes=1)
    missing_dir = f"/nonexistent-{uuid.uuid4().hex[:8]}/work"
    missing_file = f"/nonexistent-{uuid.uuid4().hex[:8]}/input.txt"
    with shoal.connect(cluster.address) as c:
        bad_cwd = c.submit(["pwd"], cwd=missing_dir)
        bad_stdin = c.submit(["cat"], stdin=missing_file)
        a, b = c.wait([bad_cwd.id, bad_stdin.id], timeout=60)
    assert a.state == TaskState.failed and b.state == TaskState.failed
    for rec, word, path in ((a, "cwd", missing_dir), (b, "stdin", missing_file)):
        assert word in rec.reason and path in rec.reason, rec.reason
        assert "Traceback" not in rec.reason and "Error" not in rec.reason, rec.reason
        assert len(rec.attempts) == 1 and rec.attempts[0].node == "node-1"


# -- (g) memory ---------------------------------------------------------------------------------

def test_task_over_its_memory_limit_does_not_succeed(make_cluster):
    cluster = make_cluster(nodes=1)
    with shoal.connect(cluster.address) as c:
        t = c.submit(["python3", "-c", "x = bytearray(300 * 2**20); print('allocated', len(x))"],
                     memory="50M")
        rec = c.wait(t.id, timeout=60)
    assert rec.state == TaskState.failed, (rec.state, rec.reason, rec.stdout_tail)
    assert "allocated" not in rec.stdout_tail
    a = rec.attempts[-1]
    assert a.signal == 9 or (a.exit_code not in (None, 0)), a
    if a.signal is None:  # refused by an address-space limit (no cgroup here), not killed
        assert "MemoryError" in rec.stderr_tail, rec.stderr_tail
    else:  # killed in its memory cgroup: the reason says why, not just "signal 9"
        assert "memory limit" in rec.reason, rec.reason


def test_task_needing_more_memory_than_any_node_stays_queued_and_says_why(make_cluster):
    cluster = make_cluster(nodes=2)
    with shoal.connect(cluster.address) as c:
        biggest = max(n["memory"] for n in c.nodes())
        with pytest.warns(UnplaceableWarning, match=r"no node has \S+ of memory; the largest offers"):
            big = c.submit("echo ran", memory=str(biggest * 2))
        small = c.submit("echo fine")  # others are not blocked behind it
        assert c.wait(small.id, timeout=60).state == TaskState.succeeded
        # the reaper writes why into the record, for `shoal status`
        rec = wait_for(lambda: (lambda r: r if r.reason else None)(c.get(big.id)), 60, "a reason on the big task")
        assert rec.state == TaskState.queued and rec.attempts == [], (rec.state, rec.reason)
        assert rec.reason.startswith("no node can run it: no node has ") and "of memory" in rec.reason, rec.reason
        # a node that fits joins: it runs there, and the reason is gone
        cluster.add_node("node-big", node_args=["--memory", str(biggest * 2)])
        done = c.wait(big.id, timeout=60)
        assert done.state == TaskState.succeeded and done.node == "node-big" and done.reason is None, done
        assert done.stdout_tail == "ran\n"


def test_task_needing_a_label_no_node_has_can_be_cancelled(make_cluster):
    cluster = make_cluster(nodes=1)
    with shoal.connect(cluster.address) as c:
        with pytest.warns(UnplaceableWarning, match="no node has label gpu-a100"):
            t = c.submit("echo never", labels=["gpu-a100"])
        cancelled = c.cancel(t.id)
        assert cancelled.state == TaskState.cancelled
        assert c.get(t.id).state == TaskState.cancelled
