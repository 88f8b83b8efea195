"""The only code that talks to etcd, split by domain: `kv` is etcd itself (connection,
retries, leases, transactions, watches, error translation, the one importer of the etcd
client); `tasks`, `dag`, `nodes`, `elections` and `flows` hold shoal's transactions on it.
`Store` gathers them over one connection. (How to run an etcd process is `cluster/etcd.py`.)"""
from __future__ import annotations

from ..logic.clock import SYSTEM_CLOCK, Clock
from ..model.keys import Keys
from .dag import DagStore
from .elections import Elections
from .flows import Flows
from .kv import Etcd
from .nodes import NodeStore
from .tasks import TaskStore

__all__ = ["Store"]


class Store:
    """One connection to an etcd cluster and shoal's keys on it, by domain:
    `kv`, `keys`, `tasks`, `dag`, `nodes`, `elections`, `flows`."""

    def __init__(self, endpoints: list[str] | str, prefix: str = "/shoal/", timeout_s: float = 5.0,
                 max_txn_ops: int = 128, retention_s: float = 7 * 86400, retry_for_s: float = 30.0,
                 clock: Clock = SYSTEM_CLOCK):
        self.kv = Etcd(endpoints, timeout_s=timeout_s, retention_s=retention_s, retry_for_s=retry_for_s)
        self.keys = Keys(prefix if prefix.endswith("/") else prefix + "/")
        self.nodes = NodeStore(self.kv, self.keys)
        self.elections = Elections(self.kv, self.keys)
        self.dag = DagStore(self.kv, self.keys, clock)
        self.tasks = TaskStore(self.kv, self.keys, self.dag, self.nodes, max_txn_ops, clock)
        self.flows = Flows(self.kv, self.keys)

    async def connect(self, wait_s: float = 0.0) -> None:
        """Connect and check etcd answers; wait up to `wait_s` for it to come up."""
        await self.kv.connect(wait_s)

    async def close(self) -> None:
        await self.kv.close()

    async def cluster_id(self) -> str:
        """Which cluster this is: etcd's cluster id and shoal's key prefix."""
        return f"{await self.kv.cluster_id()}{self.keys.prefix}"
