"""Event streams driven by etcd watches: clients never poll. NDJSON, one event a line."""
from __future__ import annotations

import orjson
from fastapi import APIRouter, Body, Request
from fastapi.responses import StreamingResponse

from ..model import FINAL_STATES
from ..model.task import summarize
from ..store.kv import WatchReset
from ..store.records import decode

router = APIRouter(tags=["events"])
_FINAL_NAMES = frozenset(s.value for s in FINAL_STATES)
_FINAL_MARKS = tuple(f'"state":"{s.value}"'.encode() for s in FINAL_STATES)


def _line(obj) -> bytes:
    return orjson.dumps(obj) + b"\n"


@router.get("/v1/events")
async def events(request: Request, job: str | None = None, task: str | None = None,
                 state: str | None = None, since: int | None = None):
    """Every task change (optionally only of one job, one task, or into one state) from
    revision `since` (default: now) on, as NDJSON: {"revision", "task"}."""
    store = request.app.state.node.store
    start = since if since is not None else await store.kv.revision() + 1

    async def gen():
        yield _line({"type": "hello", "revision": start - 1})
        async for batch in store.kv.watch(store.keys.tasks, start):
            if isinstance(batch, WatchReset):
                yield _line({"type": "reset", "revision": batch.revision})
                continue
            out = []
            for kind, kv, _ in batch:
                if kind != "PUT":
                    continue
                if task is not None and not kv.key.endswith(task.encode()):
                    continue
                rec = decode(kv.value)
                if (job is None or rec.spec.job == job) and (state is None or rec.state.value == state):
                    out.append(_line({"type": "task", "revision": kv.mod_revision, "task": rec.summary()}))
            if out:
                yield b"".join(out)
    return StreamingResponse(gen(), media_type="application/x-ndjson")


@router.post("/v1/wait")
async def wait(request: Request, ids: list[str] = Body(..., embed=True)):
    """Stream each of `ids` once it has ended (those already ended first), as NDJSON
    task records; an unknown id gets {"id", "error": "not found"}. Ends when all have."""
    store = request.app.state.node.store

    feed = request.app.state.node.feed

    async def gen():
        async with feed.subscribe(ids) as updates:
            found, _ = await store.tasks.get_task_values(ids)
            left = set(ids)
            out = []
            for tid in ids:
                value = found.get(tid)
                if value is None:
                    out.append(_line({"id": tid, "error": "not found"}))
                    left.discard(tid)
                elif any(m in value for m in _FINAL_MARKS):
                    # the marks also match an attempt's own "state" (a retried task whose
                    # first attempt failed): only the record's top-level state counts
                    rec = orjson.loads(value)
                    if rec["state"] in _FINAL_NAMES:
                        out.append(_line(summarize(rec)))
                        left.discard(tid)
            if out:
                yield b"".join(out)
            while left:
                item = await updates.get()
                items = [item]
                while not updates.empty():
                    items.append(updates.get_nowait())
                out = []
                for item in items:
                    if isinstance(item, WatchReset):
                        found, _ = await store.tasks.get_tasks(sorted(left))
                        recs = [r.summary() for r in found.values() if r.is_final]
                    elif any(m in item for m in _FINAL_MARKS):
                        recs = [orjson.loads(item)]
                    else:
                        continue
                    for rec in recs:
                        if rec["id"] in left and rec["state"] in _FINAL_NAMES:
                            left.discard(rec["id"])
                            out.append(_line(summarize(rec)))
                if out:
                    yield b"".join(out)
    return StreamingResponse(gen(), media_type="application/x-ndjson")
