"""The etcd key layout, in one place. Every key is under a configurable prefix."""
from __future__ import annotations

from dataclasses import dataclass


def queue_rank(priority: int) -> str:
    """Higher priority sorts first: 999 -> '0000', -999 -> '1998'."""
    return f"{999 - priority:04d}"


@dataclass(frozen=True)
class Keys:
    prefix: str = "/shoal/"

    def _k(self, *parts: str) -> bytes:
        return (self.prefix + "/".join(parts)).encode()

    def task(self, task_id: str) -> bytes:
        return self._k("tasks", task_id)

    @property
    def tasks(self) -> bytes:
        return self._k("tasks", "")

    def queue(self, priority: int, task_id: str) -> bytes:
        return self._k("queue", queue_rank(priority), task_id)

    @property
    def queues(self) -> bytes:
        return self._k("queue", "")

    def running(self, node: str, task_id: str) -> bytes:
        return self._k("running", node, task_id)

    def running_on(self, node: str) -> bytes:
        return self._k("running", node, "")

    @property
    def all_running(self) -> bytes:
        return self._k("running", "")

    def cancel(self, node: str, task_id: str) -> bytes:
        return self._k("cancel", node, task_id)

    def cancels_for(self, node: str) -> bytes:
        return self._k("cancel", node, "")

    def edge(self, dependency: str, dependent: str) -> bytes:
        """A DAG edge: `dependent` waits on `dependency` (deleted or marked consumed once
        the dependency's end is counted off)."""
        return self._k("deps", dependency, dependent)

    def edges_of(self, dependency: str) -> bytes:
        return self._k("deps", dependency, "")

    def waits(self, task_id: str) -> bytes:
        """A waiting task's counters (dependencies left, recorded), apart from its record."""
        return self._k("waits", task_id)

    @property
    def all_waits(self) -> bytes:
        return self._k("waits", "")

    def cascade(self, task_id: str) -> bytes:
        """Marker: the task ended and some of its dependents are not moved on yet."""
        return self._k("cascades", task_id)

    @property
    def cascades(self) -> bytes:
        return self._k("cascades", "")

    def node(self, node: str) -> bytes:
        return self._k("nodes", node)

    @property
    def nodes(self) -> bytes:
        return self._k("nodes", "")

    def flow(self, run: str) -> bytes:
        return self._k("flows", "runs", run)

    def flow_cancel(self, run: str) -> bytes:
        return self._k("flows", run, "cancel")

    @property
    def flows(self) -> bytes:
        return self._k("flows", "runs", "")

    def flow_endpoint(self, run: str, attempt: int, stage: str, index: int) -> bytes:
        return self._k("flows", run, str(attempt), "ep", stage, str(index))

    def flow_endpoints(self, run: str, attempt: int, stage: str) -> bytes:
        return self._k("flows", run, str(attempt), "ep", stage, "")

    def flow_stats(self, run: str, attempt: int, stage: str, index: int) -> bytes:
        return self._k("flows", run, str(attempt), "stats", stage, str(index))

    def flow_all_stats(self, run: str, attempt: int) -> bytes:
        return self._k("flows", run, str(attempt), "stats", "")

    def flow_outcome(self, run: str, attempt: int, stage: str, index: int) -> bytes:
        return self._k("flows", run, str(attempt), "outcome", stage, str(index))

    def flow_outcomes(self, run: str, attempt: int) -> bytes:
        return self._k("flows", run, str(attempt), "outcome", "")

    def flow_client(self, run: str) -> bytes:
        return self._k("flows", run, "client")

    def election(self, role: str) -> bytes:
        return self._k("elections", role)

    @property
    def elections(self) -> bytes:
        return self._k("elections", "")

    def id_of(self, key: bytes) -> str:
        """The last path element of a key: the task id of queue/running/cancel keys."""
        return key.decode().rsplit("/", 1)[1]

    def node_of_running(self, key: bytes) -> str:
        return key.decode()[len(self.prefix):].split("/")[1]
