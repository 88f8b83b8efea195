"""Settings, one small dataclass per subsystem, units in the names. Loaded once from
flags and SHOAL_* environment variables and passed down."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .model.task import DEFAULT_MAX_RETRIES, DEFAULT_NODE_LOSS_RETRIES


def shoal_home() -> Path:
    return Path(os.environ.get("SHOAL_HOME", "~/.shoal")).expanduser()


@dataclass
class StoreSettings:
    endpoints: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    prefix: str = "/shoal/"
    timeout_s: float = 5.0
    max_txn_ops: int = 128
    retention_s: float = 7 * 86400


@dataclass
class NodeSettings:
    node_id: str
    home: Path
    cpus: float
    memory_bytes: int
    slots: int
    disk_bytes: int = 0
    gpus: int = 0
    labels: list[str] = field(default_factory=list)
    machine_type: str = "local"
    api_host: str = "127.0.0.1"
    api_port: int = 0
    lease_ttl_s: int = 5
    kill_grace_s: float = 5.0
    cancel_grace_s: float = 0.5
    log_tail_bytes: int = 4096
    max_retries: int = DEFAULT_MAX_RETRIES
    node_loss_retries: int = DEFAULT_NODE_LOSS_RETRIES  # for tasks that do not set their own
    etcd_gone_exit_s: float | None = None   # exit once etcd is unreachable this long (None: never)
    claim_scan: int = 1000
    prefetch_per_slot: int = 8      # tasks claimed ahead per slot when the queue is deep...
    prefetch_below_s: float = 0.25  # ...and recent attempts take less than this...
    prefetch_horizon_s: float = 0.05  # ...holding no more than a slot starts in this long

    @property
    def log_dir(self) -> Path:
        return self.home / "logs" / self.node_id
