"""Dependencies between tasks, against a real etcd: waiting, promotion in the same
transaction as the success, upstream failure cascades, cancel, allow_failed_deps; a
10,000-way fan-in and fan-out, and crashes between the chunks that record or cascade."""
from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from shoal.errors import InvalidSpec
from shoal.logic import dag, transitions
from shoal.logic.dag import Move, Wait
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


def test_recording_counts_off_ended_dependencies_and_puts_edges_for_the_rest():
    s = TaskState
    w = Wait(left=5, recorded=0, total=5)
    move, edges = dag.record_chunk(w, ["a", "b", "c"], {"a": s.succeeded, "b": s.running, "c": s.queued})
    assert edges == ["b", "c"] and move == Move(s.waiting, Wait(left=4, recorded=3, total=5))
    # the last chunk, every dependency ended well: queued
    move, edges = dag.record_chunk(Wait(left=2, recorded=3, total=5), ["d", "e"], {"d": s.succeeded, "e": s.succeeded})
    assert move.state == s.queued and edges == []
    # a failed one fails the task at once, with no edge left behind
    move, edges = dag.record_chunk(w, ["a", "b", "x"], {"a": s.succeeded, "b": s.running, "x": s.failed})
    assert (move.state, move.reason, edges) == (s.upstream_failed, "dependency x ended failed", [])
    assert dag.record_chunk(w, ["gone"], {})[0].reason == "dependency gone is gone"
    tolerant = replace(w, allow_failed=True)
    assert dag.record_chunk(tolerant, ["x"], {"x": s.failed})[0] == Move(s.waiting, replace(tolerant, left=4, recorded=1))
    assert dag.dependencies(["b", "a", "b"]) == ["b", "a"]


def test_consuming_edges_folds_each_one_in_order():
    s = TaskState
    waits = {"one": Wait(1, 1, 1), "two": Wait(2, 2, 2), "tolerant": Wait(2, 2, 2, allow_failed=True),
             "cancelled": None, "unrecorded": Wait(3, 1, 3)}
    moves = dag.consume([("a", s.succeeded, "one"), ("a", s.succeeded, "two"), ("bad", s.failed, "two"),
                         ("bad", s.failed, "tolerant"), ("a", s.succeeded, "tolerant"),
                         ("a", s.succeeded, "cancelled"), ("a", s.succeeded, "unrecorded")], waits)
    assert moves["one"] == Move(s.queued)
    assert moves["two"] == Move(s.upstream_failed, reason="dependency bad ended failed")
    assert moves["tolerant"] == Move(s.queued)
    assert "cancelled" not in moves          # no longer waits: its edge goes, nothing else
    assert moves["unrecorded"] == Move(s.waiting, Wait(2, 1, 3))   # not queued before all are recorded
    # once settled, later edges change nothing
    assert dag.consume([("x", s.failed, "d"), ("y", s.succeeded, "d")], {"d": Wait(2, 2, 2)})["d"].reason == \
        "dependency x ended failed"
    assert dag.inline(dag.INLINE_EDGES) and not dag.inline(dag.INLINE_EDGES + 1)
    now = 5.0
    r = rec().model_copy(update={"state": s.waiting, "deps_left": 3})
    assert dag.settle(r, Move(s.queued), now).state == s.queued
    failed = dag.settle(r, moves["two"], now)
    assert (failed.state, failed.finished_at, failed.reason) == (s.upstream_failed, now, "dependency bad ended failed")


def test_ends_with_dependents_are_packed_into_as_few_transactions_as_fit():
    assert dag.pack([1, 1, 1]) == [[0, 1, 2]]
    assert dag.pack([1] * 10, most=8) == [list(range(8)), [8, 9]]
    assert dag.pack([10, 6, 1]) == [[0, 1], [2]]                   # 16 edges, then the budget is spent
    # too many edges to consume inline: a marker, which takes no budget
    assert dag.pack([dag.INLINE_EDGES + 1, dag.INLINE_EDGES, 1]) == [[0, 1], [2]]
    assert dag.pack([]) == []


