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
from ..errors import ClusterError
from ..settings import shoal_home
from .aio import AsyncClient
from .failover import split_addresses
from .sync import Client


def discover(address: str | list[str] | None, embedded: bool = True) -> tuple[list[str], LocalCluster | None]:
    """The API addresses to use (every node's, the one to try first first), and the
    embedded cluster we started for them (if any). `address` is one URL, several
    (comma separated, or a list), or None: then $SHOAL_ADDRESS, else the nodes of the
    cluster `shoal up` started, else (if `embedded`) a new embedded one."""
    given = split_addresses(address or os.environ.get("SHOAL_ADDRESS") or [])
    if given:
        return given, None
    local = LocalCluster(shoal_home())
    if local.running():
        return local.addresses(), None
    if not embedded:
        st = local.state()
        if st and st.get("nodes"):
            raise ClusterError(f"the shoal cluster under {local.home} has no live node (it lists "
                               f"{', '.join(n['api'] for n in st['nodes'])}); restart it with `shoal up`, "
                               "or pass --address http://NODE:PORT (SHOAL_ADDRESS)")
        raise ClusterError(f"no shoal cluster is running under {local.home}; start one with "
                           "`shoal up`, or pass --address http://NODE:PORT (SHOAL_ADDRESS)")
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="shoal-embedded-")), nodes=1)
    try:
        cluster.up()
    except BaseException:
        cluster.destroy()
        raise
    return cluster.addresses(), cluster


def connect(address: str | list[str] | None = None, timeout_s: float = 30.0, embedded: bool = True) -> Client:
    """A client for the cluster at `address` (one node's API URL or several, comma
    separated or a list; or $SHOAL_ADDRESS; or the cluster `shoal up` started). With none
    running, starts an embedded local cluster and stops it on close (unless `embedded`
    is False: then ClusterError says how to start one). It learns every node of the
    cluster and moves to another when one fails. `with shoal.connect() as c:` also makes
    it the current client of the block."""
    addr, cluster = discover(address, embedded)
    try:
        return Client(lambda: AsyncClient(addr, timeout_s), on_close=cluster.destroy if cluster else None)
    except BaseException:
        if cluster:
            cluster.destroy()
        raise


@contextlib.asynccontextmanager
async def aconnect(address: str | list[str] | None = None, timeout_s: float = 30.0) -> AsyncIterator[AsyncClient]:
    """`async with shoal.aconnect() as c:` an AsyncClient, current in the block; the
    cluster is found as connect() finds it (an embedded one is stopped at the end)."""
    addr, cluster = await anyio.to_thread.run_sync(discover, address)
    try:
        async with AsyncClient(addr, timeout_s) as client:
            yield client
    finally:
        if cluster:
            await anyio.to_thread.run_sync(cluster.destroy)
