"""The reaper, held by one elected node at a time: when a node's lease expires its
running keys vanish, and the reaper retries or fails the attempts it was running. It
also finishes DAG cascades left as markers (a task with many dependents ended, or the
node finishing one died) and recordings of dependencies left half done."""
from __future__ import annotations

import asyncio
import logging

from ..errors import StoreCompacted
from ..store import Store
from ..store.kv import WatchReset

log = logging.getLogger("shoal.reaper")


class Reaper:
    def __init__(self, store: Store, node_id: str, reconcile_every_s: float = 300.0):
        self.store = store
        self.node_id = node_id
        self.reconcile_every_s = reconcile_every_s
        self.requeued = 0
        self.cascaded = 0     # DAG edges consumed through markers

    async def serve(self) -> None:
        """Run as reaper: reconcile once, then react to node deaths as they happen. A
        node's lease expiring deletes its node key and its running keys at one revision,
        so the running keys it held are read back at the revision just before."""
        rev = await self.store.kv.revision()
        await self.reconcile()
        tick = asyncio.create_task(self._periodic())
        cascades = asyncio.create_task(self._cascades(rev))
        try:
            async for batch in self.store.kv.watch(self.store.keys.nodes, rev + 1):
                if isinstance(batch, WatchReset):
                    await self.reconcile()
                    continue
                for kind, kv, _ in batch:
                    if kind == "DELETE":
                        await self._node_gone(self.store.keys.id_of(kv.key), kv.mod_revision)
        finally:
            tick.cancel()
            cascades.cancel()

    async def _cascades(self, rev: int) -> None:
        """Finish each cascade marker as it appears (those there already: reconcile)."""
        async for batch in self.store.kv.watch(self.store.keys.cascades, rev + 1):
            try:
                if isinstance(batch, WatchReset):
                    self.cascaded += await self.store.dag.finish_all()
                    continue
                for kind, kv, _ in batch:
                    if kind == "PUT":
                        self.cascaded += await self.store.dag.finish(self.store.keys.id_of(kv.key))
            except Exception as e:   # the next marker, or the periodic reconcile, takes it up again
                log.warning("finishing a DAG cascade failed: %s", e)

    async def _node_gone(self, node: str, revision: int) -> None:
        try:
            held = await self.store.tasks.running_on(node, revision=revision - 1)
        except StoreCompacted:  # etcd compacted past that revision: look at everything instead
            await self.reconcile()
            return
        for kv in held:
            tid = self.store.keys.id_of(kv.key)
            new = await self.store.tasks.requeue_lost(tid, node)
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
        a missed event) and requeue them; finish DAG cascades and recordings left undone."""
        self.cascaded += await self.store.dag.finish_all()
        await self.store.dag.record_all_rest()
        running = await self.store.tasks.running_tasks()
        async for rec in self.store.tasks.tasks_in_state("running"):
            node = rec.node
            if node and rec.id not in running.get(node, ()):
                if await self.store.tasks.requeue_lost(rec.id, node) is not None:
                    self.requeued += 1
