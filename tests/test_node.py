"""Node behaviour with real node processes: placement by labels and resources,
priority order, retention, etcd endpoint fail-over, clean shutdown."""
from __future__ import annotations

import sys
import time

import pytest

import shoal
from shoal.errors import NotFound
from shoal.exec.daemon import spawn_daemon, stop
from shoal.cluster.local import free_port

pytestmark = pytest.mark.cluster


def wait_until(pred, timeout_s=20.0, every_s=0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError("condition not met in time")


def test_labels_steer_tasks_and_unmet_labels_wait(make_cluster):
    cluster = make_cluster(nodes=1, node_args=["--labels", "ssd,zone=eu"])
    gpu = cluster.add_node("gpu-node", node_args=[])  # no labels
    with shoal.connect(gpu["api"]) as c:
        recs = c.wait([c.submit(["true"], labels=["zone=eu"]).id for _ in range(4)], timeout=60)
        assert {r.node for r in recs} == {"node-1"}
        stuck = c.submit(["true"], labels=["zone=us"])
        time.sleep(1.5)
        assert c.get(stuck.id).state.value == "queued"
        c.cancel(stuck.id)


def test_task_bigger_than_free_resources_waits_for_them(make_cluster):
    cluster = make_cluster(nodes=1, node_args=["--cpus", "2", "--memory", "1G"])
    with shoal.connect(cluster.address) as c:
        big = c.submit("sleep 1", cpus=2)
        small = c.submit("sleep 0.1", cpus=1)
        done = c.wait([big.id, small.id], timeout=60)
        assert all(r.state.value == "succeeded" for r in done)
        # both need the node's CPUs: the second starts only after the first ends
        a, b = sorted(done, key=lambda r: r.started_at)
        assert b.started_at >= a.last.finished_at - 0.05


def test_higher_priority_runs_first(make_cluster):
    cluster = make_cluster(nodes=1, node_args=["--slots", "1"])
    with shoal.connect(cluster.address) as c:
        blocker = c.submit("sleep 1")
        wait_until(lambda: c.get(blocker.id).state.value == "running")
        low = c.submit(["true"], priority=-5)
        high = c.submit(["true"], priority=50)
        lo, hi = c.wait([low.id, high.id], timeout=60)
        assert hi.started_at < lo.started_at


def test_finished_tasks_expire_after_retention(make_cluster):
    cluster = make_cluster(nodes=1, node_args=["--retention", "2s"])
    with shoal.connect(cluster.address) as c:
        t = c.wait(c.submit(["true"]).id, timeout=30)
        assert t.state.value == "succeeded"

        def gone():
            try:
                c.get(t.id)
                return False
            except NotFound:
                return True
        wait_until(gone, timeout_s=30)


def test_node_fails_over_to_a_live_etcd_endpoint(make_cluster, tmp_path):
    cluster = make_cluster(nodes=1)
    st = cluster.state()
    dead = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    log = tmp_path / "n.log"
    pid = spawn_daemon([sys.executable, "-m", "shoal", "node", "--etcd", f"{dead},{st['etcd']['url']}",
                        "--name", "failover-node", "--api-port", str(port), "--home", str(tmp_path)], str(log))
    try:
        with shoal.connect(st["nodes"][0]["api"]) as c:
            wait_until(lambda: any(n["id"] == "failover-node" for n in c.nodes()), timeout_s=30)
        with shoal.connect(f"http://127.0.0.1:{port}") as c:
            assert c.wait(c.submit(["echo", "ok"]).id, timeout=30).stdout_tail == "ok\n"
    finally:
        stop(pid)


def test_clean_shutdown_hands_running_work_to_another_node(make_cluster):
    cluster = make_cluster(nodes=2, lease_ttl_s=2)
    with shoal.connect(cluster.state()["nodes"][1]["api"]) as c:
        tasks = [c.submit("sleep 2", retries=0) for _ in range(4)]
        wait_until(lambda: all(c.get(t.id).state.value == "running" for t in tasks), timeout_s=30)
        on_first = [t.id for t in tasks if c.get(t.id).node == "node-1"]
        assert on_first, "node-1 should have taken some of the work"
        cluster.kill_node("node-1", sig=15)  # SIGTERM: a clean shutdown
        done = c.wait([t.id for t in tasks], timeout=60)
        assert all(r.state.value == "succeeded" for r in done), [r.reason for r in done]
        for r in done:
            if r.id in on_first:
                assert r.attempts[0].reason == "node node-1 shut down; requeued"
                assert r.node == "node-2"


def test_node_that_loses_its_lease_kills_its_attempts_and_registers_again(make_cluster, tmp_path):
    import asyncio
    import os

    from shoal.store import Store
    cluster = make_cluster(nodes=1, lease_ttl_s=3)
    pids = tmp_path / "pids"
    with shoal.connect(cluster.address) as c:
        t = c.submit(f"echo $$ >> {pids}; exec sleep 60", retries=1, backoff=0)
        wait_until(lambda: pids.exists() and pids.read_text().strip(), timeout_s=30)
        first_pid = int(pids.read_text().split()[0])
        old_lease = c.nodes()[0]["lease"]

        async def revoke():
            store = Store([cluster.state()["etcd"]["url"]])
            try:
                await store.kv.revoke_lease(old_lease)
            finally:
                await store.close()
        asyncio.run(revoke())

        # fenced: the first attempt's process is killed, the node is back under a new lease
        def first_gone():
            try:
                os.kill(first_pid, 0)
                return False
            except ProcessLookupError:
                return True
        wait_until(first_gone, timeout_s=10)
        wait_until(lambda: [n for n in c.nodes() if n["lease"] != old_lease], timeout_s=10)
        # and the reaper ran the task again
        rec = wait_until(lambda: (r := c.get(t.id)).attempt == 2 and r.state.value == "running" and r, timeout_s=15)
        assert rec.attempts[0].reason == "node node-1 was lost"
        c.cancel(t.id)
        assert c.wait(t.id, timeout=30).state.value == "cancelled"


def test_attempts_of_a_killed_node_are_killed_with_it(make_cluster, tmp_path):
    import os
    cluster = make_cluster(nodes=1)
    pids = tmp_path / "pids"
    with shoal.connect(cluster.address) as c:
        c.submit(f"sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; wait")
        wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, timeout_s=30)
    procs = [int(p) for p in pids.read_text().split()]
    cluster.kill_node("node-1", sig=9)

    def all_gone():
        for pid in procs:
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                pass
        return True
    wait_until(all_gone, timeout_s=10)
