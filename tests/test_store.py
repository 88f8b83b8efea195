"""Store transactions against a real etcd: submit, claim, complete, requeue, cancel,
fencing, sizes, watches, elections, and etcd's failures as shoal's errors."""
from __future__ import annotations

import asyncio
import time

import pytest

from shoal.errors import Conflict, NotFound, StoreCompacted, StoreUnavailable, TooLarge
from shoal.logic import transitions
from shoal.logic.clock import TestClock
from shoal.model import Attempt, NodeInfo, TaskRecord, TaskSpec, TaskState, new_ids
from shoal.model.keys import Keys
from shoal.store import Store
from shoal.store.dag import DagStore
from shoal.store.kv import Etcd, WatchReset
from shoal.store.nodes import NodeStore
from shoal.store.tasks import Claim, Completion, TaskStore


def records(n: int, **spec) -> list[TaskRecord]:
    now = time.time()
    return [TaskRecord(id=i, spec=TaskSpec(command=["true"], **spec), submitted_at=now) for i in new_ids(n)]


async def claim(store: Store, node: str, lease: int, recs: list[TaskRecord]):
    kvs, _, _ = await store.kv.get_prefix(store.keys.queues)
    by_id = {store.keys.id_of(kv.key): kv for kv in kvs}
    claims = [Claim(r.id, transitions.start_attempt(r, node, time.time()), by_id[r.id].key,
                    by_id[r.id].mod_revision) for r in recs if r.id in by_id]
    return claims, await store.tasks.step(node, lease, [], claims)


def finished(rec: TaskRecord, code: int) -> TaskRecord:
    a = Attempt(n=rec.attempt, node=rec.node, state=TaskState.succeeded if code == 0 else TaskState.failed,
                started_at=rec.started_at, finished_at=time.time(), exit_code=code)
    return transitions.finish_attempt(rec, a, {}, time.time())


async def test_submit_then_get_and_queue_order(store):
    recs = records(5)
    await store.tasks.submit(recs)
    got, _ = await store.tasks.get_task(recs[2].id)
    assert got.state == TaskState.queued and got.spec.command == ["true"]
    kvs, _, _ = await store.kv.get_prefix(store.keys.queues)
    assert [store.keys.id_of(kv.key) for kv in kvs] == [r.id for r in recs]


async def test_higher_priority_sorts_first_in_queue(store):
    low = records(1, priority=-5)
    high = records(1, priority=7)
    await store.tasks.submit(low + high)
    kvs, _, _ = await store.kv.get_prefix(store.keys.queues)
    assert [store.keys.id_of(kv.key) for kv in kvs] == [high[0].id, low[0].id]


async def test_resubmitting_an_id_does_not_reset_a_claimed_task(store):
    recs = records(1)
    await store.tasks.submit(recs)
    lease = await store.kv.grant_lease(10)
    await claim(store, "n1", lease, recs)
    await store.tasks.submit(recs)  # a retried request
    got, _ = await store.tasks.get_task(recs[0].id)
    assert got.state == TaskState.running
    kvs, _, _ = await store.kv.get_prefix(store.keys.queues)
    assert kvs == []


async def test_an_id_resent_with_another_spec_is_a_conflict_unless_the_existing_task_is_kept(store):
    recs = records(1)
    await store.tasks.submit(recs)
    other = recs[0].model_copy(update={"spec": recs[0].spec.model_copy(update={"name": "other"})})
    with pytest.raises(Conflict, match=recs[0].id):
        await store.tasks.submit([other])
    # a flow driver taking over submits what is missing under ids it chose: what is there stays
    kept = await store.tasks.submit([other], keep_existing=True)
    assert kept[0].spec == recs[0].spec
    got, _ = await store.tasks.get_task(recs[0].id)
    assert got.spec == recs[0].spec


async def test_two_nodes_racing_claim_each_task_once(store):
    recs = records(20)
    await store.tasks.submit(recs)
    l1, l2 = await store.kv.grant_lease(10), await store.kv.grant_lease(10)
    (c1, r1), (c2, r2) = await asyncio.gather(claim(store, "n1", l1, recs), claim(store, "n2", l2, recs))
    won1 = {c.task_id for c, ok in zip(c1, r1.claimed) if ok}
    won2 = {c.task_id for c, ok in zip(c2, r2.claimed) if ok}
    assert won1.isdisjoint(won2)
    assert won1 | won2 == {r.id for r in recs}
    running = await store.tasks.running_tasks()
    assert running.get("n1", set()) == won1 and running.get("n2", set()) == won2


