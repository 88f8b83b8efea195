"""Placement: does a task fit a node, and which queued tasks should a node claim now."""
from __future__ import annotations

from dataclasses import dataclass

from ..model import NodeInfo, TaskSpec
from ..model.sizes import format_size


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
                        self.gpus - spec.gpus, self.slots - spec.slots, self.disk - spec.disk)


def has_labels(required: list[str], offered: list[str]) -> bool:
    """Each required label is offered: 'k=v' must match exactly, bare 'k' matches any k or k=v."""
    keys = {label.split("=", 1)[0] for label in offered}
    exact = set(offered)
    return all((r in exact) if "=" in r else (r in keys) for r in required)


def fits(spec: TaskSpec, free: Capacity, labels: list[str]) -> bool:
    # a tiny epsilon keeps 0.1 + 0.2 style float sums from refusing an exact fit
    return (free.slots >= spec.slots and spec.cpus <= free.cpus + 1e-9 and spec.memory <= free.memory
            and spec.gpus <= free.gpus and (spec.disk == 0 or free.disk == 0 or spec.disk <= free.disk)
            and has_labels(spec.labels, labels))


def plan_claims(candidates, free: Capacity, labels: list[str], now: float, limit: int | None = None,
                total: Capacity | None = None, extra: int = 0) -> tuple[list[str], float | None]:
    """Ids to claim, in queue order, and the earliest time a task held back by its retry
    backoff becomes claimable (None if none is).

    `candidates` yields (id, spec, not_before) in claim order and is read only as far as
    needed, so a deep queue costs nothing once the node is full. A task that does not fit
    is skipped so smaller ones behind it can still run. Beyond what fits `free`, up to
    `extra` more are taken if each fits the whole node (`total`): claimed ahead, to start
    as soon as a slot frees."""
    chosen: list[str] = []
    soonest = None
    for task_id, spec, not_before in candidates:
        if (limit is not None and len(chosen) >= limit) or (free.slots < 1 and extra < 1):
            break
        if not_before is not None and not_before > now:
            soonest = not_before if soonest is None else min(soonest, not_before)
            continue
        if fits(spec, free, labels):
            free = free.minus(spec)
        elif extra >= 1 and total is not None and fits(spec, total, labels):
            extra -= 1
        else:
            continue
        chosen.append(task_id)
    return chosen, soonest


def choose_claims(candidates, free: Capacity, labels: list[str], now: float, limit: int) -> list[str]:
    """The ids plan_claims picks, with nothing claimed ahead."""
    return plan_claims(candidates, free, labels, now, limit)[0]


def claim_delay_s(running: int, slots: int, base_s: float = 0.004) -> float:
    """Load-proportional pause before claiming: an idle node claims at once, a busy one
    waits a little so idler nodes win the race for new work."""
    if slots <= 0:
        return base_s
    return base_s * min(running, slots) / slots


def unplaceable(spec: TaskSpec, nodes: list[NodeInfo]) -> str | None:
    """Why no live node could ever run `spec`, judged from what each node offers in all
    (not what is free now), or None when one could. No nodes at all says nothing: one may
    be starting. Each want no node meets is named with the most any node offers; if every
    want is met by some node but no node meets them all, that is said instead."""
    if not nodes:
        return None
    whole = [(n, Capacity(n.cpus, n.memory, n.gpus, n.slots, n.disk)) for n in nodes]
    if any(fits(spec, cap, n.labels) for n, cap in whole):
        return None
    most = max(nodes, key=lambda n: n.cpus).cpus
    problems = []
    if all(spec.cpus > n.cpus + 1e-9 for n in nodes):
        problems.append(f"no node has {spec.cpus:g} cpus; the largest offers {most:g}")
    if spec.memory and all(spec.memory > n.memory for n in nodes):
        problems.append(f"no node has {format_size(spec.memory)} of memory; the largest offers "
                        f"{format_size(max(n.memory for n in nodes))}")
    if spec.gpus and all(spec.gpus > n.gpus for n in nodes):
        problems.append(f"no node has {spec.gpus} gpus; the most any offers is {max(n.gpus for n in nodes)}")
    if spec.disk and all(n.disk and spec.disk > n.disk for n in nodes):
        problems.append(f"no node has {format_size(spec.disk)} of disk; the largest offers "
                        f"{format_size(max(n.disk for n in nodes))}")
    for label in spec.labels:
        if not any(has_labels([label], n.labels) for n in nodes):
            problems.append(f"no node has label {label}")
    if problems:
        return "; ".join(problems)
    return "no single node offers all it asks for together (" + _wants(spec) + ")"


def _wants(spec: TaskSpec) -> str:
    wants = [f"{spec.cpus:g} cpus"]
    if spec.memory:
        wants.append(f"{format_size(spec.memory)} of memory")
    if spec.gpus:
        wants.append(f"{spec.gpus} gpus")
    if spec.disk:
        wants.append(f"{format_size(spec.disk)} of disk")
    wants += [f"label {label}" for label in spec.labels]
    return ", ".join(wants)