async def end_many(store: Store, ids: list[str], code: int = 0, batch: int = 100) -> int:
    """Claim and end `ids` on node n1, `batch` per step; the revision of the last end."""
    lease = await store.kv.grant_lease(120)
    last = 0
    for i in range(0, len(ids), batch):
        records = await store.tasks.get_many(ids[i:i + batch])
        now = time.time()
        claims = [Claim(t, transitions.start_attempt(r, "n1", now), store.keys.queue(r.spec.priority, t), rev)
                  for t, (r, rev) in records.items()]
        res = await store.tasks.step("n1", lease, [], claims)
        assert all(res.claimed)
        a = Attempt(n=1, node="n1", state=TaskState.succeeded if code == 0 else TaskState.failed,
                    started_at=now, finished_at=now, exit_code=code)
        ends = [Completion(transitions.finish_attempt(c.record, a, {}, now), res.revision, res.revision)
                for c in claims]
        out = await store.tasks.step("n1", lease, ends, [])
        assert all(out.completed)
        last = max(out.completed_rev.values())
    await store.kv.revoke_lease(lease)
    return last


async def submit_plain(store: Store, n: int) -> list[str]:
    return [r.id for r in await store.tasks.submit([rec() for _ in range(n)])]


async def test_a_10000_way_fan_in_waits_for_every_dependency_and_the_last_success_queues_it(store):
    deps = await submit_plain(store, 10_000)
    await end_many(store, deps[:300])                 # some ended before: counted off at submit
    before = await store.dag.states(deps)
    [total] = await store.tasks.submit([rec(depends_on=deps)])
    assert total.state == TaskState.waiting
    # recording 9,700 edges rewrote none of the dependencies' records
    assert await store.dag.states(deps) == before
    assert len(await store.dag.dependents(deps[-1])) == 1
    await end_many(store, deps[300:-1])
    got, _ = await store.tasks.get_task(total.id)
    assert got.state == TaskState.waiting and total.id not in await queued_ids(store)
    rev = await end_many(store, deps[-1:])
    got, got_rev = await store.tasks.get_task(total.id)
    assert got.state == TaskState.queued and got_rev == rev    # by the very commit of the last success
    assert await queued_ids(store) == {total.id}


async def test_a_10000_way_fan_out_is_queued_through_a_marker_in_chunks(store):
    [root] = await store.tasks.submit([rec()])
    kids = [r.id for r in await store.tasks.submit([rec(depends_on=[root.id]) for _ in range(10_000)])]
    await run_to_end(store, root.id, 0)
    # too many for the ending transaction: a marker says what is left to do
    assert await store.dag.pending() == [root.id]
    assert await store.dag.finish(root.id) == 10_000
    assert await store.dag.pending() == []
    assert await queued_ids(store) == set(kids)
    assert sorted(await store.dag.dependents(root.id)) == sorted(kids)   # kept for their results


async def test_a_failure_passes_upstream_through_markers_to_every_descendant(store):
    [root] = await store.tasks.submit([rec()])
    kids = [r.id for r in await store.tasks.submit([rec(depends_on=[root.id]) for _ in range(40)])]
    grandkids = [r.id for r in await store.tasks.submit(
        [rec(depends_on=kids[i:i + 2]) for i in range(0, 40, 2)] + [rec(depends_on=kids[:30])])]
    await run_to_end(store, root.id, 1)
    await store.dag.finish_all()
    got = await store.tasks.get_many(kids + grandkids)
    assert {r.state for r, _ in got.values()} == {TaskState.upstream_failed}
    assert got[kids[7]][0].reason == f"dependency {root.id} ended failed"
    assert await queued_ids(store) == set() and await store.dag.pending() == []


async def test_a_crash_between_cascade_chunks_is_finished_once_by_the_next_run(store, monkeypatch):
    [root] = await store.tasks.submit([rec()])
    [other] = await store.tasks.submit([rec()])
    kids = [r.id for r in await store.tasks.submit([rec(depends_on=[root.id, other.id]) for _ in range(200)])]
    await run_to_end(store, root.id, 0)
    real_txn, writes = store.kv.txn, []

    async def dies_after_three_chunks(compare, success, failure=(), retry=True):
        if compare:    # a write (reads compare nothing)
            writes.append(1)
            if len(writes) > 3:
                raise ConnectionError("the node finishing the cascade died")
        return await real_txn(compare, success, failure, retry)
    monkeypatch.setattr(store.kv, "txn", dies_after_three_chunks)
    with pytest.raises(ConnectionError):
        await store.dag.finish(root.id)
    monkeypatch.setattr(store.kv, "txn", real_txn)
    assert await store.dag.pending() == [root.id]
    assert await store.dag.finish_all() == 200 - 3 * dag.CHUNK_EDGES   # the rest, each edge once
    # every kid counted root off exactly once: one dependency left, none queued early
    assert await queued_ids(store) == {other.id}
    await run_to_end(store, other.id, 0)
    await store.dag.finish_all()
    assert await queued_ids(store) == set(kids)


