"""Applying a DAG cascade: when a task ends, the compares and puts that move its
dependents (and theirs in turn), to commit in the transaction that ends it. What moves
where is decided in logic/dag.py; this module reads the records and builds the ops."""
from __future__ import annotations

import time

from ..logic import dag
from ..model import TaskRecord
from ..model.keys import Keys
from .kv import Etcd, cmp
from .records import put_record_ops, read_records


class DagStore:
    def __init__(self, kv: Etcd, keys: Keys):
        self.kv = kv
        self.keys = keys

    async def cascade(self, finished: TaskRecord, touched: set[str] | None = None
                      ) -> tuple[list, list, set[str]] | None:
        """Compares and ops that move the dependents of a task that just ended (and, when
        they fail upstream, theirs in turn), to commit in the same transaction. Returns
        None if a dependent is already in `touched` (another change in this transaction
        moves it: try again next transaction)."""
        compares, ops, seen = [], [], set()
        frontier = [finished] if dag.cascades(finished) else []
        while frontier:
            want = dag.dependents_to_read(frontier, seen)
            if not want:
                break
            if touched is not None and touched.intersection(want):
                return None
            current = await read_records(self.kv, self.keys, want)
            changed = dag.cascade_wave(frontier, {d: rec for d, (rec, _) in current.items()}, time.time())
            frontier = []
            retention = 0
            for d, new in changed.items():
                seen.add(d)
                compares.append(cmp(self.keys.task(d), "MOD", current[d][1]))
                if new.is_final and not retention:
                    retention = await self.kv.retention_lease()
                ops += put_record_ops(self.keys, new, lease=retention if new.is_final else 0)
                if dag.cascades(new):
                    frontier.append(new)
        return compares, ops, seen
