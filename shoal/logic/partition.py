"""Which instance a record goes to: a stable hash of its key fields, or a range of keys.

The hash is defined on the UTF-8 bytes of each key field, so the same record lands in the
same partition on every machine and in every process, whether it travels as text or as a
frame (an integer 7 in a frame hashes like the text "7"). Pure: numpy and polars, no I/O.

Definition (all arithmetic modulo 2**64, `G = 0x9E3779B97F4A7C15`):

    splitmix64(x):  z = x + G
                    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
                    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
                    return z ^ (z >> 31)

    field(b):       b is cut into 8-byte words w_0, w_1, ... read little-endian, the last
                    one padded with zero bytes (an empty b has no words);
                    s = sum over j of splitmix64(w_j + (j + 1) * G)
                    return splitmix64(s ^ len(b))

    stable_hash(f_1, ..., f_m):  h = 0; for each key field: h = splitmix64(h ^ field(f_i))

A record goes to partition `stable_hash(key fields) % n`. Text is hashed as the bytes it
holds (bytes that are not UTF-8 included); a frame's values as their UTF-8 text.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

U64 = np.uint64
G = U64(0x9E3779B97F4A7C15)
M1 = U64(0xBF58476D1CE4E5B9)
M2 = U64(0x94D049BB133111EB)
_LOW = np.array([(1 << (8 * r)) - 1 for r in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
MAX_EXAMPLES = 5
EXAMPLE_CHARS = 200


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 step over a uint64 array (wrapping arithmetic); returns a new array."""
    with np.errstate(over="ignore"):
        z = x + G
        _mix(z)
        return z


def _mix(z: np.ndarray) -> None:
    """The splitmix64 finaliser, in place."""
    with np.errstate(over="ignore"):
        t = z >> U64(30)
        z ^= t
        z *= M1
        np.right_shift(z, U64(27), out=t)
        z ^= t
        z *= M2
        np.right_shift(z, U64(31), out=t)
        z ^= t


