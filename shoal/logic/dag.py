"""DAG decisions: a new task's state from its dependencies' states, what a finished
dependency does to a waiting dependent, which dependents a cascade moves, and cycle
checks. Pure; the store reads the records and commits."""
from __future__ import annotations

from ..model import TaskRecord, TaskState

DONE_OK = frozenset({TaskState.succeeded})
DONE_BAD = frozenset({TaskState.failed, TaskState.cancelled, TaskState.upstream_failed})


def initial_state(deps: dict[str, TaskState], allow_failed: bool) -> tuple[TaskState, int, str | None]:
    """(state, dependencies still to finish, reason) for a task submitted after `deps`."""
    bad = sorted(d for d, s in deps.items() if s in DONE_BAD)
    if bad and not allow_failed:
        return TaskState.upstream_failed, 0, f"dependency {bad[0]} ended {deps[bad[0]].value}"
    left = sum(1 for s in deps.values() if s not in DONE_OK and s not in DONE_BAD)
    return (TaskState.waiting if left else TaskState.queued), left, None


def dependency_finished(dependent: TaskRecord, dep_id: str, dep_state: TaskState,
                        now: float) -> TaskRecord:
    """A dependency of a waiting task ended: count it off; queue the task when none is
    left, or fail it upstream when a dependency failed (unless failures are allowed)."""
    if dependent.state != TaskState.waiting:
        return dependent
    if dep_state in DONE_BAD and not dependent.spec.allow_failed_deps:
        return dependent.model_copy(update={
            "state": TaskState.upstream_failed, "finished_at": now, "deps_left": 0,
            "reason": f"dependency {dep_id} ended {dep_state.value}"})
    left = max(0, dependent.deps_left - 1)
    update = {"deps_left": left}
    if left == 0:
        update["state"] = TaskState.queued
    return dependent.model_copy(update=update)


def cascades(record: TaskRecord) -> bool:
    """Whether a task's record moves its dependents: it ended, and something waits on it."""
    return record.is_final and bool(record.dependents)


def dependents_to_read(frontier: list[TaskRecord], seen: set[str]) -> list[str]:
    """The dependents of the tasks in `frontier` not already moved (`seen`), once each."""
    return list(dict.fromkeys(d for f in frontier for d in f.dependents if d not in seen))


def cascade_wave(frontier: list[TaskRecord], current: dict[str, TaskRecord],
                 now: float) -> dict[str, TaskRecord]:
    """One wave of a cascade: the tasks in `frontier` just ended; return the new records
    of those of their dependents that change. `current` holds the dependents as read (one
    missing from it is gone and left alone); a dependent of several frontier tasks counts
    each of them off in turn. The next wave starts from the changed ones that `cascades`."""
    updated: dict[str, TaskRecord] = {}
    for f in frontier:
        for d in f.dependents:
            if d not in current:
                continue
            updated[d] = dependency_finished(updated.get(d) or current[d], f.id, f.state, now)
    return {d: new for d, new in updated.items() if new != current[d]}


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
