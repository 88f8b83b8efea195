"""Built-in flow operators, records, sorted merge and spilling sort, each against a plain
Python reference on random data split into random batches."""
from __future__ import annotations

import math
import random
from collections import Counter

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import InvalidSpec
from shoal.flows.runtime.merge import SortedMerge
from shoal.flows.runtime.ops import OpContext, make_combiner, make_op
from shoal.flows.runtime.records import (BadRecords, count_records, frame_to_text, split_text, text_to_frame,
                                 to_frame, to_text)
from shoal.flows.opspec import OpSpec, parse_op

SEP = "\t"
SOME = settings(max_examples=40, deadline=None)
WORD = st.text(alphabet=st.sampled_from("abzé1"), min_size=0, max_size=3)
NUM = st.one_of(st.integers(-50, 50).map(str), st.sampled_from(["1.5", "-0.25", "x", "7"]))


def rows_of(fields=WORD, width=(1, 4)):
    return st.lists(st.lists(fields, min_size=width[0], max_size=width[1]), max_size=40)


def text(rows) -> bytes:
    return "".join(SEP.join(r) + "\n" for r in rows).encode()


def lines(data: bytes) -> list[str]:
    return data.decode().split("\n")[:-1]


def b(s: str) -> bytes:
    return s.encode()


def batches(rows, cuts, as_frames):
    """rows cut into batches at the given points, alternately text and frames."""
    points = sorted({c % (len(rows) + 1) for c in cuts} | {0, len(rows)})
    out = []
    for i, (lo, hi) in enumerate(zip(points, points[1:])):
        data = text(rows[lo:hi])
        out.append(text_to_frame(data, SEP)[0] if as_frames and i % 2 else data)
    return out


def run(spec, parts, ctx=None) -> tuple[list[str], BadRecords]:
    """The operator's output over the batches, as lines, and its bad records."""
    op = make_op(parse_op(spec), ctx or OpContext())
    out = []
    for part in parts:
        out += op.push(part)
    out += list(op.finish())
    return lines(b"".join(to_text(o, SEP) for o in out)), op.bad


def combined_run(spec, parts, senders: int, ctx: OpContext, seed: int) -> list[str]:
    """Batches spread over several senders, each pre-aggregating with the combiner; the
    partials reach the final operator as frames or as text."""
    rng = random.Random(seed)
    combiners = [make_combiner(parse_op(spec), ctx) for _ in range(senders)]
    partials = []
    for part in parts:
        partials += combiners[rng.randrange(senders)].push(part)
    for c in combiners:
        partials += list(c.finish())
    final = make_op(parse_op(spec), ctx, combined_input=True)
    out = []
    for p in partials:
        out += final.push(to_text(p, SEP) if rng.random() < 0.5 else p)
    out += list(final.finish())
    return lines(b"".join(to_text(o, SEP) for o in out))


