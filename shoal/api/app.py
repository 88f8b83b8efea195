"""HTTP routes. Errors map to status codes in one table; streams are NDJSON."""
from __future__ import annotations

import time

import orjson
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from .. import __version__
from ..errors import Conflict, InvalidSpec, NotFound, ShoalError, StoreFull, StoreUnavailable, TooLarge
from ..model import TaskRecord, TaskSpec, TaskState, new_ids
from ..model.task import describe_errors
from .flows import router as flows_router
from .logs import router as logs_router
from .results import router as results_router
from .streams import router as streams_router

STATUS = {InvalidSpec: 422, NotFound: 404, Conflict: 409, TooLarge: 413, StoreFull: 507,
          StoreUnavailable: 503}


def ojson(data, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def error_body(e: ShoalError) -> dict:
    body = {"error": type(e).__name__, "message": str(e)}
    if isinstance(e, InvalidSpec):
        body["problems"] = e.problems
    return body


def create_app(node) -> FastAPI:
    app = FastAPI(title="shoal", version=__version__,
                  description="Run commands on a shoal cluster. Any node answers for the whole cluster.")
    app.state.node = node
    store = node.store

    @app.exception_handler(ShoalError)
    async def _shoal_error(request: Request, e: ShoalError):
        status = next((code for cls, code in STATUS.items() if isinstance(e, cls)), 500)
        return ojson(error_body(e), status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        errs = [dict(err, loc=tuple(err["loc"])[1:]) for err in e.errors()]
        return ojson(error_body(InvalidSpec(describe_errors(errs))), 422)

    def records_for(specs: list[dict], job: str | None, batch: bool = False) -> list[TaskRecord]:
        problems, parsed = [], []
        for i, raw in enumerate(specs):
            try:
                parsed.append(TaskSpec.parse(raw, node.s.max_retries))
            except InvalidSpec as e:
                where = f"tasks[{i}]." if batch else ""
                problems.extend(where + p for p in e.problems)
        if problems:
            raise InvalidSpec(problems)
        now = time.time()
        ids = new_ids(len(parsed))
        return [TaskRecord(id=tid, spec=spec if job is None or spec.job else spec.model_copy(update={"job": job}),
                           submitted_at=now) for tid, spec in zip(ids, parsed)]

    @app.post("/v1/tasks", status_code=201, tags=["tasks"],
              openapi_extra={"requestBody": {"content": {"application/json": {
                  "schema": TaskSpec.model_json_schema()}}, "required": True}})
    async def submit(spec: dict = Body(...)):
        """Submit one task. Returns its record (state queued)."""
        records = await store.tasks.submit(records_for([spec], None))
        return ojson(records[0].summary(), 201)

    @app.post("/v1/tasks/batch", status_code=201, tags=["tasks"])
    async def submit_batch(tasks: list[dict] = Body(..., embed=True), job: str | None = Body(None, embed=True)):
        """Submit many tasks at once (validated together: all or none). Returns their ids in order."""
        if not tasks:
            raise InvalidSpec(["tasks: empty (give at least one task)"])
        records = await store.tasks.submit(records_for(tasks, job, batch=True))
        return ojson({"ids": [r.id for r in records], "job": job}, 201)

    @app.get("/v1/tasks/{task_id}", tags=["tasks"])
    async def get(task_id: str):
        rec, _ = await store.tasks.get_task(task_id)
        return ojson(rec.summary())

    @app.get("/v1/tasks", tags=["tasks"])
    async def list_tasks(state: TaskState | None = None, name: str | None = None, job: str | None = None,
                         team: str | None = None, node: str | None = None, limit: int = 100,
                         before: str | None = None):
        """Tasks, newest first, filtered; pass `next` back as `before` for the next page."""
        if not 1 <= limit <= 10000:
            raise InvalidSpec([f"limit: {limit} is out of range (use 1 to 10000)"])

        def match(r: TaskRecord) -> bool:
            return ((state is None or r.state == state) and (name is None or r.spec.name == name)
                    and (job is None or r.spec.job == job) and (team is None or r.spec.team == team)
                    and (node is None or r.node == node))
        records, cursor = await store.tasks.list_tasks(limit, before, match)
        return ojson({"tasks": [r.summary() for r in records], "next": cursor})

    @app.post("/v1/tasks/{task_id}/cancel", tags=["tasks"])
    async def cancel(task_id: str, unstarted_only: bool = False):
        """Cancel a task: a queued one at once, a running one by killing its process group.
        `unstarted_only=true` leaves a task whose process has started alone (--halt soon)."""
        rec = await store.tasks.cancel(task_id, unstarted_only)
        return ojson(rec.summary())

    @app.get("/v1/nodes", tags=["cluster"])
    async def nodes():
        now = time.time()
        out = []
        for n in await store.nodes.nodes():
            d = n.model_dump()
            d["heartbeat_age_s"] = round(max(0.0, now - n.heartbeat_at), 2)
            out.append(d)
        return ojson({"nodes": out})

    @app.get("/v1/health", tags=["cluster"])
    async def health():
        """This node's view: its id, whether it reaches etcd, and whether it is the reaper."""
        try:
            cluster = await store.cluster_id()
            etcd_ok = True
        except Exception:
            cluster, etcd_ok = None, False
        return ojson({"ok": etcd_ok, "cluster": cluster, "node": node.s.node_id, "api": node.api_url, "etcd": etcd_ok,
                      "reaper": node.is_reaper, "running": node.scheduler.busy(),
                      "steps": node.scheduler.steps, "completed": node.scheduler.completed_total,
                      "version": __version__}, 200 if etcd_ok else 503)

    app.include_router(logs_router)
    app.include_router(flows_router)
    app.include_router(results_router)
    app.include_router(streams_router)
    return app
