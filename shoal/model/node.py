"""What a node declares about itself in etcd (nodes/<node>, under its lease)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class NodeInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    host: str
    pid: int
    api: str                          # http://host:port
    machine_type: str = "local"
    labels: list[str] = Field(default_factory=list)
    cpus: float
    memory: int                       # bytes
    disk: int = 0
    gpus: int = 0
    slots: int
    lease: int = 0                    # the node's etcd lease id
    started_at: float
    # refreshed with each heartbeat
    heartbeat_at: float = 0.0
    free_cpus: float = 0.0
    free_memory: int = 0
    free_slots: int = 0
    running: int = 0