def num(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        return -math.inf
    return -math.inf if math.isnan(x) else x


# -- records ---------------------------------------------------------------------------

@SOME
@given(rows_of(), st.integers(1, 4))
def test_text_frame_round_trip(rows, need):
    data = text(rows)
    df, bad = text_to_frame(data, SEP, need)
    kept = [SEP.join(r) for r in rows if len(r) >= need]
    assert frame_to_text(df, SEP) == "".join(k + "\n" for k in kept).encode()
    assert bad.count == len(rows) - len(kept)
    assert bad.examples == [SEP.join(r) for r in rows if len(r) < need][:5]
    assert df.height == len(kept) and df.width >= need
    assert all(dt == pl.Utf8 for dt in df.dtypes)
    # field k is column k for every field up to need
    for k in range(1, need + 1):
        assert df.get_column(str(k)).to_list() == [r[k - 1] for r in rows if len(r) >= need]


def test_text_frame_details():
    assert text_to_frame(b"", SEP, 2)[0].shape == (0, 2)
    assert frame_to_text(pl.DataFrame(), SEP) == b""
    assert frame_to_text(pl.DataFrame({"a": []}), SEP) == b""
    df, _ = text_to_frame(b"a\r\n\xef\xbb\xbfb\tc\r\n", SEP)       # \r and a BOM are kept
    assert frame_to_text(df, SEP) == b"a\r\n\xef\xbb\xbfb\tc\r\n"
    df, _ = text_to_frame(b"bad\xff\tz\n", SEP)
    assert df.row(0) == ("bad\ufffd", "z")
    df, _ = text_to_frame(b"no newline", SEP)
    assert frame_to_text(df, SEP) == b"no newline\n"
    ints = pl.DataFrame({"w": ["a", "b"], "n": [3, 10], "f": [0.5, 2.0]})
    assert frame_to_text(ints, ";") == b"a;3;0.5\nb;10;2.0\n"
    assert frame_to_text(ints, "\u2502") == "a\u25023\u25020.5\nb\u250210\u25022.0\n".encode()
    long_bad = b"x" * 500 + b"\n"
    _, bad = text_to_frame(long_bad, SEP, 2)
    assert bad.count == 1 and bad.examples == ["x" * 200]


def test_to_frame_of_frames_counts_rows_lacking_fields():
    df = pl.DataFrame({"a": ["k1", "k2", None], "b": [1, None, 3]})
    out, bad = to_frame(df, SEP, 2)
    assert out.columns == ["1", "2"] and out.rows() == [("k1", 1)]
    assert bad.count == 2 and bad.examples == ["k2", "3"]
    out, bad = to_frame(pl.DataFrame({"a": ["x", "y"]}), SEP, 3)
    assert out.height == 0 and out.width >= 3 and bad.count == 2
    assert to_frame(b"a\tb\n", SEP)[0].rows() == [("a", "b")]
    whole = pl.DataFrame({"line": ["a\tb\tc\td", "e\tf", "g"]})      # records kept whole
    out, bad = to_frame(whole, SEP, 2)
    assert out.get_column("2").to_list() == ["b", "f"] and frame_to_text(out, SEP) == b"a\tb\tc\td\ne\tf\n"
    assert bad.count == 1 and bad.examples == ["g"]


def test_count_records_and_split_text():
    assert count_records(b"") == 0
    assert count_records(b"a\nb\n") == 2
    assert count_records(b"a\nb") == 2
    assert count_records(pl.DataFrame({"a": [1, 2, 3]})) == 3
    data = b"".join(b"line %d\n" % i for i in range(1000))
    for size in (1, 7, 100, 4096, 10 ** 6):
        pieces = split_text(data, size)
        assert b"".join(pieces) == data
        assert all(p.endswith(b"\n") for p in pieces)
        assert all(len(p) <= size or p.count(b"\n") == 1 for p in pieces)
    assert split_text(b"", 10) == []
    assert split_text(b"abc", 1) == [b"abc"]


def test_bad_records_merge_keeps_five_examples():
    a = BadRecords()
    a.add(["1", "2", "3"], 3)
    other = BadRecords()
    other.add(["4", "5", "6", "7"], 10)
    a.merge(other)
    assert a.count == 13 and a.examples == ["1", "2", "3", "4", "5"]


# -- operator specs --------------------------------------------------------------------

def test_parse_op_forms_and_properties():
    assert parse_op("count") == parse_op({"count": {"key": [1]}}) == parse_op({"count": {"key": 1}})
    assert parse_op({"count": None}).value() == "count"
    top = parse_op({"top": {"k": 3, "by": 2}})
    assert top.value() == {"top": {"k": 3, "by": 2}} and top.combinable and top.needs_fields == 2
    join = parse_op({"join": {"key": [2, 1], "right_key": [1, 3]}})
    assert join.inputs == 2 and join.key_fields == [2, 1] and join.right_key_fields == [1, 3]
    assert join.needs_on(0) == 2 and join.needs_on(1) == 3 and not join.combinable
    count = parse_op({"count": {"key": [3, 2]}})
    assert count.combined_key_fields == [1, 2]
    assert count.combined_edge_key([2]) == [2] and count.combined_edge_key([1]) is None
    assert parse_op("distinct").key_fields == [] and parse_op("words").needs_fields == 0
    assert OpSpec.model_validate(top.model_dump()) == top == OpSpec.model_validate({"top": {"k": 3, "by": 2}})


@pytest.mark.parametrize("value,problems", [
    ({"top": {"k": 0, "by": 2}}, ["op.top.k: must be a positive integer (got 0)"]),
    ({"top": {"k": -1}}, ["op.top.k: must be a positive integer (got -1)", "op.top.by: required"]),
    ({"count": {"key": [0]}}, ["op.count.key: must be a field number from 1"]),
    ({"count": {"kee": 1}}, ["op.count.kee: unknown option (did you mean 'key'?) (known options: key)"]),
    ({"reduce": {"value": 2, "fn": "avg"}},
     ["op.reduce.fn: 'avg' is not valid (expected one of sum, min, max)"]),
    ({"join": {"key": [1, 2], "right_key": [1]}}, ["op.join.right_key: must name as many fields as key"]),
    ({"sort": {"numeric": "yes"}}, ["op.sort.numeric: 'yes' is not valid (expected true or false)"]),
    ("cunt", ["op: unknown operator 'cunt' (known: words, count"]),
    ({"count": {}, "top": {}}, ["op: expected an operator name"]),
    (7, ["op: expected an operator name"]),
])
def test_parse_op_names_every_problem(value, problems):
    with pytest.raises(InvalidSpec) as e:
        parse_op(value)
    assert len(e.value.problems) == len(problems)
    for got, want in zip(e.value.problems, problems):
        assert got.startswith(want)


# -- words, pass -----------------------------------------------------------------------

@SOME
@given(st.lists(st.text(alphabet=st.sampled_from("ab é\t\r\n\x0b\x0c\x01\x00,\""), max_size=30), max_size=5))
def test_words_splits_on_whitespace(pieces):
    parts = [p.encode() for p in pieces]
    out, bad = run("words", parts)
    assert out == [w.decode() for p in parts for w in p.split()]
    assert bad.count == 0


def test_words_of_frames_and_odd_bytes():
    out, _ = run("words", [pl.DataFrame({"a": ["x y", "z"], "b": ["w", "v u"]}), b"\xef\xbb\xbfbom x\n"])
    assert out == ["x", "y", "w", "z", "v", "u", "\ufeffbom", "x"]
    out, _ = run("words", [b"ok \xff\xfe bad\n"])
    assert out == ["ok", "\ufffd\ufffd", "bad"]
    every = bytes(range(1, 128)) + b"\x00 end\n"          # no byte is left to mark columns
    out, _ = run("words", [every])
    assert out == [w.decode() for w in every.split()]
    df, _ = text_to_frame(every + b"x\ty\n", SEP)
    assert frame_to_text(df, SEP) == every + b"x\ty\n"


def test_pass_keeps_batches():
    op = make_op(parse_op("pass"), OpContext())
    df = pl.DataFrame({"a": [1]})
    assert op.push(b"x\n") == [b"x\n"] and op.push(df)[0] is df and op.push(b"") == []


# -- count, reduce, distinct, top: direct and combined --------------------------------

def ref_count(rows, key):
    c = Counter(tuple(r[k - 1] for k in key) for r in rows if len(r) >= max(key))
    return [SEP.join([*k, str(n)]) for k, n in sorted(c.items(), key=lambda kv: [b(x) for x in kv[0]])]


@SOME
@given(rows_of(), st.lists(st.integers(0, 40), max_size=4), st.sampled_from([[1], [2], [2, 1]]),
       st.booleans())
def test_count(rows, cuts, key, as_frames):
    out, bad = run({"count": {"key": key}}, batches(rows, cuts, as_frames))
    assert out == ref_count(rows, key)
    assert bad.count == sum(len(r) < max(key) for r in rows)


def ref_reduce(rows, key, value, fn):
    groups: dict = {}
    for r in rows:
        if len(r) < max([*key, value]) or num(r[value - 1]) == -math.inf:
            continue
        groups.setdefault(tuple(r[k - 1] for k in key), []).append(float(r[value - 1]))
    agg = {"sum": sum, "min": min, "max": max}[fn]
    return [(k, agg(v)) for k, v in sorted(groups.items(), key=lambda kv: [b(x) for x in kv[0]])]


def parse_reduced(out, m):
    return [(tuple(line.split(SEP)[:m]), float(line.split(SEP)[m])) for line in out]


@SOME
@given(st.lists(st.tuples(WORD, NUM), max_size=40), st.lists(st.integers(0, 40), max_size=4),
       st.sampled_from(["sum", "min", "max"]), st.booleans())
def test_reduce(pairs, cuts, fn, as_frames):
    rows = [list(p) for p in pairs]
    spec = {"reduce": {"key": 1, "value": 2, "fn": fn}}
    out, bad = run(spec, batches(rows, cuts, as_frames))
    want = ref_reduce(rows, [1], 2, fn)
    got = parse_reduced(out, 1)
    assert [k for k, _ in got] == [k for k, _ in want]
    assert all(math.isclose(g, w, abs_tol=1e-9) for (_, g), (_, w) in zip(got, want))
    assert bad.count == sum(num(r[1]) == -math.inf for r in rows)
    if all(p[1].lstrip("-").isdigit() for p in pairs):
        assert all("." not in line for line in out)         # integers stay integers


def ref_distinct(rows, key):
    recs = [SEP.join(r) for r in rows if not key or len(r) >= max(key)]
    if not key:
        return sorted(set(recs), key=b)
    best: dict = {}
    for rec in recs:
        k = tuple(rec.split(SEP)[i - 1] for i in key)
        if k not in best or b(rec) < b(best[k]):
            best[k] = rec
    return sorted(best.values(), key=b)


@SOME
@given(rows_of(width=(1, 3)), st.lists(st.integers(0, 40), max_size=4), st.sampled_from([None, [1], [2, 1]]),
       st.booleans())
def test_distinct(rows, cuts, key, as_frames):
    spec = {"distinct": {"key": key}} if key else "distinct"
    out, _ = run(spec, batches(rows, cuts, as_frames))
    assert out == ref_distinct(rows, key)


def ref_top(rows, k, by, numeric, reverse):
    recs = [(r, SEP.join(r)) for r in rows if len(r) >= by and (not numeric or num(r[by - 1]) > -math.inf)]
    if numeric:
        order = lambda rr: ((num(rr[0][by - 1]) if reverse else -num(rr[0][by - 1])), b(rr[1]))
        return [rec for _, rec in sorted(recs, key=order)[:k]]
    asc = sorted(recs, key=lambda rr: b(rr[1]))
    asc.sort(key=lambda rr: b(rr[0][by - 1]), reverse=not reverse)
    return [rec for _, rec in asc[:k]]


@SOME
@given(st.lists(st.lists(st.one_of(WORD, NUM), min_size=1, max_size=3), max_size=40),
       st.lists(st.integers(0, 40), max_size=4), st.integers(1, 6), st.sampled_from([1, 2]),
       st.booleans(), st.booleans(), st.booleans())
def test_top(rows, cuts, k, by, numeric, reverse, as_frames):
    spec = {"top": {"k": k, "by": by, "numeric": numeric, "reverse": reverse}}
    out, bad = run(spec, batches(rows, cuts, as_frames))
    assert out == ref_top(rows, k, by, numeric, reverse)
    lacking = sum(len(r) < by or (numeric and num(r[by - 1]) == -math.inf) for r in rows)
    assert bad.count == lacking


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.one_of(WORD, NUM), min_size=2, max_size=3), max_size=60),
       st.lists(st.integers(0, 60), max_size=8), st.integers(1, 3), st.integers(0, 10 ** 6),
       st.sampled_from([{"count": {"key": [2, 1]}}, {"count": {"key": 2}},
                        {"reduce": {"key": 1, "value": 2, "fn": "sum"}},
                        {"reduce": {"key": 1, "value": 2, "fn": "max"}},
                        {"top": {"k": 3, "by": 2}}, {"top": {"k": 2, "by": 1, "numeric": False}},
                        "distinct", {"distinct": {"key": 1}}]))
