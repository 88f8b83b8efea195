"""Elections: a role (the reaper, a flow run's driver) is held through a key under
elections/ on the holder's lease, so it passes to another node when the holder dies."""
from __future__ import annotations

from ..model.keys import Keys
from .kv import Etcd, cmp, delete_op, get_op, put_op


class Elections:
    def __init__(self, kv: Etcd, keys: Keys):
        self.kv = kv
        self.keys = keys

    async def campaign(self, role: str, node_id: str, lease: int) -> bool:
        """Become `role` if nobody holds it. The key lives on our lease, so it passes
        to another node when we die."""
        key = self.keys.election(role)
        resp = await self.kv.txn([cmp(key, "CREATE", 0)], [put_op(key, node_id.encode(), lease)], [get_op(key)])
        if resp.succeeded:
            return True
        kvs = resp.responses[0].response_range.kvs
        return bool(kvs) and kvs[0].value.decode() == node_id and kvs[0].lease == lease

    async def resign(self, role: str, node_id: str, lease: int) -> bool:
        """Give up `role` if we hold it (under this lease); False if someone else does."""
        key = self.keys.election(role)
        mine = [cmp(key, "VALUE", node_id.encode()), cmp(key, "LEASE", lease)]
        resp = await self.kv.txn(mine, [delete_op(key)])
        return resp.succeeded

    async def leader(self, role: str) -> str | None:
        kvs, _, _ = await self.kv.range(self.keys.election(role))
        return kvs[0].value.decode() if kvs else None
