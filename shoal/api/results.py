"""Function results: small ones live in the task record; big ones stay on the node
that made them and stream from it. Any node answers, fetching from the holder."""
from __future__ import annotations

import base64
import os

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ..errors import Conflict, NotFound

router = APIRouter(tags=["results"])
CHUNK = 1 << 20


@router.get("/v1/tasks/{task_id}/result")
async def get_result(request: Request, task_id: str, local: bool = False):
    """The pickled return value of a succeeded function task (application/octet-stream)."""
    node = request.app.state.node
    rec, _ = await node.store.get_task(task_id)
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
    holder = await node.store.node(ref.get("node", ""))
    if holder is None:
        raise NotFound(f"the result of {task_id} was kept on node {ref.get('node')}, which is gone; "
                       "run the task again (results that must outlive nodes belong in storage)")
    return StreamingResponse(_proxy(f"{holder.api}/v1/tasks/{task_id}/result?local=true"),
                             media_type="application/octet-stream",
                             headers={"X-Shoal-Result-Source": f"node {holder.id}"})


@router.delete("/v1/tasks/{task_id}/result")
async def release_result(request: Request, task_id: str, local: bool = False):
    """Free a big result's file on the node that holds it (small ones go with the record)."""
    node = request.app.state.node
    rec, _ = await node.store.get_task(task_id)
    ref = rec.result_ref or {}
    if not ref:
        return {"released": False}
    if ref.get("node") == node.s.node_id:
        try:
            os.unlink(ref["path"])
            return {"released": True}
        except FileNotFoundError:
            return {"released": False}
    if local:
        raise NotFound(f"the result of {task_id} is not on node {node.s.node_id}")
    holder = await node.store.node(ref.get("node", ""))
    if holder is None:
        return {"released": False}
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.delete(f"{holder.api}/v1/tasks/{task_id}/result", params={"local": "true"})
    return resp.json()


def _read(path: str):
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


async def _proxy(url: str):
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None)) as client:
        async with client.stream("GET", url) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise NotFound(f"fetching {url}: HTTP {resp.status_code} {resp.text[:300]}")
            async for chunk in resp.aiter_raw():
                yield chunk
