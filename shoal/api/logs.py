"""Task logs: served from the node that ran the attempt. Any node answers: it reads the
file if the attempt ran here, else streams it from the node that holds it, else
(that node is gone) falls back to the tail kept in the task record."""
from __future__ import annotations

import asyncio
from typing import Literal

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..errors import InvalidSpec, NotFound
from ..exec.attempt import log_paths
from . import relay

router = APIRouter(tags=["tasks"])
CHUNK = 64 * 1024


@router.get("/v1/tasks/{task_id}/logs")
async def logs(request: Request, task_id: str, stream: Literal["stdout", "stderr"] = "stdout",
               follow: bool = False, attempt: int | None = None, local: bool = False):
    """The output of a task's attempt (the latest by default). `follow=true` keeps the
    stream open until the task ends, like `tail -f`."""
    node = request.app.state.node
    rec, _ = await node.store.tasks.get_task(task_id)
    n = attempt or rec.attempt
    if n < 1:
        if not follow:
            return StreamingResponse(iter(()), media_type="text/plain")
        rec = await _wait_started(node, task_id)
        n = rec.attempt
    if not 1 <= n <= len(rec.attempts):
        raise InvalidSpec([f"attempt: {n} is out of range (the task has {len(rec.attempts)} attempts)"])
    holder = rec.attempts[n - 1].node
    which = {"X-Shoal-Attempt": str(n)}  # a client resuming this stream elsewhere asks for the same attempt
    if holder == node.s.node_id:
        out, err = log_paths(node.s.log_dir, task_id, n)
        path = out if stream == "stdout" else err
        return StreamingResponse(_read_file(node, task_id, path, follow, n), media_type="text/plain", headers=which)
    if local:
        raise NotFound(f"attempt {n} of task {task_id} did not run on node {node.s.node_id}")
    other = await node.store.nodes.node(holder)
    if other is None:
        text = rec.stdout_tail if stream == "stdout" else rec.stderr_tail
        return StreamingResponse(iter([text.encode()]), media_type="text/plain",
                                 headers={**which, "X-Shoal-Log-Source": f"tail kept in the task record (node {holder} is gone)"})
    params = {"stream": stream, "follow": str(follow).lower(), "attempt": n, "local": "true"}
    client, resp = await relay.ask("GET", f"{other.api}/v1/tasks/{task_id}/logs", holder,
                                   f"the log of attempt {n} of {task_id}", params, httpx.Timeout(10.0, read=None))
    return StreamingResponse(relay.relay(client, resp), media_type="text/plain",
                             headers={**which, "X-Shoal-Log-Source": f"node {holder}"})


async def _wait_started(node, task_id: str):
    while True:
        rec, _ = await node.store.tasks.get_task(task_id)
        if rec.attempt >= 1 or rec.is_final:
            return rec
        await asyncio.sleep(0.2)


async def _read_file(node, task_id: str, path, follow: bool, n: int):
    pos = 0
    idle = 0
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                while chunk := f.read(CHUNK):
                    pos += len(chunk)
                    idle = 0
                    yield chunk
        except FileNotFoundError:
            if not follow:
                return
        if not follow:
            return
        # the file is local: look for more every 100 ms; ask etcd whether the attempt
        # ended only every second of quiet
        idle += 1
        if idle % 10 == 0:
            rec, _ = await node.store.tasks.get_task(task_id)
            if rec.attempt != n or rec.is_final or rec.state.value == "queued":
                with open(path, "rb") as f:
                    f.seek(pos)
                    rest = f.read()
                if rest:
                    yield rest
                return
        await asyncio.sleep(0.1)

