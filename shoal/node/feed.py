"""One watch on tasks/ per node, fanned out to every client waiting on task ids, so a
thousand waiters cost etcd one watcher, not a thousand."""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from ..store import Store
from ..store.kv import WatchReset


class TaskFeed:
    def __init__(self, store: Store):
        self.store = store
        self._by_id: dict[str, set[asyncio.Queue]] = {}
        self._all: set[asyncio.Queue] = set()   # told of every reset
        self.started = asyncio.Event()

    async def run(self) -> None:
        rev = await self.store.kv.revision()
        self.started.set()
        async for batch in self.store.kv.watch(self.store.keys.tasks, rev + 1):
            if isinstance(batch, WatchReset):
                for q in self._all:
                    q.put_nowait(batch)
                continue
            for kind, kv, _ in batch:
                if kind != "PUT":
                    continue
                subs = self._by_id.get(self.store.keys.id_of(kv.key))
                if subs:
                    for q in subs:
                        q.put_nowait(kv.value)

    @contextlib.asynccontextmanager
    async def subscribe(self, ids: list[str]) -> AsyncIterator[asyncio.Queue]:
        """A queue receiving each new value of the given tasks (bytes), or a WatchReset
        when events may have been missed. Subscribe before reading a snapshot."""
        await self.started.wait()
        q: asyncio.Queue = asyncio.Queue()
        for tid in ids:
            self._by_id.setdefault(tid, set()).add(q)
        self._all.add(q)
        try:
            yield q
        finally:
            self._all.discard(q)
            for tid in ids:
                subs = self._by_id.get(tid)
                if subs is not None:
                    subs.discard(q)
                    if not subs:
                        del self._by_id[tid]
