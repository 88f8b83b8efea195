"""The reaper against a real etcd: it requeues a lost node's attempts within the
node-loss limit (the cluster's, unless the task sets its own) and says whether the node
died or lost its lease; and it tells queued tasks that no live node can run why, leaves
an unchanged reason alone and clears it once a node fits."""
from __future__ import annotations

import time

from shoal.logic import transitions
from shoal.model import EndedBy, NodeInfo, TaskRecord, TaskSpec, TaskState, new_ids
from shoal.node.reaper import Reaper
from shoal.store.tasks import Claim


def node(node_id: str, cpus: float, labels=()) -> NodeInfo:
    return NodeInfo(id=node_id, host="h", pid=1, api="http://h:1", cpus=cpus, memory=8 << 30, slots=2,
                    labels=list(labels), started_at=time.time())


async def test_the_reaper_tells_queued_tasks_why_no_node_runs_them_and_clears_it_when_one_can(store):
    lease = await store.kv.grant_lease(30)
    await store.nodes.put_node(node("n1", 2), lease)
    big, gpu, small = (TaskRecord(id=tid, spec=TaskSpec.parse(spec), submitted_at=time.time())
                       for tid, spec in zip(new_ids(3), [{"command": "x", "cpus": 100},
                                                          {"command": "x", "labels": ["gpu-a100"]},
                                                          {"command": "x"}]))
    await store.tasks.submit([big, gpu, small])
    reaper = Reaper(store, "n1")

    assert await reaper.explain_queued() == 2
    got = {r.id: r for r in (await store.tasks.get_tasks([big.id, gpu.id, small.id]))[0].values()}
    assert got[big.id].reason == "no node can run it: no node has 100 cpus; the largest offers 2"
    assert got[gpu.id].reason == "no node can run it: no node has label gpu-a100"
    assert got[small.id].reason is None and all(r.state == TaskState.queued for r in got.values())
    # the queue entry is the record's twin: a node's claim compares both
    queued, _, _ = await store.kv.range(store.keys.queue(0, big.id))
    assert b"no node has 100 cpus" in queued[0].value

    _, rev_before = await store.tasks.get_task(big.id)
    assert await reaper.explain_queued() == 0           # nothing changed: nothing rewritten
    assert (await store.tasks.get_task(big.id))[1] == rev_before

    await store.nodes.put_node(node("n2", 128, labels=["gpu-a100"]), lease)   # a node that fits joins
    assert await reaper.explain_queued() == 2
    got = {r.id: r for r in (await store.tasks.get_tasks([big.id, gpu.id]))[0].values()}
    assert got[big.id].reason is None and got[gpu.id].reason is None
    await store.kv.revoke_lease(lease)


async def run_on(store, node_id: str, specs: list[dict]) -> tuple[list[TaskRecord], int]:
    """Submit tasks and claim them for `node_id` under a lease of their own."""
    recs = [TaskRecord(id=tid, spec=TaskSpec.parse(spec), submitted_at=time.time())
            for tid, spec in zip(new_ids(len(specs)), specs)]
    await store.tasks.submit(recs)
    lease = await store.kv.grant_lease(30)
    queued = {store.keys.id_of(kv.key): kv for kv in (await store.kv.get_prefix(store.keys.queues))[0]}
    claims = [Claim(r.id, transitions.start_attempt(r, node_id, time.time()), queued[r.id].key,
                    queued[r.id].mod_revision) for r in recs]
    assert (await store.tasks.step(node_id, lease, [], claims)).claimed == [True] * len(recs)
    return recs, lease


async def test_the_reaper_requeues_within_the_clusters_node_loss_limit_unless_the_task_sets_its_own(store):
    (default, own), lease = await run_on(store, "n1", [{"command": "x"}, {"command": "x", "node_loss_retries": 2}])
    await store.kv.revoke_lease(lease)   # n1 died: its running keys are gone, and it is not registered
    await Reaper(store, "r", node_loss_retries=0).reconcile()
    got = (await store.tasks.get_tasks([default.id, own.id]))[0]
    assert got[default.id].state == TaskState.failed
    assert got[default.id].reason == "node n1 was lost; gave up after 1 node loss (node_loss_retries: 0)"
    assert got[own.id].state == TaskState.queued
    assert got[own.id].reason == "node n1 was lost; requeued (node loss 1 of 2)"
    assert got[own.id].attempts[0].ended_by == EndedBy.node_lost


async def test_a_node_back_under_a_new_lease_lost_its_lease_rather_than_died(store):
    (rec,), lease = await run_on(store, "n1", [{"command": "x"}])
    await store.kv.revoke_lease(lease)
    again = await store.kv.grant_lease(30)
    await store.nodes.put_node(node("n1", 2), again)   # the node registered again
    await Reaper(store, "r").reconcile()
    got, _ = await store.tasks.get_task(rec.id)
    assert got.state == TaskState.queued and got.attempts[0].ended_by == EndedBy.lease_lost
    assert got.reason == "node n1 lost its lease and stopped the attempt; requeued (node loss 1 of 3)"
    await store.kv.revoke_lease(again)
