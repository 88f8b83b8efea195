"""What stands in for a future inside a function task's arguments. The worker swaps
each one for the result of the task it names. Kept tiny: workers import it."""
from __future__ import annotations


class FutureRef:
    __slots__ = ("task_id",)

    def __init__(self, task_id: str):
        self.task_id = task_id

    def __reduce__(self):
        return (FutureRef, (self.task_id,))

    def __repr__(self) -> str:
        return f"FutureRef({self.task_id!r})"


def swap_refs(value, resolve, depth: int = 0):
    """`value` with every FutureRef replaced by resolve(task_id), looking inside lists,
    tuples, sets and dict values (two levels deep, like Dask and Ray's top-level args)."""
    if isinstance(value, FutureRef):
        return resolve(value.task_id)
    if depth >= 2:
        return value
    if isinstance(value, list):
        return [swap_refs(v, resolve, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(swap_refs(v, resolve, depth + 1) for v in value)
    if isinstance(value, dict):
        return {k: swap_refs(v, resolve, depth + 1) for k, v in value.items()}
    return value
