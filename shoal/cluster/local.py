"""A cluster on this machine: one etcd and N nodes as background processes under a
home directory, with their PIDs and addresses in <home>/cluster.json."""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..errors import ClusterError
from ..exec.daemon import alive, spawn_daemon, stop
from .etcd import EtcdConfig, find_etcd


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_http(url: str, until: float, pid: int, what: str, log: Path) -> None:
    last = ""
    while time.monotonic() < until:
        if not alive(pid):
            raise ClusterError(f"{what} exited during start-up; see {log}:\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError as e:
            last = str(e)
        time.sleep(0.05)
    raise ClusterError(f"{what} did not answer at {url} in time ({last}); see {log}:\n{_tail(log)}")


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@dataclass
class LocalCluster:
    home: Path
    nodes: int = 1
    node_args: list[str] = field(default_factory=list)
    lease_ttl_s: int = 5
    fsync: bool = True
    env: dict | None = None

    @property
    def state_path(self) -> Path:
        return self.home / "cluster.json"

    def state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def running(self) -> dict | None:
        """The recorded cluster if its etcd and at least one node are alive, else None: a
        cluster that lost a node still runs (the others answer for it)."""
        st = self.state()
        if not st or not alive(st["etcd"]["pid"]):
            return None
        if not any(alive(n["pid"]) for n in st["nodes"]):
            return None
        return st

    def addresses(self) -> list[str]:
        """The API addresses of the recorded nodes that are alive, in the file's order."""
        st = self.state() or {}
        return [n["api"] for n in st.get("nodes", []) if alive(n["pid"])]

    @property
    def address(self) -> str:
        live = self.addresses()
        if not live:
            raise ClusterError(f"no live local cluster under {self.home}; start one with `shoal up`")
        return live[0]

    def up(self, timeout_s: float = 60.0) -> dict:
        """Start etcd and the nodes unless they already run (nodes that died are started
        again under their ids); return the cluster state."""
        st = self.running()
        if st is not None:
            return self._restart_dead_nodes(st, timeout_s)
        if self.state():
            self.down()  # a half-dead earlier cluster: clear it away first
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        until = time.monotonic() + timeout_s
        cfg = EtcdConfig(data_dir=str(self.home / "etcd"), client_port=free_port(), peer_port=free_port(),
                         fsync=self.fsync)
        etcd_log = self.home / "logs" / "etcd.log"
        argv = cfg.argv(find_etcd())
        etcd_pid = spawn_daemon(argv, str(etcd_log), env=self.env)
        st = {"home": str(self.home), "etcd": {"pid": etcd_pid, "url": cfg.client_url,
                                                "data_dir": cfg.data_dir, "argv": argv}, "nodes": [],
              "started_at": time.time()}
        self._save(st)
        try:
            _wait_http(cfg.client_url + "/health", until, etcd_pid, "etcd", etcd_log)
            for i in range(self.nodes):
                st["nodes"].append(self._start_node(cfg.client_url, f"node-{i + 1}"))
                self._save(st)
            for n in st["nodes"]:
                _wait_http(n["api"] + "/v1/health", until, n["pid"], f"node {n['id']}", Path(n["log"]))
        except BaseException:
            self.down()
            raise
        return st

    def _restart_dead_nodes(self, st: dict, timeout_s: float) -> dict:
        dead = [i for i, n in enumerate(st["nodes"]) if not alive(n["pid"])]
        for i in dead:
            st["nodes"][i] = self._start_node(st["etcd"]["url"], st["nodes"][i]["id"])
            self._save(st)
        until = time.monotonic() + timeout_s
        for i in dead:
            n = st["nodes"][i]
            _wait_http(n["api"] + "/v1/health", until, n["pid"], f"node {n['id']}", Path(n["log"]))
        return st

    def _start_node(self, etcd_url: str, node_id: str, node_args: list[str] | None = None) -> dict:
        port = free_port()
        log = self.home / "logs" / f"{node_id}.log"
        argv = [sys.executable, "-m", "shoal", "node", "--etcd", etcd_url, "--name", node_id,
                "--api-port", str(port), "--home", str(self.home), "--lease-ttl", str(self.lease_ttl_s),
                *(self.node_args if node_args is None else node_args)]
        pid = spawn_daemon(argv, str(log), env=self.env)
        return {"id": node_id, "pid": pid, "api": f"http://127.0.0.1:{port}", "log": str(log)}

    def add_node(self, node_id: str | None = None, node_args: list[str] | None = None,
                 timeout_s: float = 30.0) -> dict:
        """Start one more node (with its own node_args, if given) and wait until it answers."""
        st = self.state()
        if st is None:
            raise ClusterError(f"no local cluster under {self.home}")
        n = self._start_node(st["etcd"]["url"], node_id or f"node-{len(st['nodes']) + 1}", node_args)
        st["nodes"].append(n)
        self._save(st)
        _wait_http(n["api"] + "/v1/health", time.monotonic() + timeout_s, n["pid"], f"node {n['id']}", Path(n["log"]))
        return n

    def stop_etcd(self, grace_s: float = 10.0) -> None:
        """Stop only etcd (the nodes keep running and must ride it out)."""
        st = self.state()
        stop(st["etcd"]["pid"], grace_s)

    def start_etcd(self, timeout_s: float = 30.0) -> None:
        """Start etcd again on the same data directory and ports."""
        st = self.state()
        log = self.home / "logs" / "etcd.log"
        st["etcd"]["pid"] = spawn_daemon(st["etcd"]["argv"], str(log), env=self.env)
        self._save(st)
        _wait_http(st["etcd"]["url"] + "/health", time.monotonic() + timeout_s, st["etcd"]["pid"], "etcd", log)

    def kill_node(self, node_id: str, sig: int = 9) -> dict:
        """Kill one node's process (SIGKILL by default) and wait until it is gone."""
        st = self.state()
        n = next(n for n in st["nodes"] if n["id"] == node_id)
        stop(n["pid"], grace_s=5.0, sig=sig)
        return n

    def down(self, grace_s: float = 10.0) -> bool:
        """Stop the nodes, then etcd. True if anything was running."""
        st = self.state()
        if not st:
            return False
        was = False
        for n in st.get("nodes", []):
            if alive(n["pid"]):
                os.kill(n["pid"], 15)
        for n in st.get("nodes", []):
            was |= stop(n["pid"], grace_s)
        was |= stop(st["etcd"]["pid"], grace_s)
        self.state_path.unlink(missing_ok=True)
        return was

    def destroy(self) -> None:
        self.down()
        shutil.rmtree(self.home, ignore_errors=True)

    def _save(self, st: dict) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(st, indent=2))
        tmp.replace(self.state_path)
