"""Batches of records, as text or as frames, and the conversions between them.

A batch is `bytes` (whole lines, each ending in a newline) or a polars DataFrame whose
column k-1 is field k. Text becomes a frame of Utf8 columns named "1", "2", ...:

  * the frame is as wide as the widest line (counted in fields), and at least `need`
    wide; past 256 fields (or past `need`, if more) a line keeps the rest, separators
    and all, in the last column;
  * a line with fewer fields has nulls in the columns it lacks, and frame_to_text leaves
    nulls out, so text -> frame -> text gives back the same lines;
  * a line with fewer than `need` fields is a bad record: dropped and counted.

An empty line is one empty field. Bytes that are not UTF-8 become U+FFFD.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import polars as pl

from ...logic.partition import EXAMPLE_CHARS, MAX_EXAMPLES, lines_series

Batch = bytes | pl.DataFrame

_BOM = b"\xef\xbb\xbf"
MAX_WIDTH = 256
_SPARE = [bytes([c]) for c in (*range(1, 9), 11, 12, *range(14, 32), 0)]


@dataclass
class BadRecords:
    """Records dropped for lacking a needed field: how many, and a few of them."""
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, lines: list[str], n: int) -> None:
        """Count n bad records, keeping some of `lines` (examples of them)."""
        self.count += n
        room = MAX_EXAMPLES - len(self.examples)
        if room > 0:
            self.examples.extend(line[:EXAMPLE_CHARS] for line in lines[:room])

    def merge(self, other: "BadRecords") -> None:
        self.add(other.examples, other.count)

    def __bool__(self) -> bool:
        return self.count > 0


def count_records(batch: Batch) -> int:
    """Lines in a text batch (a last line without a newline counts), rows in a frame."""
    if isinstance(batch, pl.DataFrame):
        return batch.height
    n = batch.count(b"\n")
    return n + 1 if batch and not batch.endswith(b"\n") else n


def split_text(data: bytes, max_bytes: int) -> list[bytes]:
    """Cut text into pieces of at most max_bytes at line ends (a longer line is a piece of
    its own)."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive (got {max_bytes})")
    out, start, size = [], 0, len(data)
    while size - start > max_bytes:
        cut = data.rfind(b"\n", start, start + max_bytes)
        if cut < 0:
            cut = data.find(b"\n", start + max_bytes)
            if cut < 0:
                break
        out.append(data[start:cut + 1])
        start = cut + 1
    if start < size:
        out.append(data[start:])
    return out


def text_lines(data: bytes, name: str = "1") -> pl.Series:
    """The lines of a text as a Utf8 Series, without their newlines."""
    if not data:
        return pl.Series(name, [], dtype=pl.Utf8)
    if b"\r" in data:
        return lines_series(data, name)
    return read_lines(data, name, empty_is_null=False)


def read_lines(data: bytes, name: str = "1", empty_is_null: bool = False) -> pl.Series:
    """Lines of a text without \r (the fast reader would drop a \r before a newline);
    empty lines as "" or as nulls."""
    spare = None if data.startswith(_BOM) else next((c for c in _SPARE if c not in data), None)
    if spare is None:
        lines = lines_series(data, name)
        return lines.set(lines.str.len_bytes() == 0, None) if empty_is_null else lines
    opts = dict(has_header=False, separator=spare.decode(), quote_char=None, schema={name: pl.Utf8},
                empty_string_is_null=empty_is_null, raise_if_empty=False)
    try:
        df = pl.read_csv(data, **opts)
    except pl.exceptions.ComputeError:
        df = pl.read_csv(data, encoding="utf8-lossy", **opts)
    return df.get_column(name)


def text_to_frame(data: bytes, sep: str = "\t", need: int = 1) -> tuple[pl.DataFrame, BadRecords]:
    """Parse text into a frame of Utf8 fields (see the module docstring)."""
    need = max(need, 1)
    bad = BadRecords()
    if not data:
        return empty_frame(need), bad
    lines = text_lines(data)
    width = 1
    if sep.encode() in data:
        width = int(lines.str.count_matches(sep, literal=True).max()) + 1
    df = split_fields(lines, sep, max(need, min(width, max(MAX_WIDTH, need + 1))))
    if need > 1:
        col = df.get_column(str(need))
        if col.null_count():
            ok = col.is_not_null()
            bad.add(lines.filter(~ok).head(MAX_EXAMPLES).to_list(), col.null_count())
            df = df.filter(ok)
    return df, bad


