"""The built-in operators, as streaming objects: push() batches in, get batches out.

Each operator reads the fields its spec names and treats a record that lacks one as bad
(dropped, counted in `bad`). Operators that must see all input first (count, reduce,
sort, top, distinct) emit at finish(); their output is in a fixed order, so a run gives
the same records in the same order whatever the batches were:

    count, reduce   key fields then the count or value, sorted by key (bytewise)
    top             largest `by` first (smallest with reverse); equal values by record
    distinct        sorted by record (bytewise); with a key, the smallest record per key
    sort            see merge.py; frames of at most batch_rows rows

Combiners (make_combiner) pre-aggregate on the sending side: partial counts, partial
reductions, a partial top k, locally distinct records. The receiving operator is built with
combined_input=True and merges the partials.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import polars as pl

from ...logic.partition import MAX_EXAMPLES
from ..opspec import OpSpec
from .records import (Batch, BadRecords, concat_frames, empty_frame, frame_lines, positional,
                      read_lines, record_text, slices, to_frame, to_text)
from .spill import ExternalSort

_WS = bytes.maketrans(b"\t\r\x0b\x0c ", b"\n\n\n\n\n")
REC = "__r"


@dataclass
class OpContext:
    """What operators of one stage instance share: the field separator, where and past
    what size sort spills, the rows per output frame, and the keys a combiner may hold
    before it sends its partials."""
    sep: str = "\t"
    spill_dir: Path | None = None
    memory_bytes: int = 512 << 20
    batch_rows: int = 1_000_000
    combine_rows: int = 2_000_000


class Operator:
    """Feed batches with push(); call end_port() when an input ends and finish() once
    after every input has ended."""
    inputs: int = 1

    def __init__(self, ctx: OpContext):
        self.ctx = ctx
        self.bad = BadRecords()

    def push(self, batch: Batch, port: int = 0) -> list[Batch]:
        raise NotImplementedError

    def end_port(self, port: int) -> list[Batch]:
        return []

    def finish(self) -> Iterator[Batch]:
        return iter(())

    def close(self) -> None:
        """Release what the operator holds (spill files); safe to call more than once."""

    def _frame(self, batch: Batch, need: int) -> pl.DataFrame:
        df, bad = to_frame(batch, self.ctx.sep, need)
        self.bad.merge(bad)
        return df


def _empty(batch: Batch) -> bool:
    return batch.height == 0 if isinstance(batch, pl.DataFrame) else not batch


# -- pass, words ---------------------------------------------------------------------

class PassOp(Operator):
    def push(self, batch: Batch, port: int = 0) -> list[Batch]:
        return [] if _empty(batch) else [batch]


def split_words(data: bytes) -> pl.DataFrame:
    """One row per word of the text; words are split on runs of ASCII whitespace
    (space, tab, newline, carriage return, vertical tab, form feed)."""
    if not data:
        return empty_frame(1)
    return read_lines(data.translate(_WS), "1", empty_is_null=True).drop_nulls().to_frame()


class WordsOp(Operator):
    def push(self, batch: Batch, port: int = 0) -> list[Batch]:
        df = split_words(to_text(batch, self.ctx.sep))
        return [df] if df.height else []


# -- keyed aggregation: count, reduce, distinct ----------------------------------------

class _Aggregate(Operator):
    """Holds partial results per key; merges them as they pile up. As a combiner, emits
    its partials early once they hold more than combine_rows keys."""

    def __init__(self, ctx: OpContext, combiner: bool):
        super().__init__(ctx)
        self.combiner = combiner
        self._parts: list[pl.DataFrame] = []
        self._rows = 0
        self._merged_rows = 0

    def _partial(self, df: pl.DataFrame) -> pl.DataFrame:
        """A batch's partial result."""
        raise NotImplementedError

    def _merge(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        """Partial results merged into one."""
        raise NotImplementedError

    def _final(self, df: pl.DataFrame) -> pl.DataFrame:
        """The merged result in output order."""
        return df

    def _need(self) -> int:
        raise NotImplementedError

    def push(self, batch: Batch, port: int = 0) -> list[Batch]:
        df = self._frame(batch, self._need())
        if not df.height:
            return []
        part = self._partial(df)
        self._parts.append(part)
        self._rows += part.height
        if len(self._parts) >= 16 or self._rows > max(self.ctx.combine_rows, 2 * self._merged_rows):
            self._consolidate()
            if self.combiner and self._rows > self.ctx.combine_rows:
                return self._flush()
        return []

    def _consolidate(self) -> None:
        if len(self._parts) > 1:
            self._parts = [self._merge(self._parts)]
        self._rows = self._merged_rows = self._parts[0].height if self._parts else 0

    def _flush(self) -> list[Batch]:
        out = [self._parts[0]] if self._parts and self._parts[0].height else []
        self._parts, self._rows, self._merged_rows = [], 0, 0
        return out

    def finish(self) -> Iterator[Batch]:
        self._consolidate()
        if not self._parts:
            return
        if self.combiner:
            yield from self._flush()
            return
        result = positional(self._final(self._parts[0]))
        self._parts = []
        yield from slices(result, self.ctx.batch_rows)


def _key_cols(key: list[int]) -> list[pl.Expr]:
    """Key fields as text, named "1".."m" (an integer 7 and the text "7" are one key)."""
    return [pl.col(str(k)).cast(pl.Utf8).alias(str(i)) for i, k in enumerate(key, 1)]


class CountOp(_Aggregate):
    """Records per key -> key fields, count (Int64)."""

    def __init__(self, ctx: OpContext, key: list[int], combined_input: bool = False,
                 combiner: bool = False):
        super().__init__(ctx, combiner)
        self.key = list(key)
        self.combined = combined_input
        self.m = len(self.key)
        self._names = [str(i) for i in range(1, self.m + 1)]
        self._count = str(self.m + 1)

    def _need(self) -> int:
        return self.m + 1 if self.combined else max(self.key)

    def _partial(self, df: pl.DataFrame) -> pl.DataFrame:
        if self.combined:
            df = df.select([pl.col(n).cast(pl.Utf8) for n in self._names]
                           + [pl.col(self._count).cast(pl.Int64, strict=False)])
            df = self._drop_bad_numbers(df, self._count)
            return self._merge([df])
        return (df.lazy().select(_key_cols(self.key)).group_by(self._names)
                .len(name=self._count).with_columns(pl.col(self._count).cast(pl.Int64)).collect())

    def _drop_bad_numbers(self, df: pl.DataFrame, col: str) -> pl.DataFrame:
        nulls = df.get_column(col).null_count()
        if nulls:
            lacking = df.filter(pl.col(col).is_null())
            self.bad.add(frame_lines(lacking.head(MAX_EXAMPLES), self.ctx.sep), nulls)
            df = df.filter(pl.col(col).is_not_null())
        return df

    def _merge(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        return (pl.concat(frames, how="vertical_relaxed").lazy().group_by(self._names)
                .agg(pl.col(self._count).sum()).collect())

    def _final(self, df: pl.DataFrame) -> pl.DataFrame:
        return df.lazy().sort(self._names).collect()


class ReduceOp(_Aggregate):
    """Per key, the sum, min or max of a numeric field -> key fields, value. Values are
    integers when every value read is an integer, else floats. A value that is not a
    number makes its record bad."""

    def __init__(self, ctx: OpContext, key: list[int], value: int, fn: str,
                 combined_input: bool = False, combiner: bool = False):
        super().__init__(ctx, combiner)
        self.key = list(key)
        self.value = value
        self.fn = fn
        self.combined = combined_input
        self.m = len(self.key)
        self._names = [str(i) for i in range(1, self.m + 1)]
        self._value = str(self.m + 1)

    def _need(self) -> int:
        return self.m + 1 if self.combined else max([*self.key, self.value])

    def _agg(self) -> pl.Expr:
        col = pl.col(self._value)
        return {"sum": col.sum(), "min": col.min(), "max": col.max()}[self.fn]

    def _partial(self, df: pl.DataFrame) -> pl.DataFrame:
        src = self._value if self.combined else str(self.value)
        keys = [pl.col(n).cast(pl.Utf8) for n in self._names] if self.combined else _key_cols(self.key)
        df = df.select(keys + [pl.col(src).alias(self._value)])
        df = self._numbers(df)
        return df.lazy().group_by(self._names).agg(self._agg()).collect()

    def _numbers(self, df: pl.DataFrame) -> pl.DataFrame:
        """The value column as Int64 (all integers) or Float64; bad values dropped."""
        col = df.get_column(self._value)
        if col.dtype.is_integer():
            return df.with_columns(col.cast(pl.Int64))
        if col.dtype.is_float():
            return df.with_columns(col.cast(pl.Float64))
        text = col.cast(pl.Utf8)
        as_float = text.cast(pl.Float64, strict=False)
        if as_float.null_count():
            ok = as_float.is_not_null()
            lacking = df.filter(~ok)
            self.bad.add(frame_lines(lacking.head(MAX_EXAMPLES), self.ctx.sep), lacking.height)
            df, text, as_float = df.filter(ok), text.filter(ok), as_float.filter(ok)
        as_int = text.cast(pl.Int64, strict=False)
        if as_int.null_count() == 0:
            return df.with_columns(as_int.alias(self._value))
        return df.with_columns(as_float.alias(self._value))

    def _merge(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        return (pl.concat(frames, how="vertical_relaxed").lazy().group_by(self._names)
                .agg(self._agg()).collect())

    def _final(self, df: pl.DataFrame) -> pl.DataFrame:
        return df.lazy().sort(self._names).collect()


class DistinctOp(_Aggregate):
    """Unique records; with a key, the smallest record (bytewise) of each key."""

    def __init__(self, ctx: OpContext, key: list[int] | None, combiner: bool = False):
        super().__init__(ctx, combiner)
        self.key = list(key) if key else None
        self._kn = [f"__d{i}" for i in range(len(self.key))] if self.key else [REC]

    def _need(self) -> int:
        return max(self.key) if self.key else 1

    def _partial(self, df: pl.DataFrame) -> pl.DataFrame:
        exprs = [record_text(self.ctx.sep).alias(REC)]
        if self.key:
            exprs += [pl.col(str(k)).cast(pl.Utf8).alias(n) for k, n in zip(self.key, self._kn)]
        return self._merge([df.with_columns(exprs)])

    def _merge(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        lf = concat_frames(frames).lazy() if len(frames) > 1 else frames[0].lazy()
        if self.key:
            lf = lf.sort(REC).unique(subset=self._kn, keep="first", maintain_order=True)
        else:
            lf = lf.unique(subset=[REC], keep="any")
        return lf.collect()

    def _flush(self) -> list[Batch]:
        return [positional(_strip(df)) for df in super()._flush()]

    def _final(self, df: pl.DataFrame) -> pl.DataFrame:
        return _strip(df.lazy().sort(REC).collect())


def _strip(df: pl.DataFrame) -> pl.DataFrame:
    """The record columns "1", "2", ... without helper columns."""
    return df.select(sorted((c for c in df.columns if c.isdigit()), key=int))


# -- top -------------------------------------------------------------------------------

class TopOp(Operator):
    """The k records with the largest `by` field (smallest with reverse); equal values are
    ordered by the whole record, bytewise. With numeric, a `by` that is not a number makes
    its record bad. Its own combiner: a partial top k is merged like any input."""

    def __init__(self, ctx: OpContext, k: int, by: int, numeric: bool = True, reverse: bool = False):
        super().__init__(ctx)
        self.k, self.by, self.numeric, self.reverse = k, by, numeric, reverse
        self._top: pl.DataFrame | None = None

    def _order(self) -> pl.Expr:
        col = pl.col(str(self.by))
        return col.cast(pl.Float64, strict=False) if self.numeric else col.cast(pl.Utf8)

    def push(self, batch: Batch, port: int = 0) -> list[Batch]:
        df = self._frame(batch, self.by)
        if not df.height:
            return []
        v = df.select(self._order()).to_series()
        if self.numeric:
            v = v.fill_nan(None)
        if self.numeric and v.null_count():
            ok = v.is_not_null()
            lacking = df.filter(~ok)
            self.bad.add(frame_lines(lacking.head(MAX_EXAMPLES), self.ctx.sep), lacking.height)
            df, v = df.filter(ok), v.filter(ok)
            if not df.height:
                return []
        if df.height > self.k:
            if self.reverse:
                df = df.filter(v <= v.bottom_k(self.k).max())
            else:
                df = df.filter(v >= v.top_k(self.k).min())
        frames = [df] if self._top is None else [self._top, df]
        self._top = self._best(concat_frames(frames))
        return []

    def _best(self, df: pl.DataFrame) -> pl.DataFrame:
        cols = df.columns
        return (df.lazy().with_columns(self._order().alias("__v"),
                                       record_text(self.ctx.sep).alias(REC))
                .sort(["__v", REC], descending=[not self.reverse, False], maintain_order=True)
                .head(self.k).select(cols).collect())

    def finish(self) -> Iterator[Batch]:
        if self._top is not None and self._top.height:
            yield from slices(self._top, self.ctx.batch_rows)
        self._top = None


# -- sort ------------------------------------------------------------------------------

class SortOp(Operator):
    """All records in key order (see merge.py), spilling to disk past memory_bytes."""

    def __init__(self, ctx: OpContext, key: list[int], numeric: bool = False, reverse: bool = False):
        super().__init__(ctx)
        self.key = list(key)
        self.sorter = ExternalSort(self.key, numeric, reverse, ctx.memory_bytes, ctx.spill_dir,
                                   ctx.batch_rows)

    def push(self, batch: Batch, port: int = 0) -> list[Batch]:
        df = self._frame(batch, max(self.key))
        self.sorter.add(df)
        return []

    def finish(self) -> Iterator[Batch]:
        yield from self.sorter.results()

    def close(self) -> None:
        self.sorter.close()


# -- join ------------------------------------------------------------------------------

class JoinOp(Operator):
    """Hash join of port 0 (left) with port 1 (right) on key = right_key. Output: the left
    fields, then the right fields other than its key fields. The right input is held in
    memory; left batches that arrive before the right input has ended wait for it. A left
    join gives unmatched left records an empty string for each right field (as many as
    the widest right record has; none when the right input was empty)."""
    inputs = 2

    def __init__(self, ctx: OpContext, key: list[int], right_key: list[int], how: str = "inner"):
        super().__init__(ctx)
        self.key, self.right_key, self.how = list(key), list(right_key), how
        self._left: list[pl.DataFrame] = []
        self._right: list[pl.DataFrame] = []
        self._table: pl.DataFrame | None = None          # the right input, once it has ended
        self._rest: list[str] = []                          # its fields other than the key
        self._lk = [f"__l{i}" for i in range(len(self.key))]
        self._rk = [f"__j{i}" for i in range(len(self.key))]

    def push(self, batch: Batch, port: int = 0) -> list[Batch]:
        if port == 1:
            if self._table is not None:
                raise ValueError("join: right input (port 1) pushed after it ended")
            df = self._frame(batch, max(self.right_key))
            if df.height:
                self._right.append(df)
            return []
        df = self._frame(batch, max(self.key))
        if not df.height:
            return []
        if self._table is None:
            self._left.append(df)
            return []
        out = self._join(df)
        return [out] if out.height else []

    def end_port(self, port: int) -> list[Batch]:
        if port != 1 or self._table is not None:
            return []
        right = concat_frames(self._right) if self._right else empty_frame(max(self.right_key))
        self._right = []
        rest = [c for i, c in enumerate(right.columns, 1) if i not in self.right_key]
        self._rest = [f"__v{c}" for c in rest]
        self._table = right.select(
            [pl.col(str(k)).cast(pl.Utf8).alias(n) for k, n in zip(self.right_key, self._rk)]
            + [pl.col(c).alias(n) for c, n in zip(rest, self._rest)]
            + [pl.lit(True).alias("__m")])
        out, self._left = [self._join(df) for df in self._left], []
        return [o for o in out if o.height]

    def _join(self, left: pl.DataFrame) -> pl.DataFrame:
        cols = left.columns
        lf = left.lazy().with_columns(
            [pl.col(str(k)).cast(pl.Utf8).alias(n) for k, n in zip(self.key, self._lk)])
        joined = lf.join(self._table.lazy(), left_on=self._lk, right_on=self._rk, how=self.how,
                         maintain_order="left", coalesce=True)
        right = [pl.col(n) for n in self._rest]
        if self.how == "left":
            right = [pl.when(pl.col("__m").is_null()).then(pl.lit(""))
                     .otherwise(pl.col(n).cast(pl.Utf8)).alias(n) for n in self._rest]
        out = positional(joined.select([pl.col(c) for c in cols] + right).collect())
        if self._rest and any(left.get_column(c).null_count() for c in cols):
            # a short left record: its right fields follow its last field, so the record
            # is kept whole in one text column (split again where fields are needed)
            out = out.select(record_text(self.ctx.sep).alias("1"))
        return out

    def finish(self) -> Iterator[Batch]:
        yield from self.end_port(1)


# -- construction ----------------------------------------------------------------------

def make_op(spec: OpSpec, ctx: OpContext, combined_input: bool = False) -> Operator:
    """The operator for a spec. combined_input: the input is a combiner's output."""
    o, name = spec.options, spec.name
    if name == "pass":
        return PassOp(ctx)
    if name == "words":
        return WordsOp(ctx)
    if name == "count":
        return CountOp(ctx, o.key, combined_input=combined_input)
    if name == "reduce":
        return ReduceOp(ctx, o.key, o.value, o.fn, combined_input=combined_input)
    if name == "distinct":
        return DistinctOp(ctx, o.key)
    if name == "top":
        return TopOp(ctx, o.k, o.by, o.numeric, o.reverse)
    if name == "sort":
        return SortOp(ctx, o.key, o.numeric, o.reverse)
    if name == "join":
        return JoinOp(ctx, o.key, spec.right_key_fields, o.how)
    raise ValueError(f"unknown operator {name!r}")


def make_combiner(spec: OpSpec, ctx: OpContext) -> Operator | None:
    """The sender-side pre-aggregation for a combinable operator, else None. It takes raw
    records and emits partials (at finish, or early past ctx.combine_rows keys) for the
    operator built with combined_input=True."""
    o, name = spec.options, spec.name
    if name == "count":
        return CountOp(ctx, o.key, combiner=True)
    if name == "reduce":
        return ReduceOp(ctx, o.key, o.value, o.fn, combiner=True)
    if name == "distinct":
        return DistinctOp(ctx, o.key, combiner=True)
    if name == "top":
        return TopOp(ctx, o.k, o.by, o.numeric, o.reverse)
    return None
