"""One `shoal node` process: registers under a lease, runs the scheduler, campaigns for
its elected roles, and runs the services it is given (the HTTP API, built by the API
layer). All its loops live in one TaskGroup; it owns signals and the shutdown order."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import signal
import socket
from dataclasses import dataclass
from typing import Protocol

from ..exec.attempt import use_guard
from ..exec.guard import Guard
from ..exec.pyworkers import WorkerPool
from ..flows.coordinator import watch_runs
from ..logic.clock import SYSTEM_CLOCK, Clock
from ..logic.placement import Capacity, unplaceable
from ..model import NodeInfo, TaskSpec
from ..settings import NodeSettings, StoreSettings
from ..store import Store
from ..errors import StoreUnavailable
from .feed import TaskFeed
from .outage import EtcdOutage
from .progress import ProgressPublisher
from .reaper import Reaper
from .roles import Roles
from .scheduler import Scheduler

log = logging.getLogger("shoal.node")


class Service(Protocol):
    """Something the node runs beside its own loops (the HTTP API): started once the
    node is registered, asked to stop once it has drained."""

    async def serve(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class NodeStatus:
    """What this node is doing, for its health route."""
    node_id: str
    api: str
    running: int          # attempts whose process runs now
    steps: int            # etcd transactions of the step loop so far
    completed: int        # attempt ends committed so far
    is_reaper: bool
    free: Capacity


class Node:
    def __init__(self, settings: NodeSettings, store_settings: StoreSettings, api_url: str = "",
                 clock: Clock = SYSTEM_CLOCK):
        self.s = settings
        self.clock = clock
        self.store = Store(store_settings.endpoints, store_settings.prefix, store_settings.timeout_s,
                           store_settings.max_txn_ops, store_settings.retention_s, clock=clock)
        self.scheduler = Scheduler(settings, self.store, clock)
        # flow stage instances reach etcd and serve their data on the node's address
        self.scheduler.base_env.update(SHOAL_ETCD=",".join(store_settings.endpoints),
                                       SHOAL_PREFIX=store_settings.prefix, SHOAL_DATA_HOST=settings.api_host,
                                       SHOAL_PYTHON=sys.executable)
        self.reaper = Reaper(self.store, settings.node_id, node_loss_retries=settings.node_loss_retries)
        self.roles = Roles(self.store, settings.node_id, lambda: self.lease)
        self.roles.add("reaper", self.reaper.serve)
        self.feed = TaskFeed(self.store)
        self.lease = 0
        self.api_url = api_url
        self.started_at = clock.time()
        self._offers: tuple[float, list[NodeInfo]] | None = None   # (when read, the live nodes)
        self._stop = asyncio.Event()
        # etcd out of reach: since when (monotonic; None while it answers), the last error,
        # and why the node gave up on it (then it exits with that message)
        self._etcd_down_since: float | None = None
        self._etcd_error = ""
        self._gave_up: str | None = None

    # -- identity -------------------------------------------------------------------

    def info(self) -> NodeInfo:
        free = self.scheduler.free()
        return NodeInfo(
            id=self.s.node_id, host=socket.gethostname(), pid=os.getpid(), api=self.api_url,
            machine_type=self.s.machine_type, labels=self.s.labels, cpus=self.s.cpus,
            memory=self.s.memory_bytes, disk=self.s.disk_bytes, gpus=self.s.gpus, slots=self.s.slots,
            lease=self.lease, started_at=self.started_at, heartbeat_at=self.clock.time(),
            free_cpus=round(free.cpus, 3), free_memory=free.memory, free_slots=free.slots,
            running=self.scheduler.busy())

    async def _register(self) -> None:
        self.lease = await self.store.kv.grant_lease(self.s.lease_ttl_s)
        self.scheduler.registered(self.lease)
        await self.store.nodes.put_node(self.info(), self.lease)
        self.roles.lease_changed()

    async def unplaceable_warnings(self, specs: list[TaskSpec]) -> list[str]:
        """A warning for each kind of task among `specs` that no live node could ever run
        (the task is accepted and stays queued: a node that fits may join later). The live
        nodes are read at most once a second, so a stream of submits costs etcd little."""
        now = self.clock.monotonic()
        if self._offers is None or now - self._offers[0] > 1.0:
            self._offers = (now, await self.store.nodes.nodes())
        nodes = self._offers[1]
        why: dict[tuple, str | None] = {}
        found: dict[str, list[int]] = {}
        for i, spec in enumerate(specs):
            shape = (spec.cpus, spec.memory, spec.gpus, spec.disk, spec.slots, tuple(spec.labels))
            if shape not in why:
                why[shape] = unplaceable(spec, nodes)
            if why[shape] is not None:
                found.setdefault(why[shape], []).append(i)
        out = []
        for reason, where in found.items():
            who = ("it" if len(specs) == 1 else f"tasks[{where[0]}]" if len(where) == 1
                   else f"{len(where)} tasks (tasks[{where[0]}], ...)")
            out.append(f"no live node can run {who}: {reason}; queued until a node that fits joins")
        return out

    @property
    def is_reaper(self) -> bool:
        return "reaper" in self.roles.held

    def status(self) -> NodeStatus:
        sched = self.scheduler
        return NodeStatus(node_id=self.s.node_id, api=self.api_url, running=sched.busy(), steps=sched.steps,
                          completed=sched.completed_total, is_reaper=self.is_reaper, free=sched.free())

    # -- run ----------------------------------------------------------------------------

    async def serve(self, ready: asyncio.Event | None = None, services: tuple[Service, ...] = ()) -> None:
        """Run until stop() or SIGTERM/SIGINT: then drain (running attempts go back to the
        queue), stop the services, and end every loop."""
        await self.store.connect(wait_s=10.0)
        self.s.log_dir.mkdir(parents=True, exist_ok=True)
        self.scheduler.log_dir = self.s.log_dir
        results_dir = self.s.home / "results" / self.s.node_id
        results_dir.mkdir(parents=True, exist_ok=True)
        await self._register()
        guard = Guard()
        use_guard(guard)
        self.pool = self.scheduler.pool = WorkerPool(self.s.node_id, self.api_url, results_dir,
                                                     max_idle=self.s.slots)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._stop.set)
        log.info("node %s serving %s (lease %x)", self.s.node_id, self.api_url, self.lease)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._keepalive())
                tg.create_task(self._watch_etcd())
                tg.create_task(self.scheduler.watch_queue())
                tg.create_task(self.scheduler.watch_cancels())
                tg.create_task(self.scheduler.run())
                tg.create_task(self.roles.run())
                tg.create_task(self._reconcile())
                tg.create_task(self.feed.run())
                tg.create_task(watch_runs(self.store, self.roles, self.feed))
                tg.create_task(ProgressPublisher(self.scheduler, self.store, clock=self.clock).run())
                served = [tg.create_task(svc.serve()) for svc in services]
                if ready is not None:
                    ready.set()
                await self._stop.wait()
                await self.scheduler.drain(self.s.kill_grace_s)
                for svc in services:
                    svc.stop()
                for task in served:
                    await task
                raise asyncio.CancelledError  # ends the group: the loops stop with it
        except (asyncio.CancelledError, BaseExceptionGroup) as e:
            if isinstance(e, BaseExceptionGroup):
                real = [x for x in e.exceptions if not isinstance(x, asyncio.CancelledError)]
                if real:
                    raise
        finally:
            await self.pool.close()
            use_guard(None)
            guard.close()
            with contextlib.suppress(Exception):
                await self.store.kv.revoke_lease(self.lease)
            with contextlib.suppress(Exception):
                await self.store.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
        if self._gave_up:
            raise StoreUnavailable(f"node {self.s.node_id}: {self._gave_up}")

    def stop(self) -> None:
        self._stop.set()

    # -- lease ------------------------------------------------------------------------

    async def _keepalive(self) -> None:
        """Refresh the lease every TTL/3 and publish a heartbeat. If etcd says the lease
        is gone, or we could not refresh it for a whole TTL, our keys may be gone and our
        work requeued elsewhere: fence (kill every attempt) and register again."""
        period = self.s.lease_ttl_s / 3
        clock = self.clock
        last_ok = clock.monotonic()
        while True:
            await asyncio.sleep(period)
            try:
                ttl = await asyncio.wait_for(self.store.kv.keepalive(self.lease), timeout=period * 2)
                if ttl > 0:
                    last_ok = clock.monotonic()
                    self._etcd_answers()
                    await asyncio.wait_for(self.store.nodes.put_node(self.info(), self.lease), timeout=period * 2)
                    continue
                log.warning("lease %x expired", self.lease)
            except Exception as e:
                self._etcd_failed(last_ok, e)
                if clock.monotonic() - last_ok < self.s.lease_ttl_s:
                    log.info("keepalive failed (%s); retrying", e)
                    continue
                log.warning("no keepalive for %.1fs (%s)", clock.monotonic() - last_ok, e)
            self.scheduler.lease_lost()
            while True:
                try:
                    await self._register()
                    last_ok = clock.monotonic()
                    self._etcd_answers()
                    log.warning("registered again with lease %x", self.lease)
                    break
                except Exception as e:
                    self._etcd_failed(last_ok, e)
                    log.info("cannot register yet (%s)", e)
                    await asyncio.sleep(0.5)

    def _etcd_answers(self) -> None:
        self._etcd_down_since, self._etcd_error = None, ""

    def _etcd_failed(self, last_ok: float, error: Exception) -> None:
        if self._etcd_down_since is None:
            self._etcd_down_since = last_ok
        # the store's own words name etcd again: what it met underneath says more
        cause = error.__cause__ or error.__context__ or error
        self._etcd_error = f"{type(cause).__name__}: {cause}"[:300]

    async def _watch_etcd(self) -> None:
        """Say when etcd is out of reach and for how long; past --etcd-gone-exit, fence
        everything and stop the node (it then exits with the reason)."""
        outage = EtcdOutage(f"etcd at {', '.join(self.store.kv.endpoints)}", self.s.etcd_gone_exit_s)
        while True:
            await asyncio.sleep(1.0)
            line, leave = outage.observe(self.clock.monotonic(), self._etcd_down_since, self._etcd_error)
            if line:
                (log.error if leave else log.warning)("%s", line)
            if leave:
                self._gave_up = line
                # the lease is surely gone: kill what runs here now, and drop the roles
                # without resigning them (their keys went with the lease)
                self.scheduler.lease_lost()
                self.roles.lease_changed()
                self._stop.set()
                return

    async def _reconcile(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(10)
            ticks += 1
            with contextlib.suppress(Exception):
                await self.scheduler.reconcile()
            if ticks % 6 == 0:
                with contextlib.suppress(Exception):
                    await self._free_orphan_results()

    async def _free_orphan_results(self) -> None:
        """A big result lives as long as its task's record: once retention (or a job's
        deletion) removes the record, the file goes too."""
        results_dir = self.s.home / "results" / self.s.node_id
        files: dict[str, list] = {}
        for path in results_dir.glob("*.pickle"):  # <task>.<attempt>.pickle
            files.setdefault(path.name.split(".", 1)[0], []).append(path)
        if not files:
            return
        alive, _ = await self.store.tasks.get_task_values(sorted(files))
        for tid, paths in files.items():
            if tid not in alive:
                for path in paths:
                    path.unlink(missing_ok=True)