def test_combiner_then_final_equals_the_direct_operator(rows, cuts, senders, seed, spec):
    parts = batches(rows, cuts, as_frames=True)
    direct, _ = run(spec, parts)
    ctx = OpContext(combine_rows=3)        # tiny: combiners emit partials early
    got = combined_run(spec, parts, senders, ctx, seed)
    if "reduce" in spec:
        m = parse_reduced(got, 1)
        assert [k for k, _ in m] == [k for k, _ in parse_reduced(direct, 1)]
        assert all(math.isclose(x, y) for (_, x), (_, y) in zip(m, parse_reduced(direct, 1)))
    else:
        assert got == direct


def test_word_count_pipeline():
    data = b"the cat  sat\non the\tmat the end\n\n"
    words = make_op(parse_op("words"), OpContext())
    ctx = OpContext()
    combiner = make_combiner(parse_op("count"), ctx)
    partial = []
    for w in words.push(data):
        partial += combiner.push(w)
    partial += list(combiner.finish())
    assert sum(p.height for p in partial) == 6          # only distinct words travel
    count = make_op(parse_op("count"), ctx, combined_input=True)
    top = make_combiner(parse_op({"top": {"k": 2, "by": 2}}), ctx)
    for p in partial:
        count.push(p)
    for out in count.finish():
        top.push(out)
    final = make_op(parse_op({"top": {"k": 2, "by": 2}}), ctx, combined_input=True)
    for out in top.finish():
        final.push(out)
    assert lines(b"".join(to_text(o, SEP) for o in final.finish())) == ["the\t3", "cat\t1"]


