"""Flow sources and sinks: specs, globs, chunked reading (local, memory://, gzip, S3 on a
moto server), iterables and streams; file, S3 and PostgreSQL sinks that commit once."""
from __future__ import annotations

import bz2
import gzip
import io
import os
import socket
import sys
import threading
import uuid

import fsspec
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgserver import postgres  # noqa: F401  (the fixture)
from shoal.errors import InvalidSpec, SinkError, SourceNotFound
from shoal.flows.runtime.sinks import PostgresSink, Sink, make_sink
from shoal.flows.runtime.sources import Chunk, expand, iterable_blocks, plan_chunks, read_chunk, read_stream
from shoal.flows.iospec import SourceSpec, parse_sink, parse_source

ANY = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])


def with_final_newline(data: bytes) -> bytes:
    return data if not data or data.endswith(b"\n") else data + b"\n"


def read_all(chunks, storage_options=None, block_bytes=8 << 20) -> bytes:
    out = []
    for c in chunks:
        for block in read_chunk(c, storage_options, block_bytes):
            assert block.endswith(b"\n"), "a block ends with a whole line"
            out.append(block)
    return b"".join(out)


def cuts_to_chunks(url: str, size: int, cuts: list[int]) -> list[Chunk]:
    edges = sorted({0, size, *(c for c in cuts if 0 < c < size)})
    return [Chunk(url, a, b) for a, b in zip(edges, edges[1:])]


# -- specs ------------------------------------------------------------------------------------

def test_source_forms():
    assert parse_source("data/*.txt").paths == ["data/*.txt"]
    assert parse_source(["a", "b/*.gz"]).paths == ["a", "b/*.gz"]
    assert parse_source("-").stdin and parse_source({"path": "-"}).stdin
    s = parse_source({"path": "s3://b/x/*.gz", "chunk": "128M", "storage_options": {"anon": True}})
    assert (s.paths, s.chunk, s.storage_options) == (["s3://b/x/*.gz"], 128 << 20, {"anon": True})
    assert parse_source("x").chunk == 64 << 20
    assert SourceSpec(iterable=True).iterable


@pytest.mark.parametrize("value, message", [
    ({"path": "x", "chunk": "1K"}, "read.chunk: must be at least 64K"),
    ({"path": "x", "chunk": "lots"}, "read.chunk: 'lots' is not a size"),
    ({"path": "x", "chnk": "64M"}, "read.chnk: unknown field"),
    ({"path": "x", "storage_options": "anon"}, "read.storage_options: 'anon' is not valid (expected a mapping"),
    (["a", 3], "read[1]: expected a path"),
    (["a", "-"], "'-' (stdin) cannot be combined"),
    (42, "read: expected a path, glob or URL"),
    ({}, "read: give one of a path"),
])
def test_source_errors_name_the_field(value, message):
    with pytest.raises(InvalidSpec) as e:
        parse_source(value)
    assert message in str(e.value)


def test_relative_paths_resolve_against_the_client_directory():
    src = parse_source(["data/*.txt", "~/x.txt", "file:///abs/y.txt", "s3://b/k/*.gz", "/abs/../z.txt"])
    assert src.resolved("/home/u/work").paths == [
        "/home/u/work/data/*.txt", os.path.expanduser("~/x.txt"), "/abs/y.txt", "s3://b/k/*.gz", "/z.txt"]
    assert parse_sink("out/result.tsv").resolved("/home/u").path == "/home/u/out/result.tsv"
    assert parse_sink("s3://b/out.tsv").resolved("/home/u").path == "s3://b/out.tsv"
    assert parse_sink("-").resolved("/home/u") == parse_sink("-")


def test_sink_forms():
    assert parse_sink("out.tsv").kind == "file"
    assert parse_sink({"path": "out.tsv", "overwrite": True}).overwrite
    assert parse_sink("-").stdout and parse_sink("-").kind == "stdout"
    pg = parse_sink({"postgres": "postgresql://u@127.0.0.1:5432/db", "table": "counts", "columns": ["word", "n"]})
    assert (pg.kind, pg.table, pg.columns, pg.overwrite) == ("postgres", "counts", ["word", "n"], False)
    user = parse_sink({"sink": "pkg.mod:Cls", "options": {"a": 1}})
    assert (user.kind, user.options) == ("user", {"a": 1})


