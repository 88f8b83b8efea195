"""Every node campaigns to drive every flow run that has not ended: a watch on the run
records adds the elected role `flow/<run>` for each live run and drops it once the run
ends. One node wins each role and drives the run; when it dies, its election key goes
with its lease and another node takes the run over from its record."""
from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

from .driver import FlowDriver, TaskFeed
from .run import FlowRunRecord, driver_role

log = logging.getLogger("shoal.flows")


async def watch_runs(store, roles, feed: TaskFeed, retry_s: float = 1.0) -> None:
    """Runs under the node's TaskGroup for as long as the node does: an error (etcd away
    for longer than the store rides out) is logged and the watch starts again."""
    while True:
        try:
            await _watch_runs(store, roles, feed)
        except Exception as e:
            log.warning("watching flow runs: %s: %s; again in %.0f s", type(e).__name__, e, retry_s)
            await asyncio.sleep(retry_s)


async def _watch_runs(store, roles, feed: TaskFeed) -> None:
    def follow(record: FlowRunRecord) -> None:
        name = driver_role(record.id)
        if record.is_final:
            roles.remove(name)
        elif not roles.knows(name):
            # a fresh driver each time the role is won: it starts from the record, nothing else
            roles.add(name, lambda run=record.id: FlowDriver(store, run, roles.node_id, feed).serve(), once=True)

    async def snapshot() -> int:
        runs, rev = await store.flows.runs()
        for record in runs:
            follow(record)
        return rev

    prefix = store.keys.flows
    rev = await snapshot()
    async for batch in store.kv.watch(prefix, rev + 1):
        if not isinstance(batch, list):   # compacted past us: read them all again
            await snapshot()
            continue
        for kind, kv, _ in batch:
            if kind == "DELETE":
                roles.remove(driver_role(kv.key[len(prefix):].decode()))
                continue
            try:
                follow(FlowRunRecord.model_validate_json(kv.value))
            except ValidationError as e:
                log.warning("flow record %s is not readable: %s", kv.key.decode(errors="replace"), e)
