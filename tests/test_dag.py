"""Dependencies between tasks, against a real etcd: waiting, promotion in the same
transaction as the success, upstream failure cascades, cancel, allow_failed_deps."""
from __future__ import annotations

import time

import pytest

from shoal.errors import InvalidSpec
from shoal.logic import dag, transitions
from shoal.model import Attempt, TaskRecord, TaskSpec, TaskState, new_ids
from shoal.store import Store
from shoal.store.tasks import Claim, Completion


def rec(depends_on=(), **spec) -> TaskRecord:
    return TaskRecord(id=new_ids(1)[0], spec=TaskSpec(command=["true"], depends_on=list(depends_on), **spec),
                      submitted_at=time.time())


async def run_to_end(store: Store, task_id: str, code: int) -> int:
    """Claim `task_id` on node n1 and complete it with `code`; return the commit revision."""
    lease = await store.kv.grant_lease(30)
    kvs, _, _ = await store.kv.get_prefix(store.keys.queues)
    kv = next(kv for kv in kvs if store.keys.id_of(kv.key) == task_id)
    queued, _ = await store.tasks.get_task(task_id)
    running = transitions.start_attempt(queued, "n1", time.time())
    res = await store.tasks.step("n1", lease, [], [Claim(task_id, running, kv.key, kv.mod_revision)])
    assert res.claimed == [True]
    current, rev = await store.tasks.get_task(task_id)
    a = Attempt(n=1, node="n1", state=TaskState.succeeded if code == 0 else TaskState.failed,
                started_at=time.time(), finished_at=time.time(), exit_code=code)
    done = transitions.finish_attempt(current, a, {}, time.time())
    out = await store.tasks.step("n1", lease, [Completion(done, rev, res.revision)], [])
    assert out.completed == [True]
    return out.completed_rev[task_id]


async def queued_ids(store: Store) -> set[str]:
    kvs, _, _ = await store.kv.get_prefix(store.keys.queues)
    return {store.keys.id_of(kv.key) for kv in kvs}


async def test_unknown_dependency_is_refused_and_nothing_is_written(store):
    r = rec(depends_on=["t-no-such"])
    with pytest.raises(InvalidSpec, match="depends_on: no task 't-no-such'"):
        await store.tasks.submit([r])
    assert await store.tasks.get_many([r.id]) == {}


async def test_dependent_waits_then_is_queued_in_the_same_txn_as_the_success(store):
    a = rec()
    [a] = await store.tasks.submit([a])
    [b] = await store.tasks.submit([rec(depends_on=[a.id])])
    assert b.state == TaskState.waiting and b.deps_left == 1
    assert b.id not in await queued_ids(store)
    assert await store.dag.dependents(a.id) == [b.id]
    rev = await run_to_end(store, a.id, 0)
    got_b, b_rev = await store.tasks.get_task(b.id)
    assert got_b.state == TaskState.queued and b_rev == rev  # promoted by the very commit
    assert b.id in await queued_ids(store)


async def test_failure_cascades_upstream_failed_through_the_graph(store):
    [a] = await store.tasks.submit([rec()])
    [b] = await store.tasks.submit([rec(depends_on=[a.id])])
    [c] = await store.tasks.submit([rec(depends_on=[b.id])])
    [tolerant] = await store.tasks.submit([rec(depends_on=[a.id], allow_failed_deps=True)])
    await run_to_end(store, a.id, 1)
    got = {t: (await store.tasks.get_task(t))[0] for t in (b.id, c.id, tolerant.id)}
    assert got[b.id].state == TaskState.upstream_failed and a.id in got[b.id].reason
    assert got[c.id].state == TaskState.upstream_failed and b.id in got[c.id].reason
    assert got[tolerant.id].state == TaskState.queued
    assert await queued_ids(store) == {tolerant.id}


async def test_diamond_needs_both_parents(store):
    [a] = await store.tasks.submit([rec()])
    [b] = await store.tasks.submit([rec()])
    [d] = await store.tasks.submit([rec(depends_on=[a.id, b.id])])
    assert d.deps_left == 2
    await run_to_end(store, a.id, 0)
    assert (await store.tasks.get_task(d.id))[0].state == TaskState.waiting
    await run_to_end(store, b.id, 0)
    assert (await store.tasks.get_task(d.id))[0].state == TaskState.queued


