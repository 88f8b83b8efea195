"""Store transactions against a real etcd: submit, claim, complete, requeue, cancel,
fencing, sizes, watches."""
from __future__ import annotations

import asyncio
import time

import pytest

from shoal.errors import Conflict, NotFound, TooLarge
from shoal.logic import transitions
from shoal.model import Attempt, TaskRecord, TaskSpec, TaskState, new_ids
from shoal.store.etcd import Claim, Completion, Store, WatchReset


def records(n: int, **spec) -> list[TaskRecord]:
    now = time.time()
    return [TaskRecord(id=i, spec=TaskSpec(command=["true"], **spec), submitted_at=now) for i in new_ids(n)]


async def claim(store: Store, node: str, lease: int, recs: list[TaskRecord]):
    kvs, _, _ = await store.get_prefix(store.keys.queues)
    by_id = {store.keys.id_of(kv.key): kv for kv in kvs}
    claims = [Claim(r.id, transitions.start_attempt(r, node, time.time()), by_id[r.id].key,
                    by_id[r.id].mod_revision) for r in recs if r.id in by_id]
    return claims, await store.step(node, lease, [], claims)


def finished(rec: TaskRecord, code: int) -> TaskRecord:
    a = Attempt(n=rec.attempt, node=rec.node, state=TaskState.succeeded if code == 0 else TaskState.failed,
                started_at=rec.started_at, finished_at=time.time(), exit_code=code)
    return transitions.finish_attempt(rec, a, {}, time.time())


async def test_submit_then_get_and_queue_order(store):
    recs = records(5)
    await store.submit(recs)
    got, _ = await store.get_task(recs[2].id)
    assert got.state == TaskState.queued and got.spec.command == ["true"]
    kvs, _, _ = await store.get_prefix(store.keys.queues)
    assert [store.keys.id_of(kv.key) for kv in kvs] == [r.id for r in recs]


async def test_higher_priority_sorts_first_in_queue(store):
    low = records(1, priority=-5)
    high = records(1, priority=7)
    await store.submit(low + high)
    kvs, _, _ = await store.get_prefix(store.keys.queues)
    assert [store.keys.id_of(kv.key) for kv in kvs] == [high[0].id, low[0].id]


async def test_resubmitting_an_id_does_not_reset_a_claimed_task(store):
    recs = records(1)
    await store.submit(recs)
    lease = await store.grant_lease(10)
    await claim(store, "n1", lease, recs)
    await store.submit(recs)  # a retried request
    got, _ = await store.get_task(recs[0].id)
    assert got.state == TaskState.running
    kvs, _, _ = await store.get_prefix(store.keys.queues)
    assert kvs == []


async def test_two_nodes_racing_claim_each_task_once(store):
    recs = records(20)
    await store.submit(recs)
    l1, l2 = await store.grant_lease(10), await store.grant_lease(10)
    (c1, r1), (c2, r2) = await asyncio.gather(claim(store, "n1", l1, recs), claim(store, "n2", l2, recs))
    won1 = {c.task_id for c, ok in zip(c1, r1.claimed) if ok}
    won2 = {c.task_id for c, ok in zip(c2, r2.claimed) if ok}
    assert won1.isdisjoint(won2)
    assert won1 | won2 == {r.id for r in recs}
    running = await store.running_tasks()
    assert running.get("n1", set()) == won1 and running.get("n2", set()) == won2


async def test_complete_records_success_once_and_fences_stale_attempts(store):
    recs = records(1)
    await store.submit(recs)
    lease = await store.grant_lease(10)
    claims, res = await claim(store, "n1", lease, recs)
    running, rev = await store.get_task(recs[0].id)
    done = finished(running, 0)
    r1 = await store.step("n1", lease, [Completion(done, rev, res.revision)], [])
    assert r1.completed == [True]
    r2 = await store.step("n1", lease, [Completion(done, rev, res.revision)], [])
    assert r2.completed == [False] and r2.current[recs[0].id][0] is None  # fenced: no second success
    got, _ = await store.get_task(recs[0].id)
    assert got.state == TaskState.succeeded and len(got.attempts) == 1


