"""Flow runs: the record the running client keeps, the data endpoints of stage
instances, live counters, and cancel. Flow data itself never passes through here."""
from __future__ import annotations

import time

from fastapi import APIRouter, Body, Request

from ..errors import Conflict, NotFound

router = APIRouter(tags=["flows"])
FINAL = ("succeeded", "failed", "cancelled")


@router.put("/v1/flows/{run}")
async def put_run(request: Request, run: str, record: dict = Body(...)):
    """Create or update a run's record (written by the client that drives the run)."""
    await request.app.state.node.store.flows.put_run(run, dict(record, id=run))
    return {"id": run}


@router.get("/v1/flows")
async def list_runs(request: Request, limit: int = 50):
    runs = await request.app.state.node.store.flows.list_runs(limit)
    return {"flows": [{k: r.get(k) for k in ("id", "name", "state", "attempt", "started", "ended", "error")}
                      for r in runs]}


@router.get("/v1/flows/{run}")
async def get_run(request: Request, run: str):
    """The record, each instance's task state and node, and its live counters."""
    node = request.app.state.node
    record = await node.store.flows.get_run(run)
    attempt = record.get("attempt", 0)
    stats = await node.store.flows.get_stats(run, attempt) if attempt else {}
    ids = [t for ids in record.get("tasks", {}).values() for t in ids]
    tasks, _ = await node.store.tasks.get_tasks(ids) if ids else ({}, 0)
    stages = []
    for stage, stage_ids in record.get("tasks", {}).items():
        instances = []
        for i, tid in enumerate(stage_ids):
            t = tasks.get(tid)
            s = stats.get(stage, {}).get(i, {})
            instances.append({"index": i, "task": tid, "state": t.state.value if t else "gone",
                              "node": t.node if t else None, "reason": t.reason if t else None, **s})
        stages.append({"name": stage, "instances": instances})
    return dict(record, stages=stages, now=time.time(),
                cancel_requested=await node.store.flows.cancel_requested(run))


@router.get("/v1/flows/{run}/{attempt}/endpoints/{stage}")
async def endpoints(request: Request, run: str, attempt: int, stage: str, count: int, timeout: float = 60.0):
    """The data addresses of instances 0..count-1, once all have started (long poll)."""
    store = request.app.state.node.store
    try:
        return {"endpoints": await store.flows.wait_endpoints(run, attempt, stage, count, timeout)}
    except TimeoutError as e:
        raise Conflict(str(e)) from None


@router.put("/v1/flows/{run}/{attempt}/endpoints/{stage}/{index}")
async def put_endpoint(request: Request, run: str, attempt: int, stage: str, index: int,
                       body: dict = Body(...)):
    await request.app.state.node.store.flows.put_endpoint(run, attempt, stage, index, body["address"])
    return {"ok": True}


@router.post("/v1/flows/{run}/cancel")
async def cancel(request: Request, run: str):
    """Stop every instance of the run. The client driving it reports the run cancelled."""
    node = request.app.state.node
    record = await node.store.flows.get_run(run)
    if record.get("state") in FINAL:
        raise Conflict(f"flow run {run} already ended {record['state']}")
    await node.store.flows.put_cancel(run)
    cancelled = 0
    for ids in record.get("tasks", {}).values():
        for tid in ids:
            try:
                await node.store.tasks.cancel(tid)
                cancelled += 1
            except (Conflict, NotFound):
                pass
    return {"id": run, "cancelled_instances": cancelled}
