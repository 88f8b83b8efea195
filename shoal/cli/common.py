"""What the CLI commands share: finding the cluster."""
from __future__ import annotations

import os

from ..client import Client, connect
from ..errors import ClusterError
from ..cluster.local import LocalCluster
from ..settings import shoal_home


def client_for(address: str | None, embedded: bool = False) -> Client:
    """A client for `address`, $SHOAL_ADDRESS, or the cluster `shoal up` started. Only
    commands that make sense on a throwaway cluster (map, submit --wait) may start an
    embedded one; the rest say how to start a cluster."""
    address = address or os.environ.get("SHOAL_ADDRESS")
    if not address and not embedded:
        st = LocalCluster(shoal_home()).running()
        if not st:
            raise ClusterError(f"no shoal cluster is running under {shoal_home()}; start one with "
                               "`shoal up`, or pass --address http://NODE:PORT (SHOAL_ADDRESS)")
        address = st["nodes"][0]["api"]
    return connect(address)