async def test_complete_records_success_once_and_fences_stale_attempts(store):
    recs = records(1)
    await store.tasks.submit(recs)
    lease = await store.kv.grant_lease(10)
    claims, res = await claim(store, "n1", lease, recs)
    running, rev = await store.tasks.get_task(recs[0].id)
    done = finished(running, 0)
    r1 = await store.tasks.step("n1", lease, [Completion(done, rev, res.revision)], [])
    assert r1.completed == [True]
    r2 = await store.tasks.step("n1", lease, [Completion(done, rev, res.revision)], [])
    assert r2.completed == [False] and r2.current[recs[0].id][0] is None  # fenced: no second success
    got, _ = await store.tasks.get_task(recs[0].id)
    assert got.state == TaskState.succeeded and len(got.attempts) == 1


async def test_lease_expiry_then_requeue_and_stale_completion_rejected(store):
    recs = records(1, retries=1)
    await store.tasks.submit(recs)
    lease = await store.kv.grant_lease(10)
    _, res = await claim(store, "n1", lease, recs)
    running, rev = await store.tasks.get_task(recs[0].id)
    await store.kv.revoke_lease(lease)  # the node "dies": its running key vanishes
    new = await store.tasks.requeue_lost(recs[0].id, "n1")
    assert new.state == TaskState.queued and new.attempts[0].reason == "node n1 was lost"
    late = await store.tasks.step("n1", lease, [Completion(finished(running, 0), rev, res.revision)], [])
    assert late.completed == [False]
    got, _ = await store.tasks.get_task(recs[0].id)
    assert got.state == TaskState.queued


async def test_requeue_leaves_a_live_attempt_alone(store):
    recs = records(1)
    await store.tasks.submit(recs)
    lease = await store.kv.grant_lease(10)
    await claim(store, "n1", lease, recs)
    assert await store.tasks.requeue_lost(recs[0].id, "n1") is None
    got, _ = await store.tasks.get_task(recs[0].id)
    assert got.state == TaskState.running


async def test_lost_node_past_the_node_loss_limit_fails_the_task(store):
    recs = records(1)
    await store.tasks.submit(recs)
    lease = await store.kv.grant_lease(10)
    await claim(store, "n1", lease, recs)
    await store.kv.revoke_lease(lease)
    new = await store.tasks.requeue_lost(recs[0].id, "n1", limit=0)
    assert new.state == TaskState.failed and "node n1 was lost" in new.reason
    assert "node_loss_retries: 0" in new.reason


async def test_the_store_stamps_transitions_with_its_clock(etcd):
    clock = TestClock(wall=2_000_000_000.0)
    store = Store([etcd.url], prefix="/clocked/", retry_for_s=10, clock=clock)
    await store.connect(wait_s=5)
    try:
        recs = records(2)
        await store.tasks.submit(recs)
        lease = await store.kv.grant_lease(10)
        await claim(store, "n1", lease, recs[:1])
        await store.kv.revoke_lease(lease)
        clock.advance(7.5)
        lost = await store.tasks.requeue_lost(recs[0].id, "n1", limit=0)
        assert lost.finished_at == lost.attempts[-1].finished_at == 2_000_000_007.5
        cancelled = await store.tasks.cancel(recs[1].id)
        assert cancelled.finished_at == 2_000_000_007.5
    finally:
        await store.close()


async def test_cancel_queued_running_and_finished(store):
    recs = records(3)
    await store.tasks.submit(recs)
    got = await store.tasks.cancel(recs[0].id)
    assert got.state == TaskState.cancelled
    kvs, _, _ = await store.kv.get_prefix(store.keys.queues)
    assert recs[0].id not in {store.keys.id_of(kv.key) for kv in kvs}
    lease = await store.kv.grant_lease(10)
    await store.nodes.put_node(NodeInfo(id="n1", host="h", pid=1, api="http://x", cpus=1, memory=1, slots=1,
                                        lease=lease, started_at=time.time()), lease)
    await claim(store, "n1", lease, recs[1:2])
    got = await store.tasks.cancel(recs[1].id)
    assert got.state == TaskState.running and got.cancel_requested
    kvs, _, _ = await store.kv.get_prefix(store.keys.cancels_for("n1"))
    assert [store.keys.id_of(kv.key) for kv in kvs] == [recs[1].id]
    await store.tasks.cancel(recs[2].id)
    with pytest.raises(Conflict, match="already ended cancelled"):
        await store.tasks.cancel(recs[2].id)
    with pytest.raises(NotFound):
        await store.tasks.cancel("t-nope")


async def test_oversized_task_refused_before_sending(store):
    big = TaskRecord(id=new_ids(1)[0], spec=TaskSpec(command=["true"], env={"X": "x" * 2_000_000}),
                     submitted_at=time.time())
    with pytest.raises(TooLarge, match="bytes"):
        await store.tasks.submit([big])
    with pytest.raises(NotFound):
        await store.tasks.get_task(big.id)


async def test_batch_larger_than_txn_limit_is_split(store):
    recs = records(300)  # > 128 ops per txn
    await store.tasks.submit(recs)
    found, _ = await store.tasks.get_tasks([r.id for r in recs])
    assert len(found) == 300


