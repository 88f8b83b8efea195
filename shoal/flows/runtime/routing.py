"""Which downstream instance each record goes to. Decisions only: the instance sends."""
from __future__ import annotations

import polars as pl

from .records import BadRecords, to_frame
from ...logic.partition import partition_frame, partition_text, range_partition
from ..spec import EdgeSpec


class Router:
    def __init__(self, edge: EdgeSpec, targets: int, sep: str, sender_index: int = 0,
                 key: list[int] | None = None, bounds: list[str] | None = None):
        self.edge = edge
        self.bounds = bounds or []
        self.key = list(key) if key else list(edge.key)   # fields of the hash key in what is sent
        self.n = targets
        self.sep = sep
        self.next = sender_index % targets    # senders start apart, so scatter spreads at once
        self.bad = BadRecords()      # records lacking the key field, dropped

    def route(self, batch) -> list[tuple[int, object]]:
        """(target instance, batch) pairs for one batch."""
        kind = self.edge.edge
        if kind in ("collect", "merge_sorted") or self.n == 1:
            return [(0, batch)]
        if kind == "broadcast":
            return [(i, batch) for i in range(self.n)]
        if kind == "scatter":
            i = self.next
            self.next = (i + 1) % self.n
            return [(i, batch)]
        if kind == "range":
            return self._by_range(batch)
        if isinstance(batch, pl.DataFrame):
            df, bad = to_frame(batch, self.sep, max(self.key))
            self.bad.merge(bad)
            parts = partition_frame(df, self.key, self.n)
            return [(i, p) for i, p in enumerate(parts) if p.height]
        parts, bad, examples = partition_text(batch, self.key, self.sep, self.n)
        if bad:
            self.bad.add(list(examples), bad)
        return [(i, p) for i, p in enumerate(parts) if p]

    def _by_range(self, batch) -> list[tuple[int, object]]:
        df, bad = to_frame(batch, self.sep, self.key[0])
        self.bad.merge(bad)
        part = range_partition(df.get_column(df.columns[self.key[0] - 1]), self.bounds)
        df = df.with_columns(pl.Series("__part", part))
        return [(int(i), g.drop("__part")) for (i,), g in df.partition_by("__part", as_dict=True).items()]