def hash_ranges(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """field() of each byte range buf[starts[i]:ends[i]] (buf: a uint8 array)."""
    starts = np.asarray(starts, dtype=np.int64)
    lens = np.asarray(ends, dtype=np.int64) - starts
    n = len(starts)
    if len(buf) < 8:
        padded = np.zeros(8, dtype=np.uint8)
        padded[:len(buf)] = buf
        buf = padded
    view = np.ndarray(shape=(len(buf) - 7,), dtype="<u8", buffer=buf, offset=0, strides=(1,))
    last = len(buf) - 8
    nwords = (lens + 7) >> 3
    most = int(nwords.max()) if n else 0
    fewest = int(nwords.min()) if n else 0
    sums = np.zeros(n, dtype=np.uint64)
    rows = None                       # the ranges that still have words: None means all
    with np.errstate(over="ignore"):
        for j in range(most):
            if rows is None and j >= fewest and np.count_nonzero(nwords > j) < n // 2:
                rows = np.flatnonzero(nwords > j)
            elif rows is not None:
                rows = rows[nwords[rows] > j]
            if rows is None:
                pos, left = starts + 8 * j, lens - 8 * j
            else:
                pos, left = starts[rows] + 8 * j, lens[rows] - 8 * j
            w = _words_at(view, pos, last)
            np.clip(left, 0, 8, out=left)
            w &= _LOW[left]
            w += U64(j + 1) * G + G
            _mix(w)
            if rows is None:
                if j >= fewest:
                    w[left == 0] = 0
                sums += w
            else:
                sums[rows] += w
    sums ^= lens.astype(np.uint64)
    return splitmix64(sums)


def _words_at(view: np.ndarray, pos: np.ndarray, last: int) -> np.ndarray:
    """The 8 bytes at each position, little-endian; bytes past the end read as 0."""
    if not len(pos) or pos.max() <= last:
        return view[pos]
    w = view[np.minimum(pos, last)]
    tail = np.flatnonzero(pos > last)
    shift = ((pos[tail] - last) * 8).astype(np.uint64)
    w[tail] = np.where(shift >= 64, U64(0), view[last] >> np.minimum(shift, U64(63)))
    return w


def _utf8_ranges(s: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bytes, starts, ends, valid) of a Series seen as UTF-8 text."""
    if s.dtype != pl.Utf8:
        s = s.cast(pl.Utf8)
    arr = s.rechunk().to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    validity, offsets, data = arr.buffers()
    n = len(arr)
    off = np.frombuffer(offsets, dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    buf = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    valid = np.ones(n, dtype=bool) if arr.null_count == 0 else arr.is_valid().to_numpy(zero_copy_only=False)
    return buf, off[:-1], off[1:], valid


def stable_hash(keys: list[pl.Series]) -> np.ndarray:
    """The stable hash (see the module docstring) of each row over the given key columns.
    Null values hash like empty strings."""
    if not keys:
        raise ValueError("stable_hash needs at least one key column")
    h = np.zeros(len(keys[0]), dtype=np.uint64)
    for s in keys:
        buf, starts, ends, valid = _utf8_ranges(s)
        ends = np.where(valid, ends, starts)
        h = splitmix64(h ^ hash_ranges(buf, starts, ends))
    return h


def partition_frame(df: pl.DataFrame, key: list[int], n: int) -> list[pl.DataFrame]:
    """Split a frame into n frames by stable_hash(key fields) % n; order kept within each.
    Rows that lack a key field (too few columns, or a null) are dropped: build the frame
    with enough fields first (records.to_frame counts such rows as bad)."""
    _check(key, n)
    if df.width < max(key):
        empty = df.clear()
        return [empty] * n
    cols = [df.get_column(df.columns[k - 1]) for k in key]
    nulls = sum(c.null_count() for c in cols)
    if nulls:
        ok = np.ones(df.height, dtype=bool)
        for c in cols:
            ok &= c.is_not_null().to_numpy()
        df = df.filter(pl.Series(ok))
        cols = [df.get_column(df.columns[k - 1]) for k in key]
    if n == 1:
        return [df]
    part = (stable_hash(cols) % U64(n)).astype(np.int64)
    return _group_rows(df, part, n)


def _group_rows(df: pl.DataFrame, part: np.ndarray, n: int) -> list[pl.DataFrame]:
    if n <= 4:
        return [df.filter(pl.Series(part == i)) for i in range(n)]
    order = np.argsort(part.astype(np.uint16) if n <= 65536 else part, kind="stable")
    counts = np.bincount(part, minlength=n)
    taken = df[pl.Series(order)]
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [taken.slice(int(bounds[i]), int(counts[i])) for i in range(n)]


def line_bounds(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of each line in buf; ends exclude the newline. A last line without a
    newline counts as a line."""
    nl = np.flatnonzero(buf == 10)
    if len(buf) and buf[-1] != 10:
        nl = np.append(nl, len(buf))
    starts = np.empty(len(nl), dtype=np.int64)
    if len(nl):
        starts[0] = 0
        starts[1:] = nl[:-1] + 1
    return starts, nl.astype(np.int64)


def field_bounds(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, sep: int,
                 fields: list[int]) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """For each wanted field number: (starts, ends) per line, and a mask of the lines that
    have every wanted field. `sep` is a single byte value."""
    top = max(fields)
    if top == 1 and not len(starts):
        return {1: (starts, ends)}, np.ones(0, dtype=bool)
    sp = np.flatnonzero(buf == sep)
    first = np.searchsorted(sp, starts)
    nsp = len(sp)
    ok = np.ones(len(starts), dtype=bool)
    out = {}

    def sep_at(idx: np.ndarray) -> np.ndarray:
        """Position of separator number idx, or the line end when there is none."""
        if nsp == 0:
            return ends.copy()
        at = sp[np.minimum(idx, nsp - 1)]
        return np.where(idx < nsp, np.minimum(at, ends), ends)

    for k in sorted(set(fields)):
        if k == 1:
            fs = starts
        else:
            s = sep_at(first + (k - 2))
            ok &= s < ends
            fs = np.minimum(s + 1, ends)
        out[k] = (fs, sep_at(first + (k - 1)))
    return out, ok


def partition_text(data: bytes, key: list[int], sep: str, n: int) -> tuple[list[bytes], int, list[str]]:
    """Split text into n texts by stable_hash(key fields) % n, lines unchanged and in order
    within each part. Lines that lack a key field are dropped; returns (parts, the number
    dropped, up to 5 of them truncated to 200 characters)."""
    _check(key, n)
    if not data:
        return [b""] * n, 0, []
    if not data.endswith(b"\n"):
        data += b"\n"
    sepb = sep.encode()
    if len(sepb) != 1:
        return _partition_text_wide(data, key, sep, n)
    buf = np.frombuffer(data, dtype=np.uint8)
    starts, ends = line_bounds(buf)
    bounds, ok = field_bounds(buf, starts, ends, sepb[0], key)
    bad = np.flatnonzero(~ok)
    examples = [_example(data, starts[i], ends[i]) for i in bad[:MAX_EXAMPLES]]
    h = np.zeros(len(starts), dtype=np.uint64)
    for k in key:
        fs, fe = bounds[k]
        h = splitmix64(h ^ hash_ranges(buf, fs, np.maximum(fe, fs)))
    part = (h % U64(n)).astype(np.int64)
    if len(bad):
        part[bad] = n
    return _gather_lines(data, starts, ends, part, n), int(len(bad)), examples


def _gather_lines(data: bytes, starts: np.ndarray, ends: np.ndarray, part: np.ndarray,
                  n: int) -> list[bytes]:
    """Lines (with their newlines) grouped by part; part == n means dropped."""
    if n == 1 and not (part == n).any():
        return [data]
    offsets = np.empty(len(starts) + 1, dtype=np.int64)
    offsets[:-1] = starts
    offsets[-1] = ends[-1] + 1
    lines = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(starts),
                                             [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    order = np.argsort(part.astype(np.uint16) if n < 65536 else part, kind="stable")
    counts = np.bincount(part, minlength=n + 1)
    taken = lines.take(pa.array(order))
    _, toff, tdata = taken.buffers()
    toffs = np.frombuffer(toff, dtype=np.int64, count=len(taken) + 1, offset=taken.offset * 8)
    mem = memoryview(tdata)
    row = np.concatenate([[0], np.cumsum(counts)])
    return [bytes(mem[toffs[row[i]]:toffs[row[i + 1]]]) for i in range(n)]


def _partition_text_wide(data: bytes, key: list[int], sep: str, n: int):
    """partition_text for a separator of more than one byte (a non-ASCII character)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    starts, ends = line_bounds(buf)
    lines = lines_series(data)
    parts = lines.str.splitn(sep, max(key) + 1).struct.unnest()
    cols = [parts.get_column(parts.columns[k - 1]) for k in key]
    ok = np.ones(len(lines), dtype=bool)
    for c in cols:
        ok &= c.is_not_null().to_numpy()
    bad = np.flatnonzero(~ok)
    examples = [_example(data, starts[i], ends[i]) for i in bad[:MAX_EXAMPLES]]
    part = (stable_hash(cols) % U64(n)).astype(np.int64)
    if len(bad):
        part[bad] = n
    return _gather_lines(data, starts, ends, part, n), int(len(bad)), examples


def lines_series(data: bytes, name: str = "1") -> pl.Series:
    """The lines of a text as a Utf8 Series, exactly as written (a \r stays), without their
    newlines. Bytes that are not UTF-8 become U+FFFD."""
    if data and not data.endswith(b"\n"):
        data += b"\n"
    arr = _lines_array(data)
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        data = data.decode("utf-8", "replace").encode()
        arr = _lines_array(data)
    return pl.Series(name, arr).str.head(-1)


def _lines_array(data: bytes) -> pa.Array:
    buf = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    offsets = np.zeros(len(nl) + 1, dtype=np.int64)
    offsets[1:] = nl + 1
    return pa.LargeStringArray.from_buffers(len(nl), pa.py_buffer(offsets), pa.py_buffer(data))


def _example(data: bytes, start: int, end: int) -> str:
    return data[start:min(end, start + 4 * EXAMPLE_CHARS)].decode("utf-8", "replace")[:EXAMPLE_CHARS]


def range_partition(keys: pl.Series, bounds: list[str]) -> np.ndarray:
    """Partition index of each key given sorted bounds: keys below bounds[0] go to 0, keys
    from bounds[i-1] up to (not including) bounds[i] go to i, keys from the last bound on
    go to len(bounds). Keys compare as UTF-8 bytes."""
    if any(a > b for a, b in zip(bounds, bounds[1:])):
        raise ValueError("range_partition: bounds must be sorted")
    if keys.dtype != pl.Utf8:
        keys = keys.cast(pl.Utf8)
    b = pl.Series("b", bounds, dtype=pl.Utf8)
    return b.search_sorted(keys.fill_null(""), side="right").to_numpy().astype(np.int64)


def _check(key: list[int], n: int) -> None:
    if n < 1:
        raise ValueError(f"partition count must be at least 1 (got {n})")
    if not key or any(k < 1 for k in key):
        raise ValueError(f"key fields are counted from 1 (got {key})")
