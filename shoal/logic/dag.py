"""DAG decisions: a new task's state from its dependencies' states, recording its edges in
chunks, what an ended dependency does to a waiting dependent, how much of a cascade goes
in the ending transaction, and cycle checks. Pure; the store reads and commits.

The edges live apart from the task records: `deps/<dependency>/<dependent>` per edge,
and `waits/<dependent>` (a `Wait`) while a dependent waits. So a task may depend on
10,000 others, or have 10,000 dependents, without any record growing, and an ended
dependency touches only small keys until a dependent settles (is queued or fails)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..model import TaskRecord, TaskState

DONE_OK = frozenset({TaskState.succeeded})
DONE_BAD = frozenset({TaskState.failed, TaskState.cancelled, TaskState.upstream_failed})

# Edges consumed in the transaction that ends a task (the rest, through a marker, in
# chunks): each edge costs up to 5 ops and 3 compares, and etcd takes 128 ops a
# transaction by default.
INLINE_EDGES = 16
# Edges consumed by one transaction of a marker's chunked cascade.
CHUNK_EDGES = 24
# Dependencies recorded by one transaction of a submit (a compare and a put each).
REGISTER_CHUNK = 100
# Bytes of settled records one cascade transaction may put (etcd takes 1.5 MiB a request).
CASCADE_BYTES = 512 * 1024


@dataclass(frozen=True)
class Wait:
    """A waiting task's counters, kept in `waits/<task>`, apart from its record."""
    left: int            # dependencies not yet counted off (recorded or not)
    recorded: int        # how many of its dependencies (in order, once each) are recorded
    total: int
    allow_failed: bool = False

    def as_dict(self) -> dict:
        return {"left": self.left, "recorded": self.recorded, "total": self.total,
                "allow_failed": self.allow_failed}

    @classmethod
    def from_dict(cls, d: dict) -> "Wait":
        return cls(int(d["left"]), int(d["recorded"]), int(d["total"]), bool(d.get("allow_failed")))


@dataclass(frozen=True)
class Move:
    """Where a waiting task stands after some of its dependencies were counted off:
    still `waiting` (with `wait`), or settled: `queued`, or `upstream_failed` (`reason`)."""
    state: TaskState
    wait: Wait | None = None
    reason: str | None = None

    @property
    def settled(self) -> bool:
        return self.state != TaskState.waiting


def dependencies(spec_depends_on: list[str]) -> list[str]:
    """A task's dependencies, once each, in the order given: the order they are recorded."""
    return list(dict.fromkeys(spec_depends_on))


def initial_state(deps: dict[str, TaskState], allow_failed: bool) -> tuple[TaskState, int, str | None]:
    """(state, dependencies still to finish, reason) for a task submitted after `deps`."""
    bad = sorted(d for d, s in deps.items() if s in DONE_BAD)
    if bad and not allow_failed:
        return TaskState.upstream_failed, 0, f"dependency {bad[0]} ended {deps[bad[0]].value}"
    left = sum(1 for s in deps.values() if s not in DONE_OK and s not in DONE_BAD)
    return (TaskState.waiting if left else TaskState.queued), left, None


def count_off(wait: Wait, dep_id: str, dep_state: TaskState | None) -> Move:
    """One dependency of a waiting task ended in `dep_state` (None: it is gone)."""
    if dep_state is None or (dep_state in DONE_BAD and not wait.allow_failed):
        how = "is gone" if dep_state is None else f"ended {dep_state.value}"
        return Move(TaskState.upstream_failed, reason=f"dependency {dep_id} {how}")
    left = max(0, wait.left - 1)
    if left == 0 and wait.recorded >= wait.total:
        return Move(TaskState.queued)
    return Move(TaskState.waiting, replace(wait, left=left))


def record_chunk(wait: Wait, chunk: list[str], states: dict[str, TaskState]) -> tuple[Move, list[str]]:
    """Record the next dependencies of a waiting task (`chunk`, with their states just
    read; one missing from `states` is gone): the ended ones are counted off now, the
    others get an edge. Returns the task's move and the dependencies to put edges for."""
    wait = replace(wait, recorded=wait.recorded + len(chunk))
    edges: list[str] = []
    for d in chunk:
        state = states.get(d)
        if state is not None and state not in DONE_OK and state not in DONE_BAD:
            edges.append(d)
            continue
        move = count_off(wait, d, state)
        if move.settled:     # failed upstream (no edge needed), or the last one counted off
            return move, [] if move.state == TaskState.upstream_failed else edges
        wait = move.wait
    return Move(TaskState.waiting, wait), edges


def consume(edges: list[tuple[str, TaskState, str]], waits: dict[str, Wait | None]
            ) -> dict[str, Move]:
    """Consume ended dependencies' edges, in order: (dependency, its end state,
    dependent). `waits` holds each dependent's counters as read (None: it no longer
    waits: cancelled, failed, or gone; its edge is consumed with no change). Returns the
    moves of the dependents that change; one reached by several edges folds them in turn."""
    moves: dict[str, Move] = {}
    for dep, state, d in edges:
        move = moves.get(d)
        if move is not None and move.settled:
            continue
        wait = move.wait if move is not None else waits.get(d)
        if wait is None:
            continue
        moves[d] = count_off(wait, dep, state)
    return moves


def settle(record: TaskRecord, move: Move, now: float) -> TaskRecord:
    """The record of a waiting task its move settles: queued, or failed upstream."""
    if move.state == TaskState.queued:
        return record.model_copy(update={"state": TaskState.queued, "deps_left": 0})
    return record.model_copy(update={"state": TaskState.upstream_failed, "finished_at": now,
                                     "deps_left": 0, "reason": move.reason})


def inline(edges: int, budget: int = INLINE_EDGES) -> bool:
    """Whether a task's `edges` are consumed in the transaction that ends it (few), or
    through a marker in chunks (many)."""
    return edges <= budget


def pack(edge_counts: list[int], budget: int = INLINE_EDGES, most: int = 8) -> list[list[int]]:
    """Group the ends of tasks with dependents (their edge counts, in order) into as few
    transactions as fit: at most `most` ends, and at most `budget` edges consumed inline,
    a group. A task with more edges than the budget goes through a marker, which costs a
    group no edges. Returns the groups as indices into `edge_counts`."""
    groups: list[list[int]] = []
    group: list[int] = []
    used = 0
    for i, n in enumerate(edge_counts):
        cost = n if inline(n, budget) else 0
        if group and (len(group) >= most or used + cost > budget):
            groups.append(group)
            group, used = [], 0
        group.append(i)
        used += cost
    return groups + [group] if group else groups


def find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """A cycle in `node -> its dependencies`, as the nodes along it (first repeated at
    the end), or None. Iterative, so a long chain cannot hit the recursion limit."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in edges:
        if root in state:
            continue
        path: list[str] = []
        todo: list[tuple[str, int]] = [(root, 0)]
        while todo:
            node, i = todo.pop()
            if i == 0:
                state[node] = 1
                path.append(node)
            deps = [d for d in edges.get(node, ()) if d in edges]
            if i < len(deps):
                todo.append((node, i + 1))
                d = deps[i]
                if state.get(d) == 1:
                    return path[path.index(d):] + [d]
                if d not in state:
                    todo.append((d, 0))
            else:
                state[node] = 2
                path.pop()
    return None
