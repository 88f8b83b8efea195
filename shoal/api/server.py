"""The `shoal node` process: a node with its HTTP API, serving until SIGTERM/SIGINT."""
from __future__ import annotations

import socket

from ..node.node import Node
from ..settings import NodeSettings, StoreSettings


async def serve_node(settings: NodeSettings, store: StoreSettings) -> None:
    """Bind the API port, name the node after it when no name was given, say where it
    listens, and serve until stopped."""
    node = Node(settings, store)
    node.bind()
    if not settings.node_id:
        settings.node_id = f"{socket.gethostname()}-{node.api_url.rsplit(':', 1)[1]}"
    print(f"shoal node {settings.node_id}: API {node.api_url}, etcd {', '.join(store.endpoints)}", flush=True)
    await node.serve()
