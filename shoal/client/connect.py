"""Finding the cluster to talk to ($SHOAL_ADDRESS, the `shoal up` cluster, or an embedded
one started for this process) and opening a sync or async client on it."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import AsyncIterator

import anyio

from ..cluster.local import LocalCluster
from ..settings import shoal_home
from .aio import AsyncClient
from .sync import Client


def discover(address: str | None) -> tuple[str, LocalCluster | None]:
    """The API address to use, and the embedded cluster we started for it (if any)."""
    address = address or os.environ.get("SHOAL_ADDRESS")
    if address:
        return address, None
    st = LocalCluster(shoal_home()).running()
    if st:
        return st["nodes"][0]["api"], None
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="shoal-embedded-")), nodes=1)
    try:
        st = cluster.up()
    except BaseException:
        cluster.destroy()
        raise
    return st["nodes"][0]["api"], cluster


def connect(address: str | None = None, timeout_s: float = 30.0) -> Client:
    """A client for the cluster at `address` (or $SHOAL_ADDRESS, or the cluster `shoal up`
    started). With none running, starts an embedded local cluster and stops it on close.
    `with shoal.connect() as c:` also makes it the current client of the block."""
    addr, cluster = discover(address)
    try:
        return Client(lambda: AsyncClient(addr, timeout_s), on_close=cluster.destroy if cluster else None)
    except BaseException:
        if cluster:
            cluster.destroy()
        raise


@contextlib.asynccontextmanager
async def aconnect(address: str | None = None, timeout_s: float = 30.0) -> AsyncIterator[AsyncClient]:
    """`async with shoal.aconnect() as c:` an AsyncClient, current in the block; the
    cluster is found as connect() finds it (an embedded one is stopped at the end)."""
    addr, cluster = await anyio.to_thread.run_sync(discover, address)
    try:
        async with AsyncClient(addr, timeout_s) as client:
            yield client
    finally:
        if cluster:
            await anyio.to_thread.run_sync(cluster.destroy)