def split_fields(lines: pl.Series, sep: str, width: int) -> pl.DataFrame:
    """Lines split into `width` columns, the rest of a longer line kept in the last."""
    if width == 1:
        return lines.to_frame("1")
    df = lines.str.splitn(sep, width).struct.unnest()
    df.columns = [str(i) for i in range(1, width + 1)]
    return df


def empty_frame(width: int) -> pl.DataFrame:
    """A frame of no rows and `width` Utf8 columns."""
    return pl.DataFrame(schema={str(i): pl.Utf8 for i in range(1, max(width, 1) + 1)})


def positional(df: pl.DataFrame) -> pl.DataFrame:
    """The same frame with its columns named "1", "2", ..."""
    names = [str(i) for i in range(1, df.width + 1)]
    return df if df.columns == names else df.rename(dict(zip(df.columns, names)))


def frame_to_text(df: pl.DataFrame, sep: str = "\t") -> bytes:
    """One line per row: the columns joined by sep, nulls left out, no quoting."""
    if df.height == 0 or df.width == 0:
        return b""
    one_byte = len(sep.encode()) == 1
    if not one_byte or any(df.get_column(c).null_count() for c in df.columns):
        df = df.select(record_text(sep))
    out = io.BytesIO()
    df.write_csv(out, include_header=False, separator=sep if one_byte else ",", quote_style="never")
    return out.getvalue()


def to_text(batch: Batch, sep: str = "\t") -> bytes:
    return batch if isinstance(batch, bytes) else frame_to_text(batch, sep)


def to_frame(batch: Batch, sep: str = "\t", need: int = 1) -> tuple[pl.DataFrame, BadRecords]:
    """A frame with columns "1", "2", ... whose rows have their first `need` fields; rows
    that do not are dropped and counted. A frame narrower than `need` whose last column
    is text has that column split further at sep (it may hold the rest of each record)."""
    if not isinstance(batch, pl.DataFrame):
        return text_to_frame(bytes(batch), sep, need)
    df = positional(batch)
    bad = BadRecords()
    if 0 < df.width < need and df.dtypes[-1] == pl.Utf8:
        # a last text column may hold the rest of each record: split it further
        last = df.columns[-1]
        rest = split_fields(df.get_column(last), sep, need - df.width + 2)
        rest.columns = [str(i) for i in range(df.width, need + 2)]
        df = df.drop(last).hstack(rest)
    if df.width < need:
        if df.height:
            bad.add(frame_lines(df.head(MAX_EXAMPLES), sep), df.height)
        return df.clear().with_columns([pl.lit(None, pl.Utf8).alias(str(i))
                                        for i in range(df.width + 1, need + 1)]), bad
    cols = [c for c in df.columns[:need] if df.get_column(c).null_count()]
    if cols:
        ok = pl.all_horizontal([pl.col(c).is_not_null() for c in cols])
        lacking = df.filter(~ok)
        bad.add(frame_lines(lacking.head(MAX_EXAMPLES), sep), lacking.height)
        df = df.filter(ok)
    return df, bad


def frame_lines(df: pl.DataFrame, sep: str = "\t") -> list[str]:
    """The rows of a (small) frame as lines of text."""
    if df.width == 0:
        return [""] * df.height
    return df.select(pl.concat_str(pl.all(), separator=sep, ignore_nulls=True)
                     .fill_null("")).to_series().to_list()


def record_text(sep: str) -> pl.Expr:
    """The whole record as one string, as frame_to_text would write it."""
    return pl.concat_str(pl.all(), separator=sep, ignore_nulls=True).fill_null("")


def concat_frames(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Stack frames by column name; frames that lack a column get nulls there, and a
    column that is text in any frame becomes text in all. Columns appear in the order
    first seen."""
    if not frames:
        return empty_frame(1)
    if len(frames) == 1:
        return frames[0]
    first = frames[0].schema
    if all(f.schema == first for f in frames[1:]):
        return pl.concat(frames, how="vertical", rechunk=False)
    return pl.concat(frames, how="diagonal_relaxed", rechunk=False)


def slices(df: pl.DataFrame, rows: int):
    """The frame in consecutive slices of at most `rows` rows (nothing for an empty frame)."""
    rows = max(int(rows), 1)
    for start in range(0, df.height, rows):
        yield df.slice(start, rows)
