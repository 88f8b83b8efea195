"""shoal: run shell commands on one machine or a fleet, with all state in etcd."""
__version__ = "0.1.0"

from .errors import (ShoalError, InvalidSpec, NotFound, Conflict, TooLarge, StoreUnavailable, StoreFull,  # noqa: E402
                     ClusterError, NodeUnreachable, TaskFailed, FlowFailed, FlowCancelled, UnplaceableWarning)


def connect(address: str | None = None, **kw):
    """A sync client for the cluster at `address`; see shoal.client.connect.connect."""
    from .client.connect import connect as _connect
    return _connect(address, **kw)


def aconnect(address: str | None = None, **kw):
    """An async client; use as `async with shoal.aconnect() as c:`."""
    from .client.connect import aconnect as _aconnect
    return _aconnect(address, **kw)


def __getattr__(name: str):
    # the SDK loads on first use (and the function-task API brings cloudpickle)
    if name in ("task", "progress"):
        from .client import functions
        return getattr(functions, name)
    if name in ("Future", "as_completed", "gather"):
        from .client import futures
        return getattr(futures, name)
    if name == "flow":
        from .flows.builder import flow
        return flow
    raise AttributeError(name)


__all__ = ["flow", "task", "Future", "as_completed", "gather", "progress", "connect", "aconnect",
           "ShoalError", "InvalidSpec", "NotFound", "Conflict", "TooLarge", "StoreUnavailable", "StoreFull",
           "ClusterError", "NodeUnreachable", "TaskFailed", "FlowFailed", "FlowCancelled", "UnplaceableWarning",
           "__version__"]