@pytest.mark.parametrize("value, message", [
    ({"postgres": "postgresql://u@h/db"}, "write.table: required with postgres"),
    ({"postgres": "postgresql://u@h/db", "table": "drop table x;"}, "write.table: expected a table name"),
    ({"postgres": "mysql", "table": "t"}, "write.postgres: expected a connection URL"),
    ({"path": "o", "table": "t"}, "write.table: only a postgres sink"),
    ({"path": "o", "postgres": "postgresql://u@h/db", "table": "t"}, "got path and postgres"),
    ({"sink": "nocolon"}, "write.sink: expected 'package.module:ClassName'"),
    ({"path": "o", "options": {"a": 1}}, "write.options: only a user sink"),
    ({"path": "o", "overwrite": "perhaps"}, "write.overwrite: 'perhaps' is not valid (expected true or false)"),
    ({"pth": "o"}, "write.pth: unknown field"),
    ({"stdout": True, "overwrite": True}, "write.overwrite: a stdout sink"),
    (7, "write: expected a path or URL"),
])
def test_sink_errors_name_the_field(value, message):
    with pytest.raises(InvalidSpec) as e:
        parse_sink(value)
    assert message in str(e.value)


# -- expanding and chunking -------------------------------------------------------------------

def test_expand_orders_each_pattern_and_names_every_miss(tmp_path):
    for name in ("b.txt", "a.txt", "c.log", "sub/z.txt", "sub/y.txt", "sub/.hidden", "sub/_SUCCESS"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x\n")
    got = expand([f"{tmp_path}/sub/*.txt", f"{tmp_path}/*.txt", f"{tmp_path}/a.txt", f"file://{tmp_path}/c.log"])
    assert got == [f"{tmp_path}/sub/y.txt", f"{tmp_path}/sub/z.txt", f"{tmp_path}/a.txt",
                   f"{tmp_path}/b.txt", f"{tmp_path}/c.log"]
    assert expand([str(tmp_path / "sub")]) == [f"{tmp_path}/sub/y.txt", f"{tmp_path}/sub/z.txt"]
    with pytest.raises(SourceNotFound) as e:
        expand([f"{tmp_path}/*.csv", f"{tmp_path}/a.txt", f"{tmp_path}/missing.txt"])
    assert e.value.problems == [f"read: {tmp_path}/*.csv matched no files",
                                f"read: {tmp_path}/missing.txt matched no files"]
    assert isinstance(e.value, InvalidSpec)


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    (tmp_path / "in.txt").write_bytes(b"a\n")
    monkeypatch.chdir(tmp_path)
    assert plan_chunks(parse_source("*.txt")) == [Chunk(str(tmp_path / "in.txt"), 0, 2)]


def test_plan_chunks_sizes(tmp_path):
    (tmp_path / "big.txt").write_bytes(b"x" * 99 + b"\n" * 1 + b"y\n" * (500_000 // 2))
    (tmp_path / "empty.txt").write_bytes(b"")
    size = (tmp_path / "big.txt").stat().st_size
    chunks = plan_chunks(SourceSpec(paths=[str(tmp_path / "*.txt")], chunk="64K"))
    assert all(c.url.endswith("big.txt") for c in chunks), "an empty file has no chunks"
    assert chunks[0].start == 0 and chunks[-1].end == size
    assert all(a.end == b.start for a, b in zip(chunks, chunks[1:]))
    assert all(c.end - c.start <= (64 << 10) * 1.1 for c in chunks)
    assert len(chunks) == round(size / (64 << 10) + 0.4)
    assert read_all(chunks) == (tmp_path / "big.txt").read_bytes()


lines_st = st.lists(st.tuples(st.integers(0, 40), st.sampled_from([b"\n", b"\r\n"])), max_size=60)


@ANY
@given(lines=lines_st, final_newline=st.booleans(), cuts=st.lists(st.integers(0, 3000), max_size=8),
       block_bytes=st.sampled_from([1, 7, 64, 1 << 20]))
def test_every_line_read_by_exactly_one_chunk(tmp_path_factory, lines, final_newline, cuts, block_bytes):
    data = b"".join(b"%d" % i + b"w" * n + end for i, (n, end) in enumerate(lines))
    if data and not final_newline:
        data = data[:-1]
    expected = with_final_newline(data)
    path = tmp_path_factory.getbasetemp() / f"chunks-{uuid.uuid4().hex}.txt"
    path.write_bytes(data)
    mem = f"memory://flowio-{uuid.uuid4().hex}/f.txt"
    with fsspec.open(mem, "wb") as f:
        f.write(data)
    try:
        assert read_all(cuts_to_chunks(str(path), len(data), cuts), block_bytes=block_bytes) == expected
        assert read_all(cuts_to_chunks(mem, len(data), cuts), block_bytes=block_bytes) == expected
        # a cut past the end of the file, or an empty range, reads nothing twice
        assert read_all([Chunk(str(path), 0, len(data) + 10), Chunk(str(path), len(data) + 10, len(data) + 20)]) \
            == expected
    finally:
        path.unlink()
        fsspec.filesystem("memory").rm(mem)


def test_long_lines_and_chunks_inside_one_line(tmp_path):
    data = b"a" * 300_000 + b"\n" + b"b\n" + b"c" * 200_000
    (tmp_path / "f").write_bytes(data)
    chunks = plan_chunks(SourceSpec(paths=[str(tmp_path / "f")], chunk="64K"))
    assert len(chunks) > 5
    assert read_all(chunks, block_bytes=1000) == data + b"\n"
    owned = [b"".join(read_chunk(c)) for c in chunks]
    assert owned[0] == b"a" * 300_000 + b"\n" and owned.count(b"") == len(chunks) - 2


def test_compressed_files_are_read_whole(tmp_path):
    lines = b"".join(b"line %d\n" % i for i in range(20_000))
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "b.txt.bz2").write_bytes(bz2.compress(b"no newline at end"))
    chunks = plan_chunks(SourceSpec(paths=[str(tmp_path / "*")], chunk="64K"))
    assert chunks == [Chunk(str(tmp_path / "a.txt.gz"), 0, None), Chunk(str(tmp_path / "b.txt.bz2"), 0, None)]
    assert read_all(chunks[:1], block_bytes=4096) == lines
    assert read_all(chunks[1:]) == b"no newline at end\n"


def test_compression_without_its_package_is_named(tmp_path):
    from fsspec.utils import infer_compression
    if infer_compression("x.zst"):
        pytest.skip("zstandard is installed: .zst files are readable here")
    (tmp_path / "a.txt.zst").write_bytes(b"\x28\xb5\x2f\xfd not text")
    with pytest.raises(InvalidSpec, match="a.txt.zst is compressed; install zstandard"):
        plan_chunks(SourceSpec(paths=[str(tmp_path / "*")]))


# -- streams and iterables --------------------------------------------------------------------

@given(data=st.binary(max_size=2000).map(lambda b: b.replace(b"\x00", b"\n")), block=st.integers(1, 300))
def test_read_stream_whole_lines(data, block):
    blocks = list(read_stream(io.BytesIO(data), block))
    assert all(b.endswith(b"\n") for b in blocks)
    assert b"".join(blocks) == with_final_newline(data)


def test_read_stream_from_a_pipe_passes_lines_on_without_waiting():
    r, w = os.pipe()
    got_first = threading.Event()

    def producer():
        os.write(w, b"first\nsec")
        got_first.wait(10)
        os.write(w, b"ond\n" + b"x\n" * 100_000 + b"tail")
        os.close(w)

    t = threading.Thread(target=producer)
    t.start()
    with os.fdopen(r, "rb") as f:
        blocks = []
        for b in read_stream(f, block_bytes=1 << 20):
            if not blocks:
                assert b == b"first\n"
                got_first.set()
            blocks.append(b)
    t.join()
    assert b"".join(blocks) == b"first\nsecond\n" + b"x\n" * 100_000 + b"tail\n"


@given(rows=st.lists(st.lists(st.one_of(st.integers(), st.text(alphabet=st.characters(
    blacklist_characters="\t\n", blacklist_categories=["Cs"]))), min_size=1, max_size=4), max_size=50),
    block_records=st.integers(1, 10))
def test_iterable_blocks_of_field_tuples(rows, block_records):
    blocks = list(iterable_blocks([tuple(r) for r in rows], "\t", block_records))
    assert all(b.endswith(b"\n") and 1 <= b.count(b"\n") <= block_records for b in blocks)
    assert b"".join(blocks).decode().split("\n")[:-1] == ["\t".join(map(str, r)) for r in rows]


def test_iterable_blocks_lines_and_errors():
    assert list(iterable_blocks(["a", "b\n", b"c", b"d\n", ("x", 1, 2.5), [None, ""]], sep=",")) \
        == [b"a\nb\nc\nd\nx,1,2.5\nNone,\n"]
    assert list(iterable_blocks([])) == []
    for items, message in [([("ok",), ("a", "b\tc")], "items[1]: field 2 holds the separator '\\t'"),
                           ([("a\nb",)], "items[0]: field 1 holds a newline"),
                           (["one", "two\nthree"], "items[1]: a line cannot hold a newline"),
                           ([b"x", 3.5], "items[1]: expected a str line, bytes, or a tuple"),
                           ([("a,b",)], "items[0]: field 1 holds the separator ','")]:
        with pytest.raises(InvalidSpec, match=None) as e:
            list(iterable_blocks(items, sep="," if "','" in message else "\t"))
        assert message in str(e.value)


# -- file sinks -------------------------------------------------------------------------------

def write_parts(sink: Sink, run: str, attempt: int, data: list[list[bytes]], order=None) -> None:
    for i in order if order is not None else range(len(data)):
        w = sink.part(run, attempt, i)
        for batch in data[i]:
            w.write(batch)
        w.close()


PARTS = [[b"a\t1\n", b"b\t2\n"], [], [b"c\t3\n"], [b"d\t4\n" * 1000, b"e\t5\n"]]


def test_file_sink_joins_parts_in_index_order(tmp_path):
    target = tmp_path / "out.tsv"
    sink = make_sink(parse_sink(str(target)))
    sink.check()
    write_parts(sink, "r1", 1, PARTS, order=[3, 0, 2, 1])
    assert not target.exists(), "nothing is visible before commit"
    sink.commit("r1", 1, len(PARTS))
    assert target.read_bytes() == b"".join(b"".join(p) for p in PARTS)
    assert os.listdir(tmp_path) == ["out.tsv"]
    sink.commit("r1", 1, len(PARTS))                      # a second commit does nothing
    assert target.read_bytes() == b"".join(b"".join(p) for p in PARTS)
    assert os.listdir(tmp_path) == ["out.tsv"]


def test_file_sink_one_part_is_renamed(tmp_path):
    sink = make_sink(parse_sink({"path": f"file://{tmp_path}/one.txt"}))
    write_parts(sink, "r", 2, [[b"x\n"]])
    sink.commit("r", 2, 1)
    sink.commit("r", 2, 1)
    assert (tmp_path / "one.txt").read_bytes() == b"x\n" and os.listdir(tmp_path) == ["one.txt"]


def test_file_sink_refuses_an_existing_target_without_overwrite(tmp_path):
    target = tmp_path / "out.tsv"
    target.write_bytes(b"old\n")
    with pytest.raises(InvalidSpec) as e:
        make_sink(parse_sink(str(target))).check()
    assert str(target) in str(e.value) and "overwrite: true" in str(e.value)
    sink = make_sink(parse_sink({"path": str(target), "overwrite": True}))
    sink.check()
    write_parts(sink, "r", 1, PARTS)
    sink.commit("r", 1, len(PARTS))
    assert target.read_bytes() == b"".join(b"".join(p) for p in PARTS)


def test_file_sink_checks_again_at_commit(tmp_path):
    target = tmp_path / "out.tsv"
    sink = make_sink(parse_sink(str(target)))
    sink.check()
    write_parts(sink, "r", 1, PARTS)
    target.write_bytes(b"someone else's\n")
    with pytest.raises(InvalidSpec, match="overwrite: true"):
        sink.commit("r", 1, len(PARTS))
    assert target.read_bytes() == b"someone else's\n"
    sink.abort("r", 1, len(PARTS))
    assert os.listdir(tmp_path) == ["out.tsv"]


def test_file_sink_check_names_a_missing_directory(tmp_path):
    with pytest.raises(InvalidSpec, match=f"directory {tmp_path}/nope does not exist"):
        make_sink(parse_sink(str(tmp_path / "nope" / "out.tsv"))).check()
    with pytest.raises(InvalidSpec, match="is a directory"):
        make_sink(parse_sink({"path": str(tmp_path), "overwrite": True})).check()


def test_failed_attempt_never_appears(tmp_path):
    target = tmp_path / "out.tsv"
    sink = make_sink(parse_sink(str(target)))
    w0 = sink.part("r", 1, 0)
    w0.write(b"attempt 1\n")
    w0.close()
    w1 = sink.part("r", 1, 1)
    w1.write(b"half of attempt 1\n")
    w1.discard()                                          # instance 1 failed
    assert len(os.listdir(tmp_path)) == 1
    with pytest.raises(SinkError, match="missing part"):
        sink.commit("r", 1, 2)
    sink.abort("r", 1, 2)
    assert os.listdir(tmp_path) == []
    write_parts(sink, "r", 2, [[b"attempt 2 part 0\n"], [b"attempt 2 part 1\n"]])
    sink.commit("r", 2, 2)
    assert target.read_bytes() == b"attempt 2 part 0\nattempt 2 part 1\n"
    assert os.listdir(tmp_path) == ["out.tsv"]
    sink.abort("r", 1, 2)                                  # leftovers of an old attempt: nothing to do
    assert target.read_bytes() == b"attempt 2 part 0\nattempt 2 part 1\n"


def test_long_names_still_make_valid_part_files(tmp_path):
    name, run = "r" * 200 + ".tsv", "flow-" + "x" * 150
    sink = make_sink(parse_sink(str(tmp_path / name)))
    write_parts(sink, run, 1, [[b"a\n"], [b"b\n"]])
    sink.commit(run, 1, 2)
    assert (tmp_path / name).read_bytes() == b"a\nb\n" and os.listdir(tmp_path) == [name]


def test_commit_of_unknown_run_is_an_error(tmp_path):
    sink = make_sink(parse_sink(str(tmp_path / "out.tsv")))
    with pytest.raises(SinkError, match="nothing to commit"):
        sink.commit("never", 1, 3)
    with pytest.raises(InvalidSpec, match="run:"):
        sink.part("../x", 1, 0)


def test_memory_url_sink(tmp_path):
    url = f"memory://sink-{uuid.uuid4().hex}/out.tsv"
    sink = make_sink(parse_sink(url))
    sink.check()
    write_parts(sink, "r", 1, PARTS)
    sink.commit("r", 1, len(PARTS))
    sink.commit("r", 1, len(PARTS))
    fs = fsspec.filesystem("memory")
    assert fs.cat(url) == b"".join(b"".join(p) for p in PARTS)
    assert [p.rsplit("/", 1)[1] for p in fs.ls(url.rsplit("/", 1)[0], detail=False)] == ["out.tsv"]
    with pytest.raises(InvalidSpec, match="overwrite: true"):
        sink.check()
    fs.rm(url.rsplit("/", 1)[0], recursive=True)


# -- user sinks ---------------------------------------------------------------------------------

USER_SINK = '''
from shoal.flows.runtime.sinks import Sink

class Collect(Sink):
    committed = []

    def __init__(self, label):
        self.label = label

    def part(self, run, attempt, index):
        sink = self
        class W:
            def write(self, data): sink.committed.append((sink.label, index, sink.sep, data))
            def close(self): pass
            def discard(self): pass
        return W()

    def commit(self, run, attempt, parts):
        self.committed.append(("commit", run, attempt, parts))

class NotASink:
    pass
'''


def test_user_sink(tmp_path, monkeypatch):
    (tmp_path / "my_flow_sinks.py").write_text(USER_SINK)
    monkeypatch.syspath_prepend(str(tmp_path))
    sink = make_sink(parse_sink({"sink": "my_flow_sinks:Collect", "options": {"label": "L"}}), sep=",")
    sink.check()
    sink.part("r", 1, 0).write(b"a,b\n")
    sink.commit("r", 1, 1)
    assert sink.committed == [("L", 0, ",", b"a,b\n"), ("commit", "r", 1, 1)]
    for value, message in [({"sink": "no_such_module_xyz:Cls"}, "write.sink: cannot import no_such_module_xyz"),
                           ({"sink": "my_flow_sinks:Nope"}, "write.sink: module my_flow_sinks has no Nope"),
                           ({"sink": "my_flow_sinks:NotASink"}, "is not a subclass of shoal.flows.runtime.sinks.Sink"),
                           ({"sink": "my_flow_sinks:Collect", "options": {"colour": 1}}, "write.options:")]:
        with pytest.raises(InvalidSpec) as e:
            make_sink(parse_sink(value))
        assert message in str(e.value)
    sys.modules.pop("my_flow_sinks", None)


# -- S3 (moto server) ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3():
    """storage_options for a moto S3 server on loopback, with a bucket `flows`."""
    from moto.server import ThreadedMotoServer
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        opts = {"key": "testing", "secret": "testing", "client_kwargs": {
            "endpoint_url": f"http://127.0.0.1:{port}"}, "skip_instance_cache": True}
        fs = fsspec.filesystem("s3", **opts)
        fs.mkdir("flows")
        yield opts
    finally:
        server.stop()


def test_s3_source_glob_and_chunks(s3):
    fs = fsspec.filesystem("s3", **s3)
    big = b"".join(b"row %d of the big object\n" % i for i in range(12_000))   # ~320K: 5 chunks
    fs.pipe({"flows/logs/b.txt": big, "flows/logs/a.txt": b"one\ntwo", "flows/logs/c.txt.gz": gzip.compress(b"z\n"),
             "flows/other/x.txt": b"x\n"})
    spec = parse_source({"path": "s3://flows/logs/*", "chunk": "64K", "storage_options": s3})
    assert expand(spec.paths, s3) == ["s3://flows/logs/a.txt", "s3://flows/logs/b.txt", "s3://flows/logs/c.txt.gz"]
    chunks = plan_chunks(spec)
    assert len(chunks) == 1 + 5 + 1 and chunks[-1].end is None
    assert read_all(chunks, s3, block_bytes=10_000) == b"one\ntwo\n" + big + b"z\n"
    with pytest.raises(SourceNotFound, match="s3://flows/nothing/\\*.txt matched no files"):
        expand(["s3://flows/nothing/*.txt"], s3)


def test_s3_file_sink(s3):
    fs = fsspec.filesystem("s3", **s3)
    sink = make_sink(parse_sink({"path": "s3://flows/out/result.tsv", "storage_options": s3}))
    sink.check()
    write_parts(sink, "run7", 1, PARTS, order=[2, 3, 1, 0])
    assert not fs.exists("flows/out/result.tsv")
    sink.commit("run7", 1, len(PARTS))
    sink.commit("run7", 1, len(PARTS))
    fs.invalidate_cache()
    assert fs.cat("flows/out/result.tsv") == b"".join(b"".join(p) for p in PARTS)
    assert fs.ls("flows/out", detail=False) == ["flows/out/result.tsv"]
    with pytest.raises(InvalidSpec, match="s3://flows/out/result.tsv exists"):
        sink.check()
    with pytest.raises(InvalidSpec, match="bucket nobucket does not exist"):
        make_sink(parse_sink({"path": "s3://nobucket/x.tsv", "storage_options": s3})).check()


def test_s3_file_sink_joins_large_parts_in_the_store(s3):
    fs = fsspec.filesystem("s3", **s3)
    big = [[b"%d\n" % i * (3 << 20)] for i in range(2)] + [[b"last\n"]]   # 6M, 6M, small
    sink = make_sink(parse_sink({"path": "s3://flows/merged/all.txt", "storage_options": s3}))
    write_parts(sink, "r", 3, big)
    sink.commit("r", 3, 3)
    fs.invalidate_cache()
    assert fs.cat("flows/merged/all.txt") == b"".join(p[0] for p in big)
    assert fs.ls("flows/merged", detail=False) == ["flows/merged/all.txt"]


# -- PostgreSQL ---------------------------------------------------------------------------------

@pytest.fixture
def pg(postgres):
    """A connection and a fresh table `counts_<n>(word text, n int)`; dropped after."""
    table = f"counts_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (word text, n integer)")
        yield conn, table
        conn.execute(f"DROP TABLE {table}")
        for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (f"{table}__%",)):
            conn.execute(f'DROP TABLE "{t}"')


