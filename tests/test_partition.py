"""Partitioning records: the stable hash, hash partitions of text and frames, ranges."""
from __future__ import annotations

import bisect

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.flows.runtime.records import frame_to_text, text_to_frame
from shoal.logic.partition import partition_frame, partition_text, range_partition, stable_hash

MASK = (1 << 64) - 1
G = 0x9E3779B97F4A7C15


def ref_splitmix64(x: int) -> int:
    z = (x + G) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def ref_field(b: bytes) -> int:
    s = 0
    for j in range(0, len(b), 8):
        w = int.from_bytes(b[j:j + 8].ljust(8, b"\0"), "little")
        s = (s + ref_splitmix64((w + (j // 8 + 1) * G) & MASK)) & MASK
    return ref_splitmix64(s ^ len(b))


def ref_hash(fields: list[str]) -> int:
    h = 0
    for f in fields:
        h = ref_splitmix64(h ^ ref_field(f.encode()))
    return h


def test_stable_hash_values_are_pinned():
    # a change here moves records between partitions: old and new code would disagree
    got = stable_hash([pl.Series(["", "a", "abcdefgh", "abcdefghi", "7", "héllo wörld, a longer key"])])
    assert [hex(int(x)) for x in got] == [
        "0xa706dd2f4d197e6f", "0x41d6a45737d73a9b", "0x1729f5352ceba729", "0xfd14b2d0105ec3b9",
        "0x67fa4f2ca644dc99", hex(ref_hash(["héllo wörld, a longer key"]))]
    two = stable_hash([pl.Series(["a", "b"]), pl.Series(["b", "a"])])
    assert [hex(int(x)) for x in two] == [hex(ref_hash(["a", "b"])), hex(ref_hash(["b", "a"]))]
    assert two[0] != two[1]


def test_stable_hash_sees_text_not_type():
    ints = stable_hash([pl.Series([7, -12, 0])])
    text = stable_hash([pl.Series(["7", "-12", "0"])])
    assert list(ints) == list(text)
    assert list(stable_hash([pl.Series([None, ""], dtype=pl.Utf8)])) == [ref_hash([""])] * 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.text(max_size=30), min_size=2, max_size=2), min_size=1, max_size=40))
def test_stable_hash_matches_its_definition(rows):
    got = stable_hash([pl.Series([r[0] for r in rows], dtype=pl.Utf8),
                       pl.Series([r[1] for r in rows], dtype=pl.Utf8)])
    assert [int(x) for x in got] == [ref_hash(r) for r in rows]


def test_stable_hash_of_a_chunked_sliced_series():
    s = pl.concat([pl.Series(["x" * i for i in range(50)]), pl.Series(["y" * i for i in range(50)])],
                  rechunk=False).slice(7, 80)
    assert [int(x) for x in stable_hash([s])] == [ref_hash([v]) for v in s.to_list()]


FIELD = st.text(alphabet=st.sampled_from("ab,é 7\r"), max_size=6)
LINES = st.lists(st.lists(FIELD, min_size=1, max_size=4), max_size=40)


@settings(max_examples=80, deadline=None)
@given(LINES, st.sampled_from([[1], [2], [1, 3], [3, 1]]), st.integers(1, 5),
       st.sampled_from(["\t", ";", "\u2502"]))
def test_partition_text_agrees_with_partition_frame(rows, key, n, sep):
    data = "".join(sep.join(r) + "\n" for r in rows).encode()
    parts, bad, examples = partition_text(data, key, sep, n)
    lacking = [sep.join(r) for r in rows if len(r) < max(key)]
    assert bad == len(lacking) and examples == lacking[:5]
    df, bad_rows = text_to_frame(data, sep, max(key))
    assert bad_rows.count == bad
    frames = partition_frame(df, key, n)
    assert len(parts) == len(frames) == n
    for text, frame in zip(parts, frames):
        assert text == frame_to_text(frame, sep)
    # each part keeps its lines unchanged and in order, and equal keys meet
    kept = [sep.join(r) for r in rows if len(r) >= max(key)]
    got = [lines_of(p) for p in parts]
    assert sorted(kept) == sorted(line for lines in got for line in lines)
    where = {}
    for i, lines in enumerate(got):
        assert lines == [line for line in kept if line in set(lines)]
        for line in lines:
            k = tuple(line.split(sep)[j - 1] for j in key)
            assert where.setdefault(k, i) == i


def lines_of(text: bytes) -> list[str]:
    return text.decode().split("\n")[:-1]


def test_partition_text_goes_by_the_hash():
    data = b"".join(b"k%d\tv%d\n" % (i, i) for i in range(1000))
    parts, bad, _ = partition_text(data, [1], "\t", 7)
    assert bad == 0
    for i, part in enumerate(parts):
        for line in part.splitlines():
            assert ref_hash([line.split(b"\t")[0].decode()]) % 7 == i


def test_partition_text_edge_cases():
    assert partition_text(b"", [1], "\t", 3) == ([b"", b"", b""], 0, [])
    parts, bad, ex = partition_text(b"a\tb\nno-tab\nc\td", [2], "\t", 1)
    assert parts == [b"a\tb\nc\td\n"] and bad == 1 and ex == ["no-tab"]
    parts, bad, _ = partition_text(b"\n\n", [1], "\t", 2)        # empty lines: one empty field
    assert b"".join(parts) == b"\n\n" and bad == 0
    long = b"x" * 1000 + b"\tend\n"
    parts, bad, ex = partition_text(long, [3], "\t", 2)
    assert bad == 1 and ex == ["x" * 200]
    with pytest.raises(ValueError):
        partition_text(b"a\n", [0], "\t", 2)


def test_partition_frame_keeps_order_and_types():
    df = pl.DataFrame({"a": [1, 2, 3, 4, 5, 6, 7, 8], "b": list("abcdefgh")})
    parts = partition_frame(df, [1], 3)
    assert sum(p.height for p in parts) == 8
    for p in parts:
        assert p.schema == df.schema
        assert p["a"].to_list() == sorted(p["a"].to_list())
    as_text = partition_text(frame_to_text(df), [1], "\t", 3)[0]
    assert [frame_to_text(p) for p in parts] == as_text
    assert all(p.height == 0 for p in partition_frame(df, [3], 2))


def test_range_partition():
    bounds = ["b", "d", "d\u00e9"]
    keys = ["a", "b", "c", "d", "dz", "d\u00e9", "\u00e9", ""]
    got = range_partition(pl.Series(keys), bounds)
    enc = [b.encode() for b in bounds]
    assert list(got) == [bisect.bisect_right(enc, k.encode()) for k in keys]
    assert list(range_partition(pl.Series([1, 5, 9]), ["3", "7"])) == [0, 1, 2]
    with pytest.raises(ValueError):
        range_partition(pl.Series(["a"]), ["b", "a"])


def test_hash_spreads_evenly():
    keys = pl.Series([f"key{i}" for i in range(40000)])
    counts = np.bincount((stable_hash([keys]) % np.uint64(8)).astype(np.int64), minlength=8)
    assert counts.min() > 40000 / 8 * 0.9
