"""Function results: small ones live in the task record; big ones stay on the node
that made them and stream from it. Any node answers, fetching from the holder."""
from __future__ import annotations

import base64
import os

import httpx
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ..errors import Conflict, NodeUnreachable, NotFound
from . import relay
from .streams import _FINAL_NAMES

router = APIRouter(tags=["results"])
CHUNK = 1 << 20


@router.get("/v1/tasks/{task_id}/result")
async def get_result(request: Request, task_id: str, local: bool = False):
    """The pickled return value of a succeeded function task (application/octet-stream)."""
    node = request.app.state.node
    rec, _ = await node.store.tasks.get_task(task_id)
    if rec.state.value != "succeeded" or not rec.spec.is_function:
        raise Conflict(f"task {task_id} has no result: it is a {'function' if rec.spec.is_function else 'command'}"
                       f" task in state {rec.state.value}")
    if rec.result is not None:
        return Response(base64.b64decode(rec.result), media_type="application/octet-stream")
    ref = rec.result_ref or {}
    if ref.get("node") == node.s.node_id:
        path = ref.get("path", "")
        if not os.path.exists(path):
            raise NotFound(f"the result of {task_id} was released (or its file is gone from node {ref['node']})")
        return StreamingResponse(_read(path), media_type="application/octet-stream",
                                 headers={"Content-Length": str(os.path.getsize(path))})
    if local:
        raise NotFound(f"the result of {task_id} is not on node {node.s.node_id}")
    holder = await node.store.nodes.node(ref.get("node", ""))
    if holder is None:
        raise NotFound(f"the result of {task_id} was kept on node {ref.get('node')}, which is gone; "
                       "run the task again (results that must outlive nodes belong in storage)")
    client, resp = await relay.ask("GET", f"{holder.api}/v1/tasks/{task_id}/result", holder.id,
                                   f"the result of {task_id}", {"local": "true"}, httpx.Timeout(30.0, read=None))
    headers = {"X-Shoal-Result-Source": f"node {holder.id}"}
    if "content-length" in resp.headers:
        headers["Content-Length"] = resp.headers["content-length"]
    return StreamingResponse(relay.relay(client, resp), media_type="application/octet-stream", headers=headers)


@router.delete("/v1/tasks/{task_id}/result")
async def release_result(request: Request, task_id: str, local: bool = False, force: bool = False):
    """Free a big result's file on the node that holds it (small ones go with the record).
    Kept while a dependent task that has not ended yet still needs it (unless force)."""
    node = request.app.state.node
    rec, _ = await node.store.tasks.get_task(task_id)
    ref = rec.result_ref or {}
    if not ref:
        return {"released": False}
    dependents = await node.store.dag.dependents(task_id) if not force and not local else []
    if dependents:
        waiting, _ = await node.store.tasks.get_task_values(dependents)
        if any(orjson.loads(v)["state"] not in _FINAL_NAMES for v in waiting.values()):
            return {"released": False, "reason": "a dependent task that has not ended still needs it"}
    if ref.get("node") == node.s.node_id:
        try:
            os.unlink(ref["path"])
            return {"released": True}
        except FileNotFoundError:
            return {"released": False}
    if local:
        raise NotFound(f"the result of {task_id} is not on node {node.s.node_id}")
    holder = await node.store.nodes.node(ref.get("node", ""))
    if holder is None:
        return {"released": False}
    return await relay.ask_json("DELETE", f"{holder.api}/v1/tasks/{task_id}/result", holder.id,
                                f"the result of {task_id}", {"local": "true"})


def _read(path: str):
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


@router.delete("/v1/jobs/{job}", tags=["tasks"])
async def delete_job(request: Request, job: str):
    """Delete a job: cancel what has not ended, free its results, remove its tasks."""
    node = request.app.state.node
    store = node.store
    records, _ = await store.tasks.list_tasks(limit=100000, match=lambda r: r.spec.job == job)
    if not records:
        raise NotFound(f"no tasks in job {job!r}")
    for rec in records:
        if not rec.is_final:
            try:
                await store.tasks.cancel(rec.id)
            except Conflict:
                pass
    freed = 0
    for rec in records:
        if rec.result_ref:
            try:
                out = await release_result(request, rec.id, force=True)
            except (NotFound, NodeUnreachable):  # its holder is away or has it no more: nothing to free
                continue
            freed += bool(out.get("released"))
    await store.tasks.delete_tasks([r.id for r in records])
    return {"job": job, "deleted": len(records), "results_freed": freed}