async def test_lease_expiry_then_requeue_and_stale_completion_rejected(store):
    recs = records(1, retries=1)
    await store.submit(recs)
    lease = await store.grant_lease(10)
    _, res = await claim(store, "n1", lease, recs)
    running, rev = await store.get_task(recs[0].id)
    await store.revoke_lease(lease)  # the node "dies": its running key vanishes
    new = await store.requeue_lost(recs[0].id, "n1")
    assert new.state == TaskState.queued and new.attempts[0].reason == "node n1 was lost"
    late = await store.step("n1", lease, [Completion(finished(running, 0), rev, res.revision)], [])
    assert late.completed == [False]
    got, _ = await store.get_task(recs[0].id)
    assert got.state == TaskState.queued


async def test_requeue_leaves_a_live_attempt_alone(store):
    recs = records(1)
    await store.submit(recs)
    lease = await store.grant_lease(10)
    await claim(store, "n1", lease, recs)
    assert await store.requeue_lost(recs[0].id, "n1") is None
    got, _ = await store.get_task(recs[0].id)
    assert got.state == TaskState.running


async def test_lost_node_with_no_retries_left_fails_the_task(store):
    recs = records(1)
    await store.submit(recs)
    lease = await store.grant_lease(10)
    await claim(store, "n1", lease, recs)
    await store.revoke_lease(lease)
    new = await store.requeue_lost(recs[0].id, "n1")
    assert new.state == TaskState.failed and "node n1 was lost" in new.reason


async def test_cancel_queued_running_and_finished(store):
    recs = records(3)
    await store.submit(recs)
    got = await store.cancel(recs[0].id)
    assert got.state == TaskState.cancelled
    kvs, _, _ = await store.get_prefix(store.keys.queues)
    assert recs[0].id not in {store.keys.id_of(kv.key) for kv in kvs}
    lease = await store.grant_lease(10)
    from shoal.model import NodeInfo
    await store.put_node(NodeInfo(id="n1", host="h", pid=1, api="http://x", cpus=1, memory=1, slots=1,
                                  lease=lease, started_at=time.time()), lease)
    await claim(store, "n1", lease, recs[1:2])
    got = await store.cancel(recs[1].id)
    assert got.state == TaskState.running and got.cancel_requested
    kvs, _, _ = await store.get_prefix(store.keys.cancels_for("n1"))
    assert [store.keys.id_of(kv.key) for kv in kvs] == [recs[1].id]
    await store.cancel(recs[2].id)
    with pytest.raises(Conflict, match="already ended cancelled"):
        await store.cancel(recs[2].id)
    with pytest.raises(NotFound):
        await store.cancel("t-nope")


async def test_oversized_task_refused_before_sending(store):
    big = TaskRecord(id=new_ids(1)[0], spec=TaskSpec(command=["true"], env={"X": "x" * 2_000_000}),
                     submitted_at=time.time())
    with pytest.raises(TooLarge, match="bytes"):
        await store.submit([big])
    with pytest.raises(NotFound):
        await store.get_task(big.id)


async def test_batch_larger_than_txn_limit_is_split(store):
    recs = records(300)  # > 128 ops per txn
    await store.submit(recs)
    found, _ = await store.get_tasks([r.id for r in recs])
    assert len(found) == 300


async def test_list_newest_first_with_filter_and_cursor(store):
    recs = records(7)
    await store.submit(recs)
    page, cursor = await store.list_tasks(limit=3)
    assert [r.id for r in page] == [r.id for r in reversed(recs)][:3]
    page2, _ = await store.list_tasks(limit=3, before=cursor)
    assert [r.id for r in page2] == [r.id for r in reversed(recs)][3:6]


async def test_watch_resumes_after_compaction_with_a_reset(store):
    await store.submit(records(1))
    rev = await store.revision()
    await store.submit(records(2))
    await store._client.compact(await store.revision())
    agen = store.watch(store.keys.tasks, rev)
    first = await asyncio.wait_for(agen.__anext__(), 5)
    assert isinstance(first, WatchReset)
    await agen.aclose()


async def test_election_has_one_holder(store):
    l1, l2 = await store.grant_lease(10), await store.grant_lease(10)
    assert await store.campaign("reaper", "n1", l1)
    assert not await store.campaign("reaper", "n2", l2)
    await store.revoke_lease(l1)
    assert await store.campaign("reaper", "n2", l2)
    assert await store.leader("reaper") == "n2"