async def test_list_newest_first_with_filter_and_cursor(store):
    recs = records(7)
    await store.tasks.submit(recs)
    page, cursor = await store.tasks.list_tasks(limit=3)
    assert [r.id for r in page] == [r.id for r in reversed(recs)][:3]
    page2, _ = await store.tasks.list_tasks(limit=3, before=cursor)
    assert [r.id for r in page2] == [r.id for r in reversed(recs)][3:6]


async def test_watch_resumes_after_compaction_with_a_reset(store):
    await store.tasks.submit(records(1))
    rev = await store.kv.revision()
    await store.tasks.submit(records(2))
    await store.kv.compact(await store.kv.revision())
    agen = store.kv.watch(store.keys.tasks, rev)
    first = await asyncio.wait_for(agen.__anext__(), 5)
    assert isinstance(first, WatchReset)
    await agen.aclose()


async def test_election_has_one_holder(store):
    l1, l2 = await store.kv.grant_lease(10), await store.kv.grant_lease(10)
    assert await store.elections.campaign("reaper", "n1", l1)
    assert not await store.elections.campaign("reaper", "n2", l2)
    await store.kv.revoke_lease(l1)
    assert await store.elections.campaign("reaper", "n2", l2)
    assert await store.elections.leader("reaper") == "n2"


async def test_resign_deletes_the_election_key_only_when_we_hold_it(store):
    l1, l2 = await store.kv.grant_lease(10), await store.kv.grant_lease(10)
    assert await store.elections.campaign("reaper", "n1", l1)
    assert not await store.elections.resign("reaper", "n2", l2)      # someone else's
    assert not await store.elections.resign("reaper", "n1", l2)      # ours, but from an old lease
    assert await store.elections.leader("reaper") == "n1"
    assert await store.elections.resign("reaper", "n1", l1)
    assert await store.elections.leader("reaper") is None
    assert not await store.elections.resign("reaper", "n1", l1)      # nothing left to release
    assert await store.elections.campaign("reaper", "n2", l2)        # free for another node at once


async def test_a_read_at_a_compacted_revision_raises_store_compacted(store):
    recs = records(1)
    await store.tasks.submit(recs)
    lease = await store.kv.grant_lease(10)
    await claim(store, "n1", lease, recs)
    rev = await store.kv.revision()
    await store.tasks.submit(records(1))
    await store.kv.compact(await store.kv.revision())
    with pytest.raises(StoreCompacted):
        await store.tasks.running_on("n1", revision=rev)
    with pytest.raises(StoreCompacted):
        await store.kv.range(store.keys.tasks, revision=rev)
    assert [store.keys.id_of(kv.key) for kv in await store.tasks.running_on("n1")] == [recs[0].id]


async def test_unreachable_etcd_raises_store_unavailable_after_retrying(etcd):
    store = Store([etcd.url], prefix="/t-gone/", timeout_s=0.5, retry_for_s=1)
    await store.connect(wait_s=5)
    etcd.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match=etcd.url.split("//")[1]):
            await store.tasks.get_task("t-any")
        assert time.monotonic() - t0 < 10
    finally:
        await store.close()


async def test_task_pieces_claim_and_complete_in_one_step(etcd):
    """The task store on its own pieces (etcd, keys, cascade, nodes), no aggregate: one
    step completes an attempt and claims the next task in the same transaction."""
    kv, keys = Etcd([etcd.url], retry_for_s=5), Keys("/t-pieces/")
    tasks = TaskStore(kv, keys, DagStore(kv, keys), NodeStore(kv, keys))
    await kv.connect(wait_s=5)
    try:
        first, second = records(2)
        await tasks.submit([first, second])
        lease = await kv.grant_lease(10)
        kvs, _, _ = await kv.get_prefix(keys.queues)
        q = {keys.id_of(x.key): x for x in kvs}
        start = Claim(first.id, transitions.start_attempt(first, "n1", time.time()), q[first.id].key,
                      q[first.id].mod_revision)
        res = await tasks.step("n1", lease, [], [start])
        assert res.claimed == [True]
        running, rev = await tasks.get_task(first.id)
        nxt = Claim(second.id, transitions.start_attempt(second, "n1", time.time()), q[second.id].key,
                    q[second.id].mod_revision)
        out = await tasks.step("n1", lease, [Completion(finished(running, 0), rev, res.revision)], [nxt])
        assert out.completed == [True] and out.claimed == [True]
        assert (await tasks.get_task(first.id))[0].state == TaskState.succeeded
        assert (await tasks.get_task(second.id))[0].state == TaskState.running
        assert await tasks.running_tasks() == {"n1": {second.id}}
        assert (await kv.get_prefix(keys.queues))[0] == []
    finally:
        await kv.close()
