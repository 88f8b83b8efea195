"""Flow runs in a real etcd: a run is created once, only the node holding its driver role
writes its record, outcomes round-trip, and a client's lease says whether it is there."""
from __future__ import annotations

import asyncio

import pytest

from shoal.errors import Conflict, NotFound
from shoal.flows.outcome import Outcome, OutcomeKind
from shoal.flows.run import ClientLink, FlowRunRecord, FlowState, driver_role
from shoal.flows.spec import FlowSpec

SPEC = FlowSpec.model_validate({"name": "x", "stages": [{"name": "a", "read": "in.txt", "op": "pass",
                                                         "write": "out.txt"}]})


def record(**kw) -> FlowRunRecord:
    return FlowRunRecord(id="x-1", name="x", spec=SPEC, base_dir="/tmp", **kw)


async def test_a_run_is_created_once_and_written_only_by_its_driver(store):
    assert await store.flows.create_run(record()) == 0
    with pytest.raises(Conflict):
        await store.flows.create_run(record())
    running = record(state=FlowState.running, attempt=1)
    assert not await store.flows.put_run(running, "node-1")          # nobody holds the role yet
    lease = await store.kv.grant_lease(5)
    assert await store.elections.campaign(driver_role("x-1"), "node-1", lease)
    assert not await store.flows.put_run(running, "node-2")          # not the holder
    assert await store.flows.put_run(running, "node-1")
    got, rev = await store.flows.get_run_rev("x-1")
    assert got == running
    (runs, _), listed = await store.flows.runs(), await store.flows.list_runs()
    assert [r.id for r in runs] == ["x-1"] and listed == [running]
    # a follower sees the next write at once, and the same record when nothing changed
    later = asyncio.create_task(store.flows.wait_run("x-1", rev, 10))
    await asyncio.sleep(0.2)
    await store.flows.put_run(running.model_copy(update={"state": FlowState.committing}), "node-1")
    assert (await later)[0].state == FlowState.committing
    same, same_rev = await store.flows.wait_run("x-1", rev + 100, 0.2)
    assert same.state == FlowState.committing
    with pytest.raises(NotFound):
        await store.flows.get_run("nope")


async def test_outcomes_and_the_client_lease(store):
    boom = Outcome(kind=OutcomeKind.failed, message="command exited with status 7", stderr="disk on fire")
    await store.flows.put_outcome("x-1", 2, "a", 0, boom)
    await store.flows.put_outcome("x-1", 2, "b", 1, Outcome(kind=OutcomeKind.succeeded, bad=3))
    assert await store.flows.get_outcome("x-1", 2, "a", 0) == boom
    assert await store.flows.get_outcome("x-1", 1, "a", 0) is None
    assert set(await store.flows.get_outcomes("x-1", 2)) == {("a", 0), ("b", 1)}

    lease = await store.flows.create_run(record(client=ClientLink(feeds="a", ttl_s=2)))
    assert lease and await store.flows.client_alive("x-1")
    assert await store.flows.keep_client("x-1", lease)
    assert not await store.flows.keep_client("x-1", lease + 1)        # not its lease
    await store.flows.release_client("x-1", lease)
    assert not await store.flows.client_alive("x-1")
    assert not await store.flows.keep_client("x-1", lease)


async def test_a_driver_that_keeps_crashing_fails_the_run_after_the_limit(store, monkeypatch, tmp_path):
    """An unexpected error in the driver passes the role on and is counted in the record;
    at the limit the run fails with the error instead of bouncing between nodes for ever."""
    from shoal.flows import driver as driver_mod

    def broken(run, event, now):
        raise RuntimeError("a bug in deciding")

    monkeypatch.setattr(driver_mod, "decide", broken)
    (tmp_path / "in.txt").write_text("a\n")
    rec = FlowRunRecord(id="x-2", name="x", spec=SPEC, base_dir=str(tmp_path))
    await store.flows.create_run(rec)
    lease = await store.kv.grant_lease(30)
    assert await store.elections.campaign(driver_role("x-2"), "node-1", lease)
    for n in range(1, driver_mod.MAX_DRIVER_CRASHES + 1):
        with pytest.raises(RuntimeError, match="a bug in deciding"):
            await driver_mod.FlowDriver(store, "x-2", "node-1", feed=None).serve()
        got = await store.flows.get_run("x-2")
        assert got.driver_crashes == n
        assert got.is_final == (n == driver_mod.MAX_DRIVER_CRASHES)
    assert got.state == FlowState.failed
    assert "failed 3 times on an unexpected error (last: RuntimeError: a bug in deciding)" in got.error
    # a driver that wins the role afterwards finds the run over and returns at once
    await driver_mod.FlowDriver(store, "x-2", "node-1", feed=None).serve()
    await store.kv.revoke_lease(lease)
