"""HTTP routes. Errors map to status codes in one table; streams are NDJSON."""
from __future__ import annotations

import orjson
from fastapi import Body, FastAPI
from fastapi.responses import Response

from .. import __version__
from ..errors import InvalidSpec, Problems
from ..model import TaskRecord, TaskSpec, TaskState, new_ids
from ..model.ids import ID_FORM, is_task_id
from . import errors as api_errors
from .flows import router as flows_router
from .logs import router as logs_router
from .results import router as results_router
from .streams import router as streams_router


def ojson(data, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def create_app(node) -> FastAPI:
    app = FastAPI(title="shoal", version=__version__,
                  description="Run commands on a shoal cluster. Any node answers for the whole cluster.")
    app.state.node = node
    store = node.store
    api_errors.install(app)

    def records_for(specs: list[dict], job: str | None, batch: bool = False,
                    ids: list | None = None) -> list[TaskRecord]:
        """Validated records; each takes its id from `ids` (chosen by the client, so that a
        retried request names the same tasks) or a new one."""
        problems, parsed = Problems(), []
        for i, raw in enumerate(specs):
            try:
                parsed.append(TaskSpec.parse(raw, node.s.max_retries))
            except InvalidSpec as e:
                problems.extend(f"tasks[{i}]" if batch else "", e.problems)
        field = "ids" if batch else "id"
        if ids is not None:
            if len(ids) != len(specs):
                problems.add(field, f"{len(ids)} ids for {len(specs)} tasks (give one id per task, in order)")
            first: dict[str, int] = {}
            for i, tid in enumerate(ids):
                at = f"{field}[{i}]" if batch else field
                if not is_task_id(tid):
                    problems.add(at, f"{tid!r} is not a task id ({ID_FORM})")
                elif tid in first:
                    problems.add(at, f"{tid!r} repeats {field}[{first[tid]}] (each task needs its own id)")
                else:
                    first[tid] = i
        problems.raise_if_any()
        now = node.clock.time()
        return [TaskRecord(id=tid, spec=spec if job is None or spec.job else spec.model_copy(update={"job": job}),
                           submitted_at=now) for tid, spec in zip(ids or new_ids(len(parsed)), parsed)]

    @app.post("/v1/tasks", status_code=201, tags=["tasks"],
              openapi_extra={"requestBody": {"content": {"application/json": {
                  "schema": TaskSpec.model_json_schema()}}, "required": True}})
    async def submit(spec: dict = Body(...), id: str | None = None):
        """Submit one task. Returns its record (state queued). With `id` (a task id the
        client made) the submit is idempotent: sent again, it returns the task it made."""
        records = await store.tasks.submit(records_for([spec], None, ids=None if id is None else [id]))
        warnings = await node.unplaceable_warnings([records[0].spec])
        return ojson({**records[0].summary(), "warnings": warnings}, 201)

    @app.post("/v1/tasks/batch", status_code=201, tags=["tasks"])
    async def submit_batch(tasks: list[dict] = Body(..., embed=True), job: str | None = Body(None, embed=True),
                           ids: list | None = Body(None, embed=True)):
        """Submit many tasks at once (validated together: all or none). Returns their ids in
        order. With `ids` (one per task, made by the client) the submit is idempotent: sent
        again, it creates nothing and returns the same ids; an id already used for another
        spec is a 409."""
        if not tasks:
            raise InvalidSpec(["tasks: empty (give at least one task)"])
        records = await store.tasks.submit(records_for(tasks, job, batch=True, ids=ids))
        warnings = await node.unplaceable_warnings([r.spec for r in records])
        return ojson({"ids": [r.id for r in records], "job": job, "warnings": warnings}, 201)

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
        now = node.clock.time()
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
        st = node.status()
        return ojson({"ok": etcd_ok, "cluster": cluster, "node": st.node_id, "api": st.api, "etcd": etcd_ok,
                      "reaper": st.is_reaper, "running": st.running, "steps": st.steps, "completed": st.completed,
                      "version": __version__}, 200 if etcd_ok else 503)

    app.include_router(logs_router)
    app.include_router(flows_router)
    app.include_router(results_router)
    app.include_router(streams_router)
    return app
