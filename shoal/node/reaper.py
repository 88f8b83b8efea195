"""The reaper, held by one elected node at a time: when a node's lease expires its
running keys vanish, and the reaper retries or fails the attempts it was running."""
from __future__ import annotations

import asyncio
import logging

from ..errors import StoreCompacted
from ..model import EndedBy
from ..model.task import DEFAULT_NODE_LOSS_RETRIES
from ..store import Store
from ..store.kv import WatchReset

log = logging.getLogger("shoal.reaper")


class Reaper:
    def __init__(self, store: Store, node_id: str, reconcile_every_s: float = 300.0,
                 node_loss_retries: int = DEFAULT_NODE_LOSS_RETRIES):
        self.store = store
        self.node_id = node_id
        self.node_loss_retries = node_loss_retries  # the cluster's limit, for tasks without their own
        self.reconcile_every_s = reconcile_every_s
        self.requeued = 0

    async def serve(self) -> None:
        """Run as reaper: reconcile once, then react to node deaths as they happen. A
        node's lease expiring deletes its node key and its running keys at one revision,
        so the running keys it held are read back at the revision just before."""
        rev = await self.store.kv.revision()
        await self.reconcile()
        tick = asyncio.create_task(self._periodic())
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

    async def _node_gone(self, node: str, revision: int) -> None:
        try:
            held = await self.store.tasks.running_on(node, revision=revision - 1)
        except StoreCompacted:  # etcd compacted past that revision: look at everything instead
            await self.reconcile()
            return
        for kv in held:
            tid = self.store.keys.id_of(kv.key)
            new = await self.store.tasks.requeue_lost(tid, node, self.node_loss_retries)
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
        running = await self.store.tasks.running_tasks()
        live = {n.id for n in await self.store.nodes.nodes()}
        async for rec in self.store.tasks.tasks_in_state("running"):
            node = rec.node
            if node and rec.id not in running.get(node, ()):
                # its node is registered, but not under the lease the attempt ran on: it
                # lost that lease, fenced the attempt and came back
                why = EndedBy.lease_lost if node in live else EndedBy.node_lost
                if await self.store.tasks.requeue_lost(rec.id, node, self.node_loss_retries, why) is not None:
                    self.requeued += 1