def rows(conn, table):
    return sorted(conn.execute(f"SELECT * FROM {table}").fetchall())


def staging_tables(conn, table):
    return conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (f"{table}__%",)).fetchall()


def test_postgres_rows_arrive_exactly_once(postgres, pg):
    conn, table = pg
    sink = make_sink(parse_sink({"postgres": postgres, "table": table}))
    sink.check()
    write_parts(sink, "r1", 1, [[b"apple\t3\n", b"pear\t5\n"], [], [b"fig\t1\n"]])
    assert rows(conn, table) == [], "nothing is visible before commit"
    sink.commit("r1", 1, 3)
    sink.commit("r1", 1, 3)
    assert rows(conn, table) == [("apple", 3), ("fig", 1), ("pear", 5)]
    assert staging_tables(conn, table) == []
    assert conn.execute("SELECT parts FROM shoal_commits WHERE run = 'r1' AND target = %s",
                        (f'"{table}"',)).fetchall() == [(3,)]


def test_postgres_abort_leaves_the_table_unchanged(postgres, pg):
    conn, table = pg
    conn.execute(f"INSERT INTO {table} VALUES ('old', 1)")
    sink = make_sink(parse_sink({"postgres": postgres, "table": table, "overwrite": True}))
    write_parts(sink, "r2", 1, [[b"new\t2\n"], [b"newer\t3\n"]])
    w = sink.part("r2", 1, 2)
    w.write(b"failed\t9\n")
    w.discard()
    assert len(staging_tables(conn, table)) == 2
    with pytest.raises(SinkError, match="missing part"):
        sink.commit("r2", 1, 3)
    sink.abort("r2", 1, 3)
    assert rows(conn, table) == [("old", 1)]
    assert staging_tables(conn, table) == []
    write_parts(sink, "r2", 2, [[b"new\t2\n"]])
    sink.commit("r2", 2, 1)                                 # overwrite: the old rows go in the same transaction
    assert rows(conn, table) == [("new", 2)]