def test_count_output_types_and_batches():
    ctx = OpContext(batch_rows=2)
    op = make_op(parse_op("count"), ctx)
    op.push(b"a\nb\nc\na\n")
    out = list(op.finish())
    assert [o.height for o in out] == [2, 1]
    assert out[0].dtypes == [pl.Utf8, pl.Int64] and out[0].row(0) == ("a", 2)


def test_count_treats_numbers_and_text_alike():
    op = make_op(parse_op("count"), OpContext())
    op.push(pl.DataFrame({"k": [7, 8]}))
    op.push(b"7\n")
    assert lines(b"".join(to_text(o, SEP) for o in op.finish())) == ["7\t2", "8\t1"]


# -- join ------------------------------------------------------------------------------

def ref_join(left, right, key, rkey, how):
    out = []
    width = max((len(r) for r in right if len(r) >= max(rkey)), default=max(rkey))
    for lrow in left:
        if len(lrow) < max(key):
            continue
        lk = [lrow[k - 1] for k in key]
        matched = [r for r in right if len(r) >= max(rkey) and [r[k - 1] for k in rkey] == lk]
        for r in matched:
            out.append(SEP.join(lrow + [v for i, v in enumerate(r, 1) if i not in rkey]))
        if not matched and how == "left":
            out.append(SEP.join(lrow + [""] * (width - len(rkey))))
    return out


