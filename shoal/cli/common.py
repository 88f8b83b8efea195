"""What the CLI commands share: finding the cluster."""
from __future__ import annotations

from ..client import Client, connect


def client_for(address: str | None, embedded: bool = False) -> Client:
    """A client for `address` (one node's URL, or several comma separated), $SHOAL_ADDRESS,
    or the cluster `shoal up` started (all its nodes: when one is gone, the others
    answer). Only commands that make sense on a throwaway cluster (map, submit --wait)
    may start an embedded one; the rest say how to start a cluster."""
    return connect(address, embedded=embedded)
