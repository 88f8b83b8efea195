"""Fixtures: a real etcd on free loopback ports in a temp dir, a Store on it, and local
clusters of real node processes. Everything started here is stopped here, by PID."""
from __future__ import annotations

pytest_plugins = ["pgserver"]

import asyncio
import contextlib
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from shoal.exec.daemon import spawn_daemon, stop
from shoal.cluster.local import LocalCluster, _wait_http, free_port
from shoal.store import Store
from shoal.cluster.etcd import EtcdConfig, find_etcd


class EtcdProcess:
    """One etcd member we own: start, stop (SIGTERM or SIGKILL), start again."""

    def __init__(self, root: Path):
        self.root = root
        self.cfg = EtcdConfig(data_dir=str(root / "data"), client_port=free_port(), peer_port=free_port(),
                              compaction_retention="1m")
        self.url = self.cfg.client_url
        self.pid = 0

    def start(self) -> None:
        self.pid = spawn_daemon(self.cfg.argv(find_etcd()), str(self.root / "etcd.log"))
        _wait_http(self.url + "/health", time.monotonic() + 30, self.pid, "etcd", self.root / "etcd.log")

    def stop(self, sig: int = 15) -> None:
        if self.pid:
            stop(self.pid, grace_s=10, sig=sig)
            self.pid = 0


@pytest.fixture
def etcd(tmp_path):
    proc = EtcdProcess(tmp_path / "etcd")
    proc.root.mkdir()
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
async def store(etcd):
    s = Store([etcd.url], prefix=f"/test-{uuid.uuid4().hex[:8]}/", retry_for_s=10)
    await s.connect(wait_s=5)
    yield s
    await s.close()


@pytest.fixture
def make_cluster(tmp_path_factory):
    """Start local clusters (etcd + N real node processes); all are destroyed after."""
    made: list[LocalCluster] = []

    def make(nodes: int = 1, lease_ttl_s: int = 5, node_args: list[str] | None = None) -> LocalCluster:
        home = Path(tempfile.mkdtemp(prefix="shoal-test-"))
        c = LocalCluster(home, nodes=nodes, lease_ttl_s=lease_ttl_s, node_args=node_args or [])
        made.append(c)
        c.up()
        return c

    yield make
    for c in made:
        c.destroy()


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """Every process a test starts is gone when it ends."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 5
    def alive(p: psutil.Process) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:     # it ended while we looked
            return False

    while True:
        left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and alive(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for p in left:  # clean up so one failure does not cascade, then fail the test
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    assert not left, f"test left processes running: {[(p.pid, p.cmdline()[:3]) for p in left]}"


@pytest.fixture(autouse=True)
async def no_leaked_tasks():
    """No asyncio task outlives the test that started it."""
    yield
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    me = asyncio.current_task()
    for _ in range(50):
        left = [t for t in asyncio.all_tasks(loop) if t is not me and not t.done()]
        if not left:
            return
        await asyncio.sleep(0.02)
    names = [t.get_coro().__qualname__ for t in left]
    for t in left:
        t.cancel()
    raise AssertionError(f"test left asyncio tasks running: {names}")
