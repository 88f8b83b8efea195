"""The reaper, held by one elected node at a time: when a node's lease expires its
running keys vanish, and the reaper retries or fails the attempts it was running."""
from __future__ import annotations

import asyncio
import logging

from ..errors import NotFound
from ..model import TaskState
from ..store import Store, WatchReset

log = logging.getLogger("shoal.reaper")


class Reaper:
    def __init__(self, store: Store, node_id: str, reconcile_every_s: float = 30.0):
        self.store = store
        self.node_id = node_id
        self.reconcile_every_s = reconcile_every_s
        self.requeued = 0

    async def serve(self) -> None:
        """Run as reaper: reconcile once, then react to node deaths as they happen."""
        rev = await self.store.revision()
        await self.reconcile()
        watch = self.store.watch(self.store.keys.all_running, rev + 1, prev_kv=True)
        tick = asyncio.create_task(self._periodic())
        try:
            async for batch in watch:
                if isinstance(batch, WatchReset):
                    await self.reconcile()
                    continue
                lost = [(self.store.keys.node_of_running(kv.key), self.store.keys.id_of(kv.key), prev.lease)
                        for kind, kv, prev in batch
                        if kind == "DELETE" and prev is not None and prev.lease]
                if lost:
                    await self._requeue_if_lost(lost)
        finally:
            tick.cancel()

    async def _requeue_if_lost(self, lost: list[tuple[str, str]]) -> None:
        """A running key was deleted. A node that completes an attempt deletes the key in
        the same txn that moves the task on, so only a task still 'running' on that node
        was lost; requeue_lost checks exactly that inside its transaction."""
        alive = {n.id: n.lease for n in await self.store.nodes()}
        for node, tid, lease in lost:
            if alive.get(node) == lease:
                continue  # its node is alive: an ordinary completion (or it was released)
            try:
                rec, _ = await self.store.get_task(tid)
            except NotFound:
                continue
            if rec.state == TaskState.running and rec.node == node:
                new = await self.store.requeue_lost(tid, node)
                if new is not None:
                    self.requeued += 1
                    log.info("task %s: node %s lost -> %s", tid, node, new.state.value)

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_every_s)
            try:
                await self.reconcile()
            except Exception as e:
                log.warning("reconcile failed: %s", e)

    async def reconcile(self) -> None:
        """Find tasks marked running whose running key is gone (a reaper change-over or
        a missed event) and requeue them."""
        running = await self.store.running_tasks()
        async for rec in self.store.tasks_in_state("running"):
            node = rec.node
            if node and rec.id not in running.get(node, ()):
                if await self.store.requeue_lost(rec.id, node) is not None:
                    self.requeued += 1