def test_postgres_values_survive(postgres, pg):
    conn, table = pg
    values = ["back\\slash", "\\N", "\\.", "ünïcødé ✓ 漢字", "quote ' and \"", "comma, semicolon;", "", "trailing \\",
              "cr\rinside"]
    data = "".join(f"{v}\t{i}\n" for i, v in enumerate(values)).encode()
    sink = make_sink(parse_sink({"postgres": postgres, "table": table}))
    write_parts(sink, "r3", 1, [[data]])
    sink.commit("r3", 1, 1)
    assert rows(conn, table) == sorted((v, i) for i, v in enumerate(values))
    # another separator: tabs are then ordinary characters of a value
    conn.execute(f"TRUNCATE {table}")
    sink = make_sink(parse_sink({"postgres": postgres, "table": table}), sep="|")
    write_parts(sink, "r3", 2, [[b"tab\there|1\nback\\tslash|2\n"]])
    sink.commit("r3", 2, 1)
    assert rows(conn, table) == [("back\\tslash", 2), ("tab\there", 1)]


def test_postgres_columns_and_bad_rows(postgres, pg):
    conn, table = pg
    conn.execute(f"ALTER TABLE {table} ADD COLUMN id serial NOT NULL")
    sink = make_sink(parse_sink({"postgres": postgres, "table": table, "columns": ["n", "word"]}))
    sink.check()
    write_parts(sink, "r4", 1, [[b"7\tseven\n"]])
    sink.commit("r4", 1, 1)
    assert conn.execute(f"SELECT word, n, id FROM {table}").fetchall() == [("seven", 7, 1)]
    w = sink.part("r4", 2, 0)
    w.write(b"not a number\tx\n")
    with pytest.raises(SinkError, match="invalid input syntax for type integer"):
        w.close()
    assert staging_tables(conn, table) == []