@SOME
@given(st.lists(st.lists(st.sampled_from(["a", "b", "c", "x1"]), min_size=1, max_size=3), max_size=15),
       st.lists(st.lists(st.sampled_from(["a", "b", "d", "r1"]), min_size=1, max_size=3), max_size=15),
       st.sampled_from(["inner", "left"]), st.integers(0, 2), st.integers(0, 10 ** 6))
def test_join(left, right, how, order, seed):
    spec = {"join": {"key": [1], "right_key": [2], "how": how}}
    op = make_op(parse_op(spec), OpContext())
    rng = random.Random(seed)
    lb = batches(left, [rng.randrange(16) for _ in range(3)], as_frames=True)
    rb = batches(right, [rng.randrange(16) for _ in range(3)], as_frames=True)
    events = [(0, x) for x in lb] + [(1, x) for x in rb]
    if order == 0:          # right first
        events = [(1, x) for x in rb] + [(0, x) for x in lb]
    elif order == 2:        # interleaved
        rng.shuffle(events)
    out = []
    rights_left = sum(1 for p, _ in events if p == 1)
    for port, batch in events:
        out += op.push(batch, port)
        if port == 1:
            rights_left -= 1
            if rights_left == 0:
                out += op.end_port(1)
    if not rb:
        out += op.end_port(1)
    out += op.end_port(0)
    out += list(op.finish())
    got = lines(b"".join(to_text(o, SEP) for o in out))
    assert sorted(got) == sorted(ref_join(left, right, [1], [2], how))
    assert op.bad.count == sum(len(r) < 2 for r in right)


