"""Placement: does a task fit a node, and which queued tasks should a node claim now."""
from __future__ import annotations

from dataclasses import dataclass

from ..model import TaskSpec


@dataclass(frozen=True)
class Capacity:
    """Free (or total) resources of a node."""
    cpus: float
    memory: int
    gpus: int
    slots: int
    disk: int = 0

    def minus(self, spec: TaskSpec) -> "Capacity":
        return Capacity(self.cpus - spec.cpus, self.memory - spec.memory,
                        self.gpus - spec.gpus, self.slots - 1, self.disk - spec.disk)

    def plus(self, spec: TaskSpec) -> "Capacity":
        return Capacity(self.cpus + spec.cpus, self.memory + spec.memory,
                        self.gpus + spec.gpus, self.slots + 1, self.disk + spec.disk)


def has_labels(required: list[str], offered: list[str]) -> bool:
    """Each required label is offered: 'k=v' must match exactly, bare 'k' matches any k or k=v."""
    keys = {label.split("=", 1)[0] for label in offered}
    exact = set(offered)
    return all((r in exact) if "=" in r else (r in keys) for r in required)


def fits(spec: TaskSpec, free: Capacity, labels: list[str]) -> bool:
    # a tiny epsilon keeps 0.1 + 0.2 style float sums from refusing an exact fit
    return (free.slots >= 1 and spec.cpus <= free.cpus + 1e-9 and spec.memory <= free.memory
            and spec.gpus <= free.gpus and (spec.disk == 0 or free.disk == 0 or spec.disk <= free.disk)
            and has_labels(spec.labels, labels))


def could_ever_fit(spec: TaskSpec, total: Capacity, labels: list[str]) -> bool:
    return fits(spec, Capacity(total.cpus, total.memory, total.gpus, max(total.slots, 1), total.disk), labels)


def choose_claims(candidates: list[tuple[str, TaskSpec, float | None]], free: Capacity,
                  labels: list[str], now: float, limit: int) -> list[str]:
    """Ids to claim, in queue order, that fit together into `free`.

    `candidates` are (id, spec, not_before) in claim order. A task that does not fit
    is skipped so smaller ones behind it can still run (no head-of-line blocking
    on one node; a big task waits for a node it fits)."""
    chosen = []
    for task_id, spec, not_before in candidates:
        if len(chosen) >= limit or free.slots < 1:
            break
        if not_before is not None and not_before > now:
            continue
        if fits(spec, free, labels):
            chosen.append(task_id)
            free = free.minus(spec)
    return chosen


def claim_delay_s(running: int, slots: int, base_s: float = 0.004) -> float:
    """Load-proportional pause before claiming: an idle node claims at once, a busy one
    waits a little so idler nodes win the race for new work."""
    if slots <= 0:
        return base_s
    return base_s * min(running, slots) / slots