async def test_a_recording_left_half_done_is_finished_by_a_retry_or_the_reaper(store):
    deps = await submit_plain(store, 250)
    r = rec(depends_on=deps)
    new = await store.dag.create(r, store.tasks.check_size)   # the submitter died after one chunk
    assert new.state == TaskState.waiting
    assert len(await store.dag.dependents(deps[99])) == 1 and await store.dag.dependents(deps[100]) == []
    await end_many(store, deps[:10] + deps[200:])             # recorded and unrecorded ones end
    again = await store.tasks.submit_dependent(r)             # a retried submit goes on
    assert again.state == TaskState.waiting
    await store.dag.record_all_rest()                         # as the reaper would: nothing left to do
    assert len(await store.dag.dependents(deps[150])) == 1 and await store.dag.dependents(deps[220]) == []
    await end_many(store, deps[10:200])
    assert await queued_ids(store) == {r.id}


async def test_a_dependent_submitted_while_its_dependency_ends_is_never_left_waiting(store):
    """Submit a dependent while its dependency's end is being committed, many times."""
    import asyncio
    for _ in range(20):
        [a] = await store.tasks.submit([rec()])
        _, [b] = await asyncio.gather(end_many(store, [a.id]), store.tasks.submit([rec(depends_on=[a.id])]))
        await store.dag.finish_all()
        got, _ = await store.tasks.get_task(b.id)
        assert got.state == TaskState.queued


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


async def test_one_step_ending_many_tasks_with_shared_dependents_moves_each_once(store):
    deps = await submit_plain(store, 12)
    [every] = await store.tasks.submit([rec(depends_on=deps)])
    [half] = await store.tasks.submit([rec(depends_on=deps[:6])])
    [never] = await store.tasks.submit([rec()])
    [later] = await store.tasks.submit([rec(depends_on=[deps[0], never.id])])
    rev = await end_many(store, deps, batch=12)                # all twelve end in one step
    got = await store.tasks.get_many([every.id, half.id, later.id])
    assert got[every.id][0].state == TaskState.queued and got[every.id][1] == rev   # with the last of them
    assert got[half.id][0].state == TaskState.queued
    assert got[later.id][0].state == TaskState.waiting
    [counter], _, _ = await store.kv.range(store.keys.waits(later.id))
    assert Wait.from_dict(json.loads(counter.value)).left == 1    # `never` still to end
    assert await queued_ids(store) == {every.id, half.id, never.id}
    # every edge was consumed, each exactly once (a second count would have queued `later`)
    for t in deps:
        kvs, _, _ = await store.kv.get_prefix(store.keys.edges_of(t))
        assert {kv.value for kv in kvs} == {b"c"}
    assert await store.dag.pending() == []


async def test_a_counter_another_node_changed_is_read_again_not_trusted(store, etcd):
    """Node 1 remembers a waiting task's counter from its own commit; node 2 then counts
    off another dependency. Node 1's next end must see that, or the last success would
    leave the task waiting forever."""
    other = Store([etcd.url], prefix=store.keys.prefix, retry_for_s=10)
    await other.connect(wait_s=5)
    try:
        a1, a2, a3 = await submit_plain(store, 3)
        [d] = await store.tasks.submit([rec(depends_on=[a1, a2, a3])])
        await run_to_end(store, a1, 0)          # node 1: 2 left, and it remembers that
        await run_to_end(other, a2, 0)          # node 2: 1 left
        rev = await run_to_end(store, a3, 0)    # node 1 again: the last one
        got, got_rev = await store.tasks.get_task(d.id)
        assert got.state == TaskState.queued and got_rev == rev
        assert await queued_ids(store) == {d.id}
    finally:
        await other.close()
