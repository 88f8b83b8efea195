"""Elected roles against a real etcd: one holder at a time, a crashed role is released
and taken over, a role that is done stops, and a reaper that crashed once still requeues
the work of a dead node."""
from __future__ import annotations

import asyncio
import contextlib
import time

from shoal.model import NodeInfo, TaskRecord, TaskSpec, TaskState
from shoal.node.reaper import Reaper
from shoal.node.roles import Roles
from shoal.logic import transitions
from shoal.store.tasks import Claim


@contextlib.asynccontextmanager
async def running(*roles: Roles):
    tasks = [asyncio.create_task(r.run()) for r in roles]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until(pred, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_one_holder_and_a_crashed_role_passes_to_another_node(store):
    lease_a, lease_b = await store.kv.grant_lease(30), await store.kv.grant_lease(30)
    entered: list[str] = []

    def serve_as(node):
        async def serve():
            entered.append(node)
            if len(entered) == 1:
                await asyncio.sleep(0.2)
                raise RuntimeError("injected crash")
            await asyncio.Event().wait()
        return serve

    a = Roles(store, "node-a", lambda: lease_a, crash_pause_s=1.0)
    b = Roles(store, "node-b", lambda: lease_b, crash_pause_s=1.0)
    a.add("reaper", serve_as("node-a"))
    b.add("reaper", serve_as("node-b"))
    async with running(a, b):
        await until(lambda: len(entered) == 1)
        first = entered[0]
        assert len(a.held | b.held) == 1
        t0 = time.monotonic()
        # the crash releases the key at once; the other node, woken by the watch, wins it
        # while the crashed one pauses
        await until(lambda: len(entered) == 2, timeout_s=5)
        assert time.monotonic() - t0 < 3
        assert entered[1] != first
        assert await store.elections.leader("reaper") == entered[1]
        crashed = a if first == "node-a" else b
        assert crashed._roles["reaper"].crashes == 1
    for lease in (lease_a, lease_b):
        await store.kv.revoke_lease(lease)


async def test_a_role_that_is_done_resigns_and_stops_campaigning(store):
    lease = await store.kv.grant_lease(30)
    runs = 0

    async def serve():
        nonlocal runs
        runs += 1

    roles = Roles(store, "node-a", lambda: lease, poll_s=0.1)
    roles.add("flow/run-1", serve, once=True)
    async with running(roles):
        await until(lambda: runs == 1 and not roles.knows("flow/run-1"))
        await asyncio.sleep(0.5)
        assert runs == 1
        assert await store.elections.leader("flow/run-1") is None
    await store.kv.revoke_lease(lease)


async def test_resign_releases_only_our_own_key(store):
    lease = await store.kv.grant_lease(30)
    assert await store.elections.campaign("reaper", "node-a", lease)
    assert not await store.elections.resign("reaper", "node-b", lease)
    assert await store.elections.leader("reaper") == "node-a"
    assert await store.elections.resign("reaper", "node-a", lease)
    assert await store.elections.leader("reaper") is None
    await store.kv.revoke_lease(lease)


async def test_a_new_lease_stops_the_roles_held_under_the_old_one(store):
    leases = [await store.kv.grant_lease(30)]
    served = []

    async def serve():
        served.append(leases[-1])
        await asyncio.Event().wait()

    roles = Roles(store, "node-a", lambda: leases[-1])
    roles.add("reaper", serve)
    async with running(roles):
        await until(lambda: len(served) == 1)
        await store.kv.revoke_lease(leases[0])          # our keys vanish, as when etcd expires them
        leases.append(await store.kv.grant_lease(30))
        roles.lease_changed()
        await until(lambda: len(served) == 2)
        assert served == leases
    await store.kv.revoke_lease(leases[-1])


async def test_reaper_that_crashed_once_still_requeues_a_dead_nodes_tasks(store):
    """Inject one crash into the reaper role; the role comes back within seconds and a node
    that dies afterwards still has its running task requeued."""
    reaper_lease, dead_lease = await store.kv.grant_lease(30), await store.kv.grant_lease(30)
    reaper = Reaper(store, "node-a")
    crashes = 0

    async def serve_with_one_crash():
        nonlocal crashes
        if crashes == 0:
            crashes += 1
            raise RuntimeError("injected reaper crash")
        await reaper.serve()

    roles = Roles(store, "node-a", lambda: reaper_lease, crash_pause_s=0.5)
    roles.add("reaper", serve_with_one_crash)
    rec = TaskRecord(id="t-reaped", spec=TaskSpec.parse({"command": ["true"], "retries": 1}), submitted_at=time.time())
    await store.tasks.submit([rec])
    queued, rev = await store.tasks.get_task(rec.id)
    claim = Claim(rec.id, transitions.start_attempt(queued, "node-dead", time.time()),
                  store.keys.queue(0, rec.id), rev)
    await store.nodes.put_node(NodeInfo(id="node-dead", host="h", pid=1, api="http://127.0.0.1:1", cpus=1,
                                  memory=1 << 30, slots=1, lease=dead_lease, started_at=time.time()), dead_lease)
    result = await store.tasks.step("node-dead", dead_lease, [], [claim])
    assert result.claimed == [True]
    async with running(roles):
        await until(lambda: crashes == 1 and "reaper" in roles.held, timeout_s=5)
        await asyncio.sleep(0.2)   # the reaper has read its snapshot
        await store.kv.revoke_lease(dead_lease)        # node-dead dies
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got, _ = await store.tasks.get_task(rec.id)
            if got.state == TaskState.queued:
                break
            await asyncio.sleep(0.05)
        assert got.state == TaskState.queued
        assert reaper.requeued == 1
    await store.kv.revoke_lease(reaper_lease)


async def test_a_key_left_on_our_own_lease_is_taken_up_again(store):
    """A resign that failed (etcd away after a crash) leaves the key on our live lease:
    nobody else can win it, so we must take the role up again ourselves."""
    lease = await store.kv.grant_lease(30)
    assert await store.elections.campaign("reaper", "node-a", lease)   # left over
    served = asyncio.Event()

    async def serve():
        served.set()
        await asyncio.Event().wait()

    roles = Roles(store, "node-a", lambda: lease)
    roles.add("reaper", serve)
    async with running(roles):
        await asyncio.wait_for(served.wait(), 5)
        assert "reaper" in roles.held
    await store.kv.revoke_lease(lease)
