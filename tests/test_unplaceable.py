"""Queued tasks that no live node can run say why, against a real etcd: the reaper's pass
writes the reason, leaves an unchanged one alone and clears it once a node fits."""
from __future__ import annotations

import time

from shoal.model import NodeInfo, TaskRecord, TaskSpec, TaskState, new_ids
from shoal.node.reaper import Reaper


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
