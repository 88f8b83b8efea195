"""A node's local view of the queue, kept from one range read plus a watch. It only
suggests what to claim; the claim transaction checks the truth."""
from __future__ import annotations

from itertools import islice

from sortedcontainers import SortedDict

from ..model import TaskRecord
from ..store.kv import KV
from ..store.records import decode


class QueueView:
    def __init__(self) -> None:
        self._entries: SortedDict = SortedDict()   # queue key -> KV
        self._records: dict[bytes, TaskRecord] = {}
        self.loaded_rev = 0
        self.complete = True      # False when the last load hit its limit

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, kvs: list[KV], revision: int, more: bool) -> None:
        self._entries = SortedDict((kv.key, kv) for kv in kvs)
        self._records = {}
        self.loaded_rev = revision
        self.complete = not more

    def apply(self, events) -> bool:
        """Apply watch events; True if something became claimable."""
        added = False
        for kind, kv, _prev in events:
            if kv.mod_revision <= self.loaded_rev:
                continue  # already in (or out of) the loaded snapshot
            if kind == "PUT":
                self._entries[kv.key] = kv
                self._records.pop(kv.key, None)
                added = True
            else:
                self.discard(kv.key)
        return added

    def discard(self, key: bytes, revision: int | None = None) -> None:
        """Drop an entry; with `revision`, only if it is still that version (a newer one the
        watch delivered meanwhile, e.g. while a claim on the old one was in flight, stays)."""
        if revision is not None and (kv := self._entries.get(key)) is not None and kv.mod_revision != revision:
            return
        self._entries.pop(key, None)
        self._records.pop(key, None)

    def head(self, n: int):
        """The first n entries in claim order, as (key, kv, record)."""
        for key in islice(self._entries.keys(), n):
            kv = self._entries[key]
            rec = self._records.get(key)
            if rec is None:
                try:
                    rec = self._records[key] = decode(kv.value)
                except ValueError:
                    continue  # written by an incompatible version; leave it to others
            yield key, kv, rec
