"""The SDK: an async client over any node's HTTP API, a thin sync wrapper, futures."""
from .aio import AsyncClient, Client, aconnect, connect

__all__ = ["AsyncClient", "Client", "aconnect", "connect"]
