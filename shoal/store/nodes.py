"""The nodes of the cluster: each one's record lives on its lease, so it goes when the
node stops refreshing it."""
from __future__ import annotations

from ..model import NodeInfo
from ..model.keys import Keys
from .kv import Etcd


class NodeStore:
    def __init__(self, kv: Etcd, keys: Keys):
        self.kv = kv
        self.keys = keys

    async def put_node(self, info: NodeInfo, lease: int) -> None:
        await self.kv.put(self.keys.node(info.id), info.model_dump_json().encode(), lease)

    async def delete_node(self, node_id: str) -> None:
        await self.kv.delete(self.keys.node(node_id))

    async def nodes(self) -> list[NodeInfo]:
        kvs, _, _ = await self.kv.get_prefix(self.keys.nodes)
        return [NodeInfo.model_validate_json(kv.value) for kv in kvs]

    async def node(self, node_id: str) -> NodeInfo | None:
        kvs, _, _ = await self.kv.range(self.keys.node(node_id))
        return NodeInfo.model_validate_json(kvs[0].value) if kvs else None
