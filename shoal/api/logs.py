"""Task logs: served from the node that ran the attempt. Any node answers: it reads the
file if the attempt ran here, else streams it from the node that holds it, else (that
node is gone) reads the file if it is still on this machine, else serves the end kept in
the task record and says, in headers, that the rest is lost."""
from __future__ import annotations

import asyncio
from typing import Literal

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..errors import InvalidSpec, NodeUnreachable, NotFound
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
        return _without_holder(node, rec, n, stream, holder, "is gone")
    params = {"stream": stream, "follow": str(follow).lower(), "attempt": n, "local": "true"}
    try:
        client, resp = await relay.ask("GET", f"{other.api}/v1/tasks/{task_id}/logs", holder,
                                       f"the log of attempt {n} of {task_id}", params, httpx.Timeout(10.0, read=None))
    except NodeUnreachable:  # dead, its lease not yet expired: serve what is left as if it were gone
        return _without_holder(node, rec, n, stream, holder, "does not answer")
    return StreamingResponse(relay.relay(client, resp), media_type="text/plain",
                             headers={**which, "X-Shoal-Log-Source": f"node {holder}"})


def _without_holder(node, rec, n: int, stream: str, holder: str, why: str) -> StreamingResponse:
    """The node that ran attempt n is gone. Its log file may still be here (the nodes of
    a local cluster share one log directory): then all of it is served. Else only the
    end kept in the task record survives, cut to whole lines, and the headers say how
    much of how much, so the client can tell its user."""
    out, err = log_paths(node.s.log_dir.parent / holder, rec.id, n)
    path = out if stream == "stdout" else err
    if path.is_file():
        return StreamingResponse(_read_file(node, rec.id, path, False, n), media_type="text/plain",
                                 headers={"X-Shoal-Attempt": str(n), "X-Shoal-Log-Source": f"{path} (node {holder} {why})"})
    a = rec.attempts[n - 1]
    recorded = n == len(rec.attempts) and (a.exit_code is not None or a.signal is not None)
    tail = (rec.stdout_tail if stream == "stdout" else rec.stderr_tail) if recorded else ""
    total = (rec.stdout_bytes if stream == "stdout" else rec.stderr_bytes) if recorded else None
    body, kept, complete = kept_lines(tail, total)
    headers = {"X-Shoal-Attempt": str(n), "X-Shoal-Log-Source": f"the end kept in the task record (node {holder} {why})"}
    if not complete:
        what = f"the {stream} of attempt {n} of task {rec.id}"
        headers["X-Shoal-Log-Kept"] = str(kept)
        headers["X-Shoal-Log-Incomplete"] = (
            f"only the last {kept / 1024:.1f} KiB ({kept} of {total} bytes) of {what} survive: node "
            f"{holder}, which ran it and holds the full log, {why}" if total is not None else
            f"nothing of {what} survives: node {holder}, which ran it, {why}, and the task record "
            "keeps the end of an attempt's output only when the attempt ended on its node")
        if total is not None:
            headers["X-Shoal-Log-Total"] = str(total)
    return StreamingResponse(iter([body]), media_type="text/plain", headers=headers)


def kept_lines(tail: str, total: int | None) -> tuple[bytes, int, bool]:
    """What of a log's end can be shown: (bytes, how many, whether that is all of it).
    A tail shorter than the whole starts at its first whole line."""
    data = tail.encode()
    if total is not None and len(data) >= total:
        return data, len(data), True
    if total is not None:
        cut = data.find(b"\n")
        data = data[cut + 1:] if cut >= 0 else b""
    return data, len(data), False


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

