"""A node with its HTTP API: binds the API socket, builds the app over the node and
hands the node the server as a service to run in its TaskGroup. `shoal node` runs
`serve_node`; the node owns signals and the shutdown order (drain, then stop the server)."""
from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn

from ..node.node import Node
from ..settings import NodeSettings, StoreSettings
from .app import create_app


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the node owns SIGTERM/SIGINT."""
    @contextlib.contextmanager
    def capture_signals(self):
        yield


class HttpService:
    """The node's HTTP API as one of its services."""

    def __init__(self, node: Node, sock: socket.socket):
        self.sock = sock
        self.server = _Uvicorn(uvicorn.Config(create_app(node), log_level="warning", lifespan="off",
                                              access_log=False, timeout_graceful_shutdown=1))

    async def serve(self) -> None:
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            self.sock.close()

    def stop(self) -> None:
        self.server.should_exit = True


def bind(host: str, port: int) -> socket.socket:
    """The API's listening socket (port 0: any free one), bound before the node starts so
    its address is known when it registers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted sockets inherit this: no 40 ms Nagle/delayed-ACK stalls on small replies
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def node_with_api(settings: NodeSettings, store_settings: StoreSettings) -> tuple[Node, HttpService]:
    """A node and its HTTP service, its socket bound. A node with no id is named
    <host>-<api port>."""
    sock = bind(settings.api_host, settings.api_port)
    host, port = sock.getsockname()[:2]
    if not settings.node_id:
        settings.node_id = f"{socket.gethostname()}-{port}"
    try:
        node = Node(settings, store_settings, api_url=f"http://{host}:{port}")
        return node, HttpService(node, sock)
    except BaseException:
        sock.close()
        raise


async def serve_node(settings: NodeSettings, store_settings: StoreSettings,
                     ready: asyncio.Event | None = None) -> None:
    """Run a node with its HTTP API until SIGTERM/SIGINT (or its stop())."""
    node, http = node_with_api(settings, store_settings)
    print(f"shoal node {settings.node_id}: API {node.api_url}, etcd {', '.join(store_settings.endpoints)}",
          flush=True)
    try:
        await node.serve(ready, services=(http,))
    finally:
        http.sock.close()