def test_postgres_check_names_what_is_wrong(postgres, pg):
    conn, table = pg
    with pytest.raises(InvalidSpec, match="write.table: table no_such_table does not exist"):
        make_sink(parse_sink({"postgres": postgres, "table": "no_such_table"})).check()
    with pytest.raises(InvalidSpec, match=f"write.columns: table {table} has no column colour"):
        make_sink(parse_sink({"postgres": postgres, "table": table, "columns": ["word", "colour"]})).check()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(InvalidSpec, match=f"write.postgres: cannot connect to postgresql://u:\\*\\*\\*@127.0.0.1:{closed}"):
        PostgresSink(f"postgresql://u:secret@127.0.0.1:{closed}/db", table).check()


def test_postgres_schema_qualified_and_long_names(postgres, pg):
    conn, _ = pg
    schema = f"s_{uuid.uuid4().hex[:6]}"
    table = "a_table_with_a_rather_long_name_that_nearly_fills_the_limit"
    conn.execute(f'CREATE SCHEMA {schema}; CREATE TABLE {schema}.{table} (word text, n integer)')
    try:
        sink = make_sink(parse_sink({"postgres": postgres, "table": f"{schema}.{table}"}))
        sink.check()
        write_parts(sink, "a-run.with.dots", 12, [[b"x\t1\n"], [b"y\t2\n"]])
        sink.commit("a-run.with.dots", 12, 2)
        assert rows(conn, f"{schema}.{table}") == [("x", 1), ("y", 2)]
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,)).fetchone() == (2,)
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
