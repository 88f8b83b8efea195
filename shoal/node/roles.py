"""Elected roles: work one node at a time does for the whole cluster (the reaper, the
driver of each flow run; the accountant and guards next), all under one mechanism.

A role is held through a key under elections/ on the holder's lease, so it passes on when
the holder dies. Every node campaigns for every role it knows; a watch on elections/ wakes
the campaigners as soon as a key goes, so a takeover costs one round trip, not a poll. A
role that crashes is logged and its key released at once, so another node (or this one,
after a pause) takes it over: one bad run of a role never leaves the cluster without it.
A role added with `once=True` (a flow run's driver) is done when its work returns: it
resigns and stops campaigning."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from ..store import Store
from ..store.kv import WatchReset

log = logging.getLogger("shoal.roles")

Serve = Callable[[], Awaitable[None]]


@dataclass
class _Role:
    name: str
    serve: Serve
    once: bool
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    campaigner: asyncio.Task | None = None
    crashes: int = 0


class Roles:
    """The roles this node campaigns for. `run()` belongs to the node's TaskGroup; roles
    may be added before or while it runs."""

    def __init__(self, store: Store, node_id: str, lease: Callable[[], int], *,
                 poll_s: float = 2.0, crash_pause_s: float = 1.0):
        self.store = store
        self.node_id = node_id
        self._lease = lease
        self.poll_s = poll_s                # campaign again this often even if no event came
        self.crash_pause_s = crash_pause_s  # after a crash, others get this long to take over
        self.held: set[str] = set()
        self._roles: dict[str, _Role] = {}
        self._group: asyncio.TaskGroup | None = None
        self._lease_lost = asyncio.Event()

    def add(self, name: str, serve: Serve, *, once: bool = False) -> None:
        """Campaign for `name`; while held, run `serve()`. Adding a known role is a no-op."""
        if name in self._roles:
            return
        role = self._roles[name] = _Role(name, serve, once)
        if self._group is not None:
            role.campaigner = self._group.create_task(self._campaign(role), name=f"role {name}")

    def remove(self, name: str) -> None:
        """Stop campaigning for `name` (its work is known to be over); if held, stop it."""
        role = self._roles.pop(name, None)
        if role is not None and role.campaigner is not None:
            role.campaigner.cancel()

    def knows(self, name: str) -> bool:
        return name in self._roles

    def lease_changed(self) -> None:
        """The node registered again under a new lease: keys on the old one are gone, so
        every held role stops and campaigns afresh."""
        lost, self._lease_lost = self._lease_lost, asyncio.Event()
        lost.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._group = tg
            try:
                for role in self._roles.values():
                    role.campaigner = tg.create_task(self._campaign(role), name=f"role {role.name}")
                await self._watch()
            finally:
                self._group = None

    async def _watch(self) -> None:
        """Wake a role's campaigner when its key goes (its holder died or resigned)."""
        prefix = self.store.keys.elections
        rev = await self.store.kv.revision()
        async for batch in self.store.kv.watch(prefix, rev + 1):
            if isinstance(batch, WatchReset):
                for role in self._roles.values():
                    role.wake.set()
                continue
            for kind, kv, _ in batch:
                if kind == "DELETE":
                    role = self._roles.get(kv.key[len(prefix):].decode())
                    if role is not None:
                        role.wake.set()

    async def _campaign(self, role: _Role) -> None:
        while True:
            role.wake.clear()
            try:
                lease = self._lease()
                # one transaction: wins a free key, or finds ours (a resign that failed
                # after a crash leaves it on our lease: we take the role up again)
                if lease and await self.store.elections.campaign(role.name, self.node_id, lease):
                    if await self._hold(role, lease):
                        self._roles.pop(role.name, None)
                        return
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # etcd away: try again on the next wake or poll
                log.info("election for %s: %s", role.name, e)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(role.wake.wait(), self.poll_s)

    async def _hold(self, role: _Role, lease: int) -> bool:
        """Serve the role while we hold it; True when its work is over for good."""
        log.info("node %s is now %s", self.node_id, role.name)
        self.held.add(role.name)
        serve = asyncio.create_task(role.serve(), name=f"serve {role.name}")
        lost = asyncio.create_task(self._lease_lost.wait())
        try:
            await asyncio.wait({serve, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.held.discard(role.name)
            for t in (serve, lost):
                t.cancel()
            await asyncio.gather(serve, lost, return_exceptions=True)
            # `lost` ran to its end only if the lease went first; otherwise (the work ended,
            # or the campaigner was cancelled by remove() or shutdown) resign
            gone = not lost.cancelled()
            if not gone:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.store.elections.resign(role.name, self.node_id, lease))
        if gone:
            log.warning("%s: lease %x is gone; campaigning again", role.name, lease)
            return False
        error = None if serve.cancelled() else serve.exception()
        if error is not None:
            role.crashes += 1
            log.error("%s crashed (%s: %s); released it for another node", role.name,
                      type(error).__name__, error, exc_info=error)
            await asyncio.sleep(self.crash_pause_s)
            return False
        if role.once:
            log.info("%s is done", role.name)
            return True
        log.warning("%s returned; campaigning again", role.name)
        return False
