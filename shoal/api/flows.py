"""Flow runs: submit one (a node of the cluster drives it), read its record and live
counters, follow it, cancel it; the data endpoints of stage instances, and the lease of
the client that feeds or receives a run's data. Flow data itself never passes through here."""
from __future__ import annotations


from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ..errors import Conflict, InvalidSpec
from ..flows.plan import plan_or_raise
from ..flows.run import FlowRunRecord, FlowState

router = APIRouter(tags=["flows"])


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str = Field(min_length=3, description="host:port of a data stream's receiver")


class ClientLease(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lease: int = Field(gt=0)


def _check_new(record: FlowRunRecord) -> None:
    """What a new run must look like beyond its types: every problem at once."""
    problems = []
    if record.state != FlowState.pending:
        problems.append(f"state: a new run is pending (got {record.state.value})")
    if record.attempt or record.tasks or record.restarted or record.ended or record.error or record.driver:
        problems.append("attempt, tasks, restarted, ended, error, driver: the driver writes these; leave them out")
    try:
        plan = plan_or_raise(record.spec)
    except InvalidSpec as e:
        problems += [f"spec.{p}" for p in e.problems]
        plan = None
    if plan is not None:
        feeds = [s.name for s in plan.stages.values() if s.from_client]
        receives = [s.name for s in plan.stages.values() if s.to_client]
        link = record.client
        if (feeds or receives) and link is None:
            problems.append(f"client: stage {(feeds or receives)[0]!r} reads stdin or writes stdout; "
                            "a run with one needs a client that feeds or receives it")
        if link is not None:
            if link.feeds not in (feeds[:1] or [None]):
                problems.append(f"client.feeds: {link.feeds!r} is not the stage that reads stdin ({feeds or 'none'})")
            if link.receives not in (receives[:1] or [None]):
                problems.append(f"client.receives: {link.receives!r} is not the stage that writes stdout "
                                f"({receives or 'none'})")
    if problems:
        raise InvalidSpec(problems)


@router.post("/v1/flows", status_code=201)
async def submit_run(request: Request, record: FlowRunRecord):
    """Submit a run (state pending). A node of the cluster becomes its driver: it starts the
    instances, restarts the run when one is lost and commits the outputs once. A run that
    reads stdin or writes stdout gets a lease for its client (`client_lease`) to renew."""
    _check_new(record)
    record = record.model_copy(update={"started": record.started or request.app.state.node.clock.time()})
    lease = await request.app.state.node.store.flows.create_run(record)
    return {"id": record.id, "client_lease": lease or None}


@router.get("/v1/flows")
async def list_runs(request: Request, limit: int = 50):
    runs = await request.app.state.node.store.flows.list_runs(limit)
    return {"flows": [r.summary() for r in runs]}


@router.get("/v1/flows/{run}")
async def get_run(request: Request, run: str):
    """The record, each instance's task state, node and outcome, and its live counters."""
    node = request.app.state.node
    flows = node.store.flows
    record = await flows.get_run(run)
    attempt = record.attempt
    stats = await flows.get_stats(run, attempt) if attempt else {}
    outcomes = await flows.get_outcomes(run, attempt) if attempt else {}
    ids = [t for ids in record.tasks.values() for t in ids]
    tasks, _ = await node.store.tasks.get_tasks(ids) if ids else ({}, 0)
    stages = []
    for stage, stage_ids in record.tasks.items():
        instances = []
        for i, tid in enumerate(stage_ids):
            t = tasks.get(tid)
            s = stats.get(stage, {}).get(i, {})
            o = outcomes.get((stage, i))
            instances.append({"index": i, "task": tid, "state": t.state.value if t else "gone",
                              "node": t.node if t else None, "reason": t.reason if t else None,
                              "outcome": o.kind.value if o else None, **s})
        stages.append({"name": stage, "instances": instances})
    return dict(record.to_json(), stages=stages, now=request.app.state.node.clock.time(),
                cancel_requested=await flows.cancel_requested(run))


@router.get("/v1/flows/{run}/record")
async def follow_run(request: Request, run: str, after: int = 0, timeout: float = Query(20.0, ge=0, le=60)):
    """The record once it changed after revision `after` (long poll, up to `timeout` s)."""
    record, rev = await request.app.state.node.store.flows.wait_run(run, after, timeout)
    return {"record": record.to_json(), "revision": rev}


@router.get("/v1/flows/{run}/{attempt}/endpoints/{stage}")
async def endpoints(request: Request, run: str, attempt: int, stage: str, count: int, timeout: float = 60.0):
    """The data addresses of instances 0..count-1, once all have started (long poll)."""
    try:
        return {"endpoints": await request.app.state.node.store.flows.wait_endpoints(
            run, attempt, stage, count, timeout)}
    except TimeoutError as e:
        raise Conflict(str(e)) from None


@router.put("/v1/flows/{run}/{attempt}/endpoints/{stage}/{index}")
async def put_endpoint(request: Request, run: str, attempt: int, stage: str, index: int, body: Endpoint):
    await request.app.state.node.store.flows.put_endpoint(run, attempt, stage, index, body.address)
    return {"ok": True}


@router.post("/v1/flows/{run}/client")
async def keep_client(request: Request, run: str, body: ClientLease):
    """The client that feeds or receives the run's data is still there."""
    if not await request.app.state.node.store.flows.keep_client(run, body.lease):
        raise Conflict(f"flow run {run} no longer counts on this client (its lease ran out)")
    return {"ok": True}


@router.delete("/v1/flows/{run}/client")
async def release_client(request: Request, run: str, lease: int):
    await request.app.state.node.store.flows.release_client(run, lease)
    return {"ok": True}


@router.post("/v1/flows/{run}/cancel")
async def cancel(request: Request, run: str):
    """Stop every instance of the run; its driver then ends it cancelled, writing no output."""
    node = request.app.state.node
    record = await node.store.flows.get_run(run)
    if record.is_final:
        raise Conflict(f"flow run {run} already ended {record.state.value}")
    if record.state == FlowState.committing:
        raise Conflict(f"flow run {run} is committing its output; too late to cancel")
    await node.store.flows.put_cancel(run)
    cancelled = await node.store.tasks.cancel_all([t for ids in record.tasks.values() for t in ids])
    return {"id": run, "cancelled_instances": cancelled}
