"""Sort order of records, and the k-way merge of streams already in that order.

Keys compare field by field. Text compares bytewise (as `LC_ALL=C sort`); numeric keys
compare as numbers, and a value that is not a number sorts as the smallest (first, or last
when reversed). `reverse` turns the whole order around. Records with equal keys keep their
order: the order they arrived in, and in a merge, lower input numbers first.
"""
from __future__ import annotations

from collections import deque

import polars as pl

from .records import Batch, BadRecords, concat_frames, to_frame

KEY_PREFIX = "__k"


def key_names(key: list[int]) -> list[str]:
    return [f"{KEY_PREFIX}{i}" for i in range(len(key))]


def with_sort_keys(df: pl.DataFrame, key: list[int], numeric: bool) -> pl.DataFrame:
    """The frame (columns "1", "2", ...) plus its sort key columns."""
    exprs = []
    for name, k in zip(key_names(key), key):
        col = pl.col(str(k))
        if numeric:
            col = col.cast(pl.Float64, strict=False).fill_nan(float("-inf")).fill_null(float("-inf"))
        else:
            col = col.cast(pl.Utf8)
        exprs.append(col.alias(name))
    return df.with_columns(exprs)


def sort_keyed(df: pl.DataFrame, nkeys: int, reverse: bool) -> pl.DataFrame:
    """Stable sort of a frame that has its sort key columns."""
    names = [f"{KEY_PREFIX}{i}" for i in range(nkeys)]
    return df.lazy().sort(names, descending=reverse, maintain_order=True).collect()


def drop_keys(df: pl.DataFrame) -> pl.DataFrame:
    """The record columns "1", "2", ... in order, without the sort key columns."""
    cols = sorted((c for c in df.columns if not c.startswith(KEY_PREFIX)), key=int)
    return df.select(cols)


class SortedMerge:
    """Merges inputs that each deliver records in sort order into one stream in that order.

    push() batches as they come, end() an input when it has no more, and pop() whatever
    can already be emitted: records up to the smallest of the last keys buffered from the
    inputs that have not ended (records equal to it only from inputs that no lower live
    input could still tie with). wanted() names the inputs that must deliver before pop()
    can emit anything."""

    def __init__(self, inputs: int, key: list[int], numeric: bool = False, reverse: bool = False,
                 sep: str = "\t"):
        if inputs < 1:
            raise ValueError(f"SortedMerge needs at least one input (got {inputs})")
        self.key = list(key)
        self.numeric = numeric
        self.reverse = reverse
        self.sep = sep
        self.bad = BadRecords()
        self._names = key_names(self.key)
        self._buf: list[deque[pl.DataFrame]] = [deque() for _ in range(inputs)]
        self._rows = [0] * inputs
        self._ended = [False] * inputs

    def push(self, i: int, batch: Batch) -> None:
        """A batch from input i: in sort order, and not before anything input i sent
        earlier."""
        df, bad = to_frame(batch, self.sep, max(self.key))
        self.bad.merge(bad)
        if df.height:
            self.push_keyed(i, with_sort_keys(df, self.key, self.numeric))

    def push_keyed(self, i: int, df: pl.DataFrame) -> None:
        """Like push, for a frame that already has its sort key columns."""
        if self._ended[i]:
            raise ValueError(f"input {i} has ended")
        if df.height:
            self._buf[i].append(df)
            self._rows[i] += df.height

    def end(self, i: int) -> None:
        self._ended[i] = True

    @property
    def done(self) -> bool:
        """Every input has ended and everything has been popped."""
        return all(self._ended) and not any(self._rows)

    def buffered_rows(self) -> int:
        return sum(self._rows)

    def wanted(self) -> set[int]:
        return {i for i, ended in enumerate(self._ended) if not ended and not self._rows[i]}

    def pop(self) -> list[pl.DataFrame]:
        """Everything that can now be emitted, in order (one frame, or none)."""
        merged = self.pop_keyed()
        return [drop_keys(merged)] if merged is not None else []

    def pop_keyed(self) -> pl.DataFrame | None:
        """Like pop, keeping the sort key columns; None when nothing can be emitted."""
        if self.wanted():
            return None
        live = [i for i, ended in enumerate(self._ended) if not ended]
        bound, first_at_bound = None, len(self._buf)
        if live:
            lasts = {i: self._last_key(i) for i in live}
            bound = max(lasts.values()) if self.reverse else min(lasts.values())
            first_at_bound = min(i for i in live if lasts[i] == bound)
        pieces = []
        for i, buf in enumerate(self._buf):
            # ties go to lower inputs first: past the first live input that may still send
            # more records equal to the bound, only records before the bound can go
            taken = self._take(i, bound, inclusive=i <= first_at_bound) if buf else []
            if taken:
                pieces.append(taken)
        if not pieces:
            return None
        if len(pieces) == 1:
            return concat_frames(pieces[0])
        frames = [f for piece in pieces for f in piece]
        return sort_keyed(concat_frames(frames), len(self.key), self.reverse)

    def _last_key(self, i: int) -> tuple:
        last = self._buf[i][-1]
        return last.select(self._names).row(last.height - 1)

    def _row_key(self, df: pl.DataFrame, r: int) -> tuple:
        return df.select(self._names).row(r)

    def _after(self, a: tuple, bound: tuple, inclusive: bool) -> bool:
        """Whether key a must wait: it comes after bound in the sort order (or is equal
        to it, when not inclusive)."""
        if inclusive:
            return a < bound if self.reverse else a > bound
        return a <= bound if self.reverse else a >= bound

    def _take(self, i: int, bound: tuple | None, inclusive: bool) -> list[pl.DataFrame]:
        """Remove and return input i's buffered rows up to bound (all when None)."""
        buf, out = self._buf[i], []
        while buf:
            df = buf[0]
            if bound is None or not self._after(self._row_key(df, df.height - 1), bound, inclusive):
                out.append(buf.popleft())
                self._rows[i] -= df.height
                continue
            lo, hi = 0, df.height          # first row that must wait
            keys = df.select(self._names)
            while lo < hi:
                mid = (lo + hi) // 2
                if self._after(keys.row(mid), bound, inclusive):
                    hi = mid
                else:
                    lo = mid + 1
            if lo:
                out.append(df.slice(0, lo))
                buf[0] = df.slice(lo)
                self._rows[i] -= lo
            break
        return out
