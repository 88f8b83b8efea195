"""The SDK: an async client over any node's HTTP API (aio), its thin sync wrapper (sync),
finding or starting a cluster (connect), futures bound to the client that made them
(futures), `@shoal.task` (functions, loaded on first use: it needs cloudpickle), and
DAG files run from Python (dag)."""
from .aio import AsyncClient
from .connect import aconnect, connect
from .current import current_client
from .futures import Future, agather, aas_completed, as_completed, gather
from .sync import Client

__all__ = ["AsyncClient", "Client", "aconnect", "connect", "current_client", "Future", "as_completed",
           "aas_completed", "gather", "agather", "task", "progress"]


def __getattr__(name: str):
    if name in ("task", "progress"):
        from . import functions
        return getattr(functions, name)
    raise AttributeError(name)
