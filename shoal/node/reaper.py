"""The reaper, held by one elected node at a time: when a node's lease expires its
running keys vanish, and the reaper retries or fails the attempts it was running. It
also tells queued tasks that no live node can run why (and stops once one can), and
finishes DAG cascades left as markers (a task with many dependents ended, or the node
finishing one died) and recordings of dependencies left half done."""
from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson

from ..errors import StoreCompacted
from ..logic.placement import unplaceable
from ..model import EndedBy, TaskSpec
from ..model.task import DEFAULT_NODE_LOSS_RETRIES
from ..store import Store
from ..store.kv import WatchReset

log = logging.getLogger("shoal.reaper")
_SHAPE = ("cpus", "memory", "gpus", "disk", "slots", "labels")   # what placement looks at


class Reaper:
    def __init__(self, store: Store, node_id: str, reconcile_every_s: float = 300.0,
                 node_loss_retries: int = DEFAULT_NODE_LOSS_RETRIES, explain_every_s: float = 5.0):
        self.store = store
        self.node_id = node_id
        self.node_loss_retries = node_loss_retries  # the cluster's limit, for tasks without their own
        self.reconcile_every_s = reconcile_every_s
        self.explain_every_s = explain_every_s      # how often queued tasks are told why none runs them
        self.requeued = 0
        self._nodes_changed = asyncio.Event()
        self.cascaded = 0     # DAG edges consumed through markers

    async def serve(self) -> None:
        """Run as reaper: reconcile once, then react to node deaths as they happen. A
        node's lease expiring deletes its node key and its running keys at one revision,
        so the running keys it held are read back at the revision just before."""
        rev = await self.store.kv.revision()
        await self.reconcile()
        ticks = [asyncio.create_task(self._periodic()), asyncio.create_task(self._explain_loop()),
                 asyncio.create_task(self._cascades(rev))]
        try:
            async for batch in self.store.kv.watch(self.store.keys.nodes, rev + 1):
                if isinstance(batch, WatchReset):
                    await self.reconcile()
                    continue
                for kind, kv, _ in batch:
                    if kind == "DELETE":
                        self._nodes_changed.set()
                        await self._node_gone(self.store.keys.id_of(kv.key), kv.mod_revision)
                    elif kv.create_revision == kv.mod_revision:   # a node joined (heartbeats rewrite it)
                        self._nodes_changed.set()
        finally:
            for tick in ticks:
                tick.cancel()
            await asyncio.gather(*ticks, return_exceptions=True)

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

    async def _explain_loop(self) -> None:
        while True:
            self._nodes_changed.clear()
            try:
                await self.explain_queued()
            except Exception as e:
                log.warning("could not explain queued tasks: %s", e)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._nodes_changed.wait(), self.explain_every_s)

    async def explain_queued(self) -> int:
        """Give each queued task that no live node can run the reason why, and clear it from
        those a node can run now; how many records changed."""
        nodes = await self.store.nodes.nodes()
        known: dict[bytes, str | None] = {}

        def why(spec: dict) -> str | None:
            shape = orjson.dumps([spec.get(f) for f in _SHAPE])
            if shape not in known:
                known[shape] = unplaceable(TaskSpec.model_validate(spec), nodes)
            return known[shape]
        return await self.store.tasks.explain_queued(why)

    async def reconcile(self) -> None:
        """Find tasks marked running whose running key is gone (a reaper change-over or
        a missed event) and requeue them; finish DAG cascades and recordings left undone."""
        self.cascaded += await self.store.dag.finish_all()
        await self.store.dag.record_all_rest()
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