async def test_state_at_submit_follows_finished_dependencies(store):
    [ok] = await store.tasks.submit([rec()])
    [bad] = await store.tasks.submit([rec()])
    await run_to_end(store, ok.id, 0)
    await run_to_end(store, bad.id, 2)
    [after_ok] = await store.tasks.submit([rec(depends_on=[ok.id])])
    [after_bad] = await store.tasks.submit([rec(depends_on=[bad.id])])
    assert after_ok.state == TaskState.queued and after_ok.id in await queued_ids(store)
    assert after_bad.state == TaskState.upstream_failed and after_bad.is_final


async def test_cancelling_a_waiting_task_fails_its_dependents_upstream(store):
    [a] = await store.tasks.submit([rec()])
    [b] = await store.tasks.submit([rec(depends_on=[a.id])])
    [c] = await store.tasks.submit([rec(depends_on=[b.id])])
    got = await store.tasks.cancel(b.id)
    assert got.state == TaskState.cancelled
    assert (await store.tasks.get_task(c.id))[0].state == TaskState.upstream_failed
    await run_to_end(store, a.id, 0)  # a finishing later does not revive b or c
    assert (await store.tasks.get_task(b.id))[0].state == TaskState.cancelled


def test_initial_state_and_cycles():
    s = TaskState
    assert dag.initial_state({}, False) == (s.queued, 0, None)
    assert dag.initial_state({"a": s.running, "b": s.succeeded}, False) == (s.waiting, 1, None)
    assert dag.initial_state({"a": s.failed}, False)[0] == s.upstream_failed
    assert dag.initial_state({"a": s.failed, "b": s.queued}, True) == (s.waiting, 1, None)
    assert dag.find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert dag.find_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None
    assert dag.find_cycle({str(i): [str(i + 1)] for i in range(5000)}) is None


@pytest.mark.cluster
def test_cli_after_runs_in_order_and_a_failed_step_stops_its_dependents(make_cluster, tmp_path):
    import subprocess
    import sys
    cluster = make_cluster(nodes=1)
    log = tmp_path / "order"

    def shoal_cli(*args):
        out = subprocess.run([sys.executable, "-m", "shoal", "submit", "--address", cluster.address, *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()
    first = shoal_cli("--", "sh", "-c", f"sleep 0.5; echo first >> {log}")
    second = shoal_cli("--after", first, "--", "sh", "-c", f"echo second >> {log}")
    broken = shoal_cli("--after", second, "--", "sh", "-c", "exit 4")
    never = shoal_cli("--after", broken, "--", "sh", "-c", f"echo never >> {log}")
    import shoal
    with shoal.connect(cluster.address) as c:
        recs = c.wait([first, second, broken, never], timeout=60)
    assert [r.state.value for r in recs] == ["succeeded", "succeeded", "failed", "upstream_failed"]
    assert log.read_text() == "first\nsecond\n"


@pytest.mark.cluster
def test_dag_across_three_nodes_survives_a_node_kill(make_cluster):
    import shoal
    cluster = make_cluster(nodes=3, lease_ttl_s=2)
    with shoal.connect(cluster.state()["nodes"][2]["api"]) as c:
        # 6 layers of 20: every task depends on two tasks of the layer before
        layers = [[c.submit("sleep 0.05", retries=3).id for _ in range(20)]]
        for _ in range(5):
            prev = layers[-1]
            layers.append([c.submit("sleep 0.05", retries=3, depends_on=[prev[i], prev[(i + 1) % 20]]).id
                           for i in range(20)])
        time.sleep(0.7)
        cluster.kill_node("node-1", sig=9)
        ids = [t for layer in layers for t in layer]
        done = c.wait(ids, timeout=180)
    assert all(r.state.value == "succeeded" for r in done), {r.state.value for r in done}
    for r in done:
        assert sum(a.state.value == "succeeded" for a in r.attempts) == 1
    # each layer started only after both its dependencies ended
    by_id = {r.id: r for r in done}
    for i in range(1, 6):
        for j, t in enumerate(layers[i]):
            deps = [by_id[layers[i - 1][j]], by_id[layers[i - 1][(j + 1) % 20]]]
            assert by_id[t].started_at >= max(d.last.finished_at for d in deps) - 0.01