def test_join_keeps_left_order_and_duplicates():
    op = make_op(parse_op({"join": {"key": 2, "right_key": 1, "how": "left"}}), OpContext())
    assert op.push(b"l1\tk\nl2\tnone\nl3\tk\nshort\n", 0) == []
    op.push(b"k\tr1\textra\nk\tr2\n", 1)
    out = op.end_port(1)
    assert lines(b"".join(to_text(o, SEP) for o in out)) == [
        "l1\tk\tr1\textra", "l1\tk\tr2", "l2\tnone\t\t", "l3\tk\tr1\textra", "l3\tk\tr2"]
    assert op.bad.count == 1 and op.bad.examples == ["short"]
    streamed = op.push(b"l4\tk\n", 0)          # right has ended: left batches stream through
    assert lines(to_text(streamed[0], SEP)) == ["l4\tk\tr1\textra", "l4\tk\tr2"]
    ragged = op.push(b"l5\tk\tmore\nl6\tk\n", 0)[0]
    assert lines(to_text(ragged, SEP))[2:] == ["l6\tk\tr1\textra", "l6\tk\tr2"]
    assert to_frame(ragged, SEP, 3)[0].get_column("3").to_list() == ["more", "more", "r1", "r2"]


# -- sort, merge, spill ----------------------------------------------------------------

def ref_sort(rows, key, numeric, reverse):
    good = [r for r in rows if len(r) >= max(key)]
    conv = num if numeric else b
    keyf = lambda r: [conv(r[k - 1]) for k in key]
    return [SEP.join(r) for r in (_stable_desc(good, keyf) if reverse else sorted(good, key=keyf))]


def _stable_desc(rows, keyf):
    """Descending order that keeps equal keys in their input order."""
    return [r for _, r in sorted(enumerate(rows), key=lambda ir: _Rev(keyf(ir[1])))]


class _Rev:
    def __init__(self, v):
        self.v = v

    def __lt__(self, other):
        return self.v > other.v


@SOME
@given(st.lists(st.lists(st.one_of(WORD, NUM), min_size=1, max_size=3), max_size=40),
       st.lists(st.integers(0, 40), max_size=4), st.sampled_from([[1], [2], [2, 1]]),
       st.booleans(), st.booleans(), st.booleans())
def test_sort(rows, cuts, key, numeric, reverse, as_frames):
    spec = {"sort": {"key": key, "numeric": numeric, "reverse": reverse}}
    out, bad = run(spec, batches(rows, cuts, as_frames), OpContext(batch_rows=7))
    assert out == ref_sort(rows, key, numeric, reverse)
    assert bad.count == sum(len(r) < max(key) for r in rows)


def test_sort_spills_to_disk_and_cleans_up(tmp_path):
    rng = random.Random(5)
    rows = [[f"{rng.randrange(10 ** 6):06d}", f"p{i}"] for i in range(200_000)]
    ctx = OpContext(spill_dir=tmp_path, memory_bytes=64 << 10, batch_rows=50_000)
    op = make_op(parse_op({"sort": {"key": 1}}), ctx)
    for i in range(0, len(rows), 10_000):
        op.push(text(rows[i:i + 10_000]) if i % 20_000 else text_to_frame(text(rows[i:i + 10_000]), SEP)[0])
    assert len(op.sorter.runs) >= 5
    assert any(tmp_path.rglob("*.arrow"))
    out = list(op.finish())
    assert all(o.height <= 50_000 for o in out)
    got = lines(b"".join(to_text(o, SEP) for o in out))
    assert got == [SEP.join(r) for r in sorted(rows, key=lambda r: r[0])]     # stable: ties keep order
    assert not any(tmp_path.rglob("*")), "spill files left behind"


