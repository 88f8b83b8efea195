"""One `shoal node` process: registers under a lease, serves the HTTP API, runs the
scheduler, campaigns for the reaper role. All its loops live in one TaskGroup."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import signal
import socket
import time

import uvicorn

from ..exec.attempt import use_guard
from ..exec.guard import Guard
from ..exec.pyworkers import WorkerPool
from ..flows.coordinator import watch_runs
from ..model import NodeInfo
from ..settings import NodeSettings, StoreSettings
from ..store import Store
from .feed import TaskFeed
from .progress import ProgressPublisher
from .reaper import Reaper
from .roles import Roles
from .scheduler import Scheduler

log = logging.getLogger("shoal.node")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the node owns SIGTERM/SIGINT."""
    @contextlib.contextmanager
    def capture_signals(self):
        yield


class _LeaseLost(Exception):
    pass


class Node:
    def __init__(self, settings: NodeSettings, store_settings: StoreSettings):
        self.s = settings
        self.store = Store(store_settings.endpoints, store_settings.prefix, store_settings.timeout_s,
                           store_settings.max_txn_ops, store_settings.retention_s)
        self.scheduler = Scheduler(settings, self.store)
        # flow stage instances reach etcd and serve their data on the node's address
        self.scheduler.base_env.update(SHOAL_ETCD=",".join(store_settings.endpoints),
                                       SHOAL_PREFIX=store_settings.prefix, SHOAL_DATA_HOST=settings.api_host,
                                       SHOAL_PYTHON=sys.executable)
        self.reaper = Reaper(self.store, settings.node_id)
        self.roles = Roles(self.store, settings.node_id, lambda: self.lease)
        self.roles.add("reaper", self.reaper.serve)
        self.feed = TaskFeed(self.store)
        self.lease = 0
        self.api_url = ""
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._sock: socket.socket | None = None

    # -- identity -------------------------------------------------------------------

    def info(self) -> NodeInfo:
        free = self.scheduler.free()
        return NodeInfo(
            id=self.s.node_id, host=socket.gethostname(), pid=os.getpid(), api=self.api_url,
            machine_type=self.s.machine_type, labels=self.s.labels, cpus=self.s.cpus,
            memory=self.s.memory_bytes, disk=self.s.disk_bytes, gpus=self.s.gpus, slots=self.s.slots,
            lease=self.lease, started_at=self.started_at, heartbeat_at=time.time(),
            free_cpus=round(free.cpus, 3), free_memory=free.memory, free_slots=free.slots,
            running=self.scheduler.busy())

    async def _register(self) -> None:
        self.lease = await self.store.kv.grant_lease(self.s.lease_ttl_s)
        self.scheduler.lease = self.lease
        await self.store.nodes.put_node(self.info(), self.lease)
        self.roles.lease_changed()

    @property
    def is_reaper(self) -> bool:
        return "reaper" in self.roles.held

    # -- run ----------------------------------------------------------------------------

    def bind(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted sockets inherit this: no 40 ms Nagle/delayed-ACK stalls on small replies
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind((self.s.api_host, self.s.api_port))
        self._sock.listen(1024)
        self._sock.setblocking(False)
        host, port = self._sock.getsockname()[:2]
        self.api_url = f"http://{host}:{port}"

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        from ..api.app import create_app   # the API layer sits above the node
        await self.store.connect(wait_s=10.0)
        self.s.log_dir.mkdir(parents=True, exist_ok=True)
        self.scheduler.log_dir = self.s.log_dir
        results_dir = self.s.home / "results" / self.s.node_id
        results_dir.mkdir(parents=True, exist_ok=True)
        if self._sock is None:
            self.bind()
        await self._register()
        guard = Guard()
        use_guard(guard)
        self.pool = self.scheduler.pool = WorkerPool(self.s.node_id, self.api_url, results_dir,
                                                     max_idle=self.s.slots)
        api = _Server(uvicorn.Config(create_app(self), log_level="warning", lifespan="off",
                                     access_log=False, timeout_graceful_shutdown=1))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._stop.set)
        log.info("node %s serving %s (lease %x)", self.s.node_id, self.api_url, self.lease)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._keepalive())
                tg.create_task(self.scheduler.watch_queue())
                tg.create_task(self.scheduler.watch_cancels())
                tg.create_task(self.scheduler.run())
                tg.create_task(self.roles.run())
                tg.create_task(self._reconcile())
                tg.create_task(self.feed.run())
                tg.create_task(watch_runs(self.store, self.roles, self.feed))
                tg.create_task(ProgressPublisher(self.scheduler, self.store).run())
                api_task = tg.create_task(api.serve(sockets=[self._sock]))
                if ready is not None:
                    ready.set()
                await self._stop.wait()
                await self.scheduler.drain(self.s.kill_grace_s)
                api.should_exit = True
                await api_task
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

    def stop(self) -> None:
        self._stop.set()

    # -- lease ------------------------------------------------------------------------

    async def _keepalive(self) -> None:
        """Refresh the lease every TTL/3 and publish a heartbeat. If etcd says the lease
        is gone, or we could not refresh it for a whole TTL, our keys may be gone and our
        work requeued elsewhere: fence (kill every attempt) and register again."""
        period = self.s.lease_ttl_s / 3
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(period)
            try:
                ttl = await asyncio.wait_for(self.store.kv.keepalive(self.lease), timeout=period * 2)
                if ttl > 0:
                    last_ok = time.monotonic()
                    await asyncio.wait_for(self.store.nodes.put_node(self.info(), self.lease), timeout=period * 2)
                    continue
                log.warning("lease %x expired", self.lease)
            except Exception as e:
                if time.monotonic() - last_ok < self.s.lease_ttl_s:
                    log.info("keepalive failed (%s); retrying", e)
                    continue
                log.warning("no keepalive for %.1fs (%s)", time.monotonic() - last_ok, e)
            self.scheduler.fence()
            while True:
                try:
                    await self._register()
                    last_ok = time.monotonic()
                    log.warning("registered again with lease %x", self.lease)
                    self.scheduler.wake.set()
                    break
                except Exception as e:
                    log.info("cannot register yet (%s)", e)
                    await asyncio.sleep(0.5)

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