def test_sort_numeric_reverse_spilling(tmp_path):
    rng = random.Random(9)
    rows = [[str(rng.choice([rng.randrange(-500, 500), "x"])), str(i)] for i in range(20_000)]
    ctx = OpContext(spill_dir=tmp_path, memory_bytes=16 << 10)
    parts = [text(rows[i:i + 3000]) for i in range(0, 20_000, 3000)]
    out, _ = run({"sort": {"key": 1, "numeric": True, "reverse": True}}, parts, ctx)
    assert out == ref_sort(rows, [1], True, True)
    assert not any(tmp_path.rglob("*"))


def test_sort_close_removes_runs(tmp_path):
    op = make_op(parse_op({"sort": {"key": 1}}), OpContext(spill_dir=tmp_path, memory_bytes=1))
    op.push(b"b\na\n")
    op.push(b"c\n")
    assert any(tmp_path.rglob("*.arrow"))
    op.close()
    assert not any(tmp_path.rglob("*"))


def ref_merge(inputs, key, numeric, reverse):
    tagged = [(i, j, r) for i, recs in enumerate(inputs) for j, r in enumerate(recs)]
    conv = num if numeric else b
    keyf = lambda t: [conv(t[2][k - 1]) for k in key]
    ordered = _stable_desc(tagged, keyf) if reverse else sorted(tagged, key=keyf)
    return [SEP.join(t[2]) for t in ordered]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.lists(st.one_of(WORD, NUM), min_size=2, max_size=3), max_size=25),
                min_size=1, max_size=4),
       st.sampled_from([[1], [2, 1]]), st.booleans(), st.booleans(), st.integers(0, 10 ** 6))
def test_sorted_merge_over_random_splits(inputs, key, numeric, reverse, seed):
    rng = random.Random(seed)
    conv = num if numeric else b
    keyf = lambda r: [conv(r[k - 1]) for k in key]
    inputs = [_stable_desc(recs, keyf) if reverse else sorted(recs, key=keyf) for recs in inputs]
    merge = SortedMerge(len(inputs), key, numeric, reverse, SEP)
    pending = []
    for i, recs in enumerate(inputs):
        cuts = sorted({rng.randrange(len(recs) + 1) for _ in range(3)} | {0, len(recs)})
        pieces = [recs[a:c] for a, c in zip(cuts, cuts[1:])] + [[]] * rng.randrange(2)
        pending.append([text(p) if rng.random() < 0.5 else text_to_frame(text(p), SEP)[0] for p in pieces])
    out = []
    live = set(range(len(inputs)))
    while live:
        wanted = merge.wanted() & live
        i = rng.choice(sorted(wanted or live))
        if pending[i]:
            merge.push(i, pending[i].pop(0))
        else:
            merge.end(i)
            live.discard(i)
        out += merge.pop()
    out += merge.pop()
    assert merge.done and merge.wanted() == set()
    got = lines(b"".join(to_text(o, SEP) for o in out))
    assert got == ref_merge(inputs, key, numeric, reverse)


def test_sorted_merge_waits_for_every_live_input():
    m = SortedMerge(3, [1])
    m.push(0, b"a\nc\n")
    assert m.wanted() == {1, 2} and m.pop() == []
    m.push(1, b"b\n")
    m.end(2)
    first = m.pop()
    assert lines(to_text(first[0], SEP)) == ["a", "b"] and m.wanted() == {1}
    m.end(1)
    assert lines(to_text(m.pop()[0], SEP)) == ["c"]
    m.push(0, b"short\tx\n")
    m.end(0)
    assert m.done is False
    m.pop()
    assert m.done


def test_sorted_merge_counts_bad_records():
    m = SortedMerge(1, [2])
    m.push(0, b"a\t1\nnofield\nb\t2\n")
    m.end(0)
    assert lines(to_text(m.pop()[0], SEP)) == ["a\t1", "b\t2"]
    assert m.bad.count == 1 and m.bad.examples == ["nofield"]
