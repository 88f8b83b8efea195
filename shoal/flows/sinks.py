"""Where a flow's output goes, committed exactly once.

The last stage of a flow runs N instances (0..N-1), each in its own process, maybe on its
own machine, and a run may be tried again (attempt 1, 2, ...). So a sink works in three
steps, and only the attempt that succeeded ever becomes visible:

    sink.check()                          before any task starts: is the place usable?
    w = sink.part(run, attempt, index)    in each instance: w.write(batch)..., then
                                          w.close() (complete) or w.discard() (failed)
    sink.commit(run, attempt, parts)      once, in the driver, after the whole flow succeeded
    sink.abort(run, attempt, parts)       instead, to remove a failed attempt's leftovers

commit is idempotent: called again after it succeeded, it does nothing. Batches given to
write() are TEXT: bytes of whole lines, fields split by the flow's separator (`sink.sep`).

Built in: FileSink (a file or fsspec URL: parts are hidden files next to the target,
joined in index order and renamed into place at commit), PostgresSink (each part COPYs
into its own staging table; commit moves them all into the table in one transaction that
also records the commit), StdoutSink.

A user sink is a subclass of Sink named in the flow as `write: {sink: "module:Class",
options: {...}}`; it is built as Class(**options) in the driver and in every instance,
so it should hold only plain settings. For example, one JSON file per part:

    import contextlib, json, os
    from shoal.errors import InvalidSpec
    from shoal.flows.sinks import Sink

    class JsonLines(Sink):
        def __init__(self, directory: str):
            self.directory = directory

        def check(self):
            if not os.path.isdir(self.directory):
                raise InvalidSpec([f"write.options.directory: {self.directory} does not exist"])

        def part(self, run, attempt, index):
            return JsonPart(os.path.join(self.directory, f".{run}.{attempt}.{index}"), self.sep)

        def commit(self, run, attempt, parts):
            for i in range(parts):
                tmp = os.path.join(self.directory, f".{run}.{attempt}.{i}")
                if os.path.exists(tmp):
                    os.replace(tmp, os.path.join(self.directory, f"part-{i}.jsonl"))

        def abort(self, run, attempt, parts):
            for i in range(parts):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.directory, f".{run}.{attempt}.{i}"))

    class JsonPart:
        def __init__(self, path, sep):
            self.path, self.sep, self.f = path, sep, open(path, "w")
        def write(self, data: bytes):
            for line in data.decode().splitlines():
                self.f.write(json.dumps(line.split(self.sep)) + "\\n")
        def close(self):
            self.f.close()
        def discard(self):
            self.f.close()
            os.unlink(self.path)
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import os
import posixpath
import re
import sys
from typing import BinaryIO, Protocol

from ..errors import InvalidSpec, SinkError
from .iospec import SinkSpec

RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}\Z")
NAME_MAX = 255             # bytes in a file name
PG_NAME_MAX = 63            # bytes in a PostgreSQL identifier
S3_MIN_PART = 5 << 20       # an S3 multipart copy needs every part but the last this large
S3_MAX_PART = 5 << 30
COPY_BLOCK = 8 << 20


class PartWriter(Protocol):
    def write(self, data: bytes) -> None:
        """A TEXT batch: whole lines, fields split by the separator."""

    def close(self) -> None:
        """Flush and make durable: the part is complete."""

    def discard(self) -> None:
        """The instance failed: remove what was written."""


class Sink:
    """Base of every sink. `sep` is the flow's field separator."""
    sep: str = "\t"

    def check(self) -> None:
        """Before any task starts: raise InvalidSpec naming what makes the place unusable."""

    def part(self, run: str, attempt: int, index: int) -> PartWriter:
        raise NotImplementedError

    def commit(self, run: str, attempt: int, parts: int) -> None:
        raise NotImplementedError

    def abort(self, run: str, attempt: int, parts: int) -> None:
        """Remove what a failed attempt left; nothing by default."""


def _check_ids(run: str, attempt: int, index: int | None = None) -> None:
    if not isinstance(run, str) or not RUN_ID.match(run):
        raise InvalidSpec([f"run: expected letters, digits, '_', '.' and '-' (got {run!r})"])
    if not isinstance(attempt, int) or attempt < 0:
        raise InvalidSpec([f"attempt: expected a whole number, 0 or more (got {attempt!r})"])
    if index is not None and (not isinstance(index, int) or index < 0):
        raise InvalidSpec([f"index: expected a whole number, 0 or more (got {index!r})"])


def make_sink(spec: SinkSpec, sep: str = "\t") -> Sink:
    """The sink a SinkSpec describes. A user sink class that cannot be imported or built
    raises InvalidSpec naming it."""
    if spec.kind == "file":
        sink: Sink = FileSink(spec.path, overwrite=spec.overwrite, storage_options=spec.storage_options)
    elif spec.kind == "postgres":
        sink = PostgresSink(spec.postgres, spec.table, columns=spec.columns, overwrite=spec.overwrite)
    elif spec.kind == "stdout":
        sink = StdoutSink()
    else:
        sink = _user_sink(spec)
    sink.sep = sep
    return sink


def _user_sink(spec: SinkSpec) -> Sink:
    module_name, _, attr = spec.sink.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:
        raise InvalidSpec([f"write.sink: cannot import {module_name} ({type(e).__name__}: {e})"]) from None
    for name in attr.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            raise InvalidSpec([f"write.sink: module {module_name} has no {attr}"])
    if not (isinstance(obj, type) and issubclass(obj, Sink)):
        raise InvalidSpec([f"write.sink: {spec.sink} is not a subclass of shoal.flows.sinks.Sink"])
    try:
        return obj(**spec.options)
    except TypeError as e:
        raise InvalidSpec([f"write.options: {spec.sink} does not take these options ({e})"]) from None


# -- files ----------------------------------------------------------------------------------

def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_file(out_fd: int, path: str) -> None:
    """Append the file at `path` to out_fd in the kernel (copy_file_range, else sendfile)."""
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        left = os.fstat(fd).st_size
        use_range = hasattr(os, "copy_file_range")
        while left > 0:
            n = min(left, 1 << 30)
            if use_range:
                try:
                    n = os.copy_file_range(fd, out_fd, n)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    use_range = False
                    continue
            else:
                n = os.sendfile(out_fd, fd, None, n)
            if n == 0:
                break
            left -= n


class _LocalPart:
    def __init__(self, path: str):
        self.path = path
        self.f: BinaryIO | None = open(path, "wb", buffering=1 << 20)

    def write(self, data: bytes) -> None:
        self.f.write(data)

    def close(self) -> None:
        if self.f is not None:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            self.f = None

    def discard(self) -> None:
        if self.f is not None:
            with contextlib.suppress(OSError):
                self.f.close()
            self.f = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class _RemotePart:
    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path
        self.f = fs.open(path, "wb")

    def write(self, data: bytes) -> None:
        self.f.write(data)

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None

    def discard(self) -> None:
        if self.f is not None:
            with contextlib.suppress(Exception):
                if hasattr(self.f, "discard"):
                    self.f.discard()
                else:
                    self.f.close()
            self.f = None
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path)


class FileSink(Sink):
    """One file (local path or fsspec URL). Instance i writes the hidden part
    `.<name>.<run>.<attempt>.<i>.part` next to the target; commit joins the parts in
    index order into `.<name>.<run>.<attempt>.ready` and renames that onto the target
    (refusing to replace an existing file unless overwrite)."""

    def __init__(self, path: str, overwrite: bool = False, storage_options: dict | None = None):
        self.url = path
        self.overwrite = overwrite
        self.storage_options = dict(storage_options or {})
        self.local = _is_local(path)
        if self.local:
            self.fs = None
            self.path = os.path.abspath(os.path.expanduser(path.removeprefix("file://")))
            self.dir, self.name = os.path.split(self.path)
        else:
            from fsspec.core import url_to_fs
            try:
                self.fs, self.path = url_to_fs(path, **self.storage_options)
            except ImportError as e:
                raise InvalidSpec([f"write: {path}: {e} (install the package for this protocol, "
                                   f"e.g. s3fs for s3://)"]) from None
            except (ValueError, TypeError) as e:
                raise InvalidSpec([f"write: {path}: {e}"]) from None
            self.dir, self.name = posixpath.split(self.path)
        if not self.name:
            raise InvalidSpec([f"write: {path} names a directory (give a file path)"])

    # names

    def _join(self, name: str) -> str:
        return os.path.join(self.dir, name) if self.local else posixpath.join(self.dir, name)

    def _prefix(self, run: str, attempt: int) -> str:
        """`.<name>.<run>.<attempt>`, shortened by a digest where a file name would be too long."""
        prefix = f".{self.name}.{run}.{attempt}"
        if len(prefix.encode()) > NAME_MAX - 32:
            digest = hashlib.sha1(f"{self.name}/{run}".encode()).hexdigest()[:20]
            prefix = f".{self.name.encode()[:100].decode(errors='ignore')}.{digest}.{attempt}"
        return prefix

    def part_path(self, run: str, attempt: int, index: int) -> str:
        return self._join(f"{self._prefix(run, attempt)}.{index}.part")

    def _temp(self, run: str, attempt: int, what: str) -> str:
        return self._join(f"{self._prefix(run, attempt)}.{what}")

    def _exists_error(self) -> InvalidSpec:
        return InvalidSpec([f"write: {self.url} exists (set overwrite: true to replace it)"])

    # the steps

    def check(self) -> None:
        if self.local:
            if not os.path.isdir(self.dir):
                raise InvalidSpec([f"write: {self.url}: directory {self.dir} does not exist (create it first)"])
            if not os.access(self.dir, os.W_OK):
                raise InvalidSpec([f"write: {self.url}: directory {self.dir} is not writable"])
            if os.path.isdir(self.path):
                raise InvalidSpec([f"write: {self.url} is a directory (give a file path)"])
            if os.path.lexists(self.path) and not self.overwrite:
                raise self._exists_error()
            return
        try:
            self.fs.invalidate_cache()
            bucket = self.path.split("/")[0]
            if self.fs.protocol and set(self.fs.protocol if isinstance(self.fs.protocol, (list, tuple))
                                        else [self.fs.protocol]) & {"s3", "s3a", "gs", "gcs", "abfs", "az"}:
                if not self.fs.exists(bucket):
                    raise InvalidSpec([f"write: {self.url}: bucket {bucket} does not exist"])
            if self.fs.isdir(self.path):
                raise InvalidSpec([f"write: {self.url} is a directory (give a file path)"])
            if self.fs.exists(self.path) and not self.overwrite:
                raise self._exists_error()
        except InvalidSpec:
            raise
        except Exception as e:
            raise InvalidSpec([f"write: {self.url}: cannot reach it ({type(e).__name__}: {e})"]) from None

    def part(self, run: str, attempt: int, index: int) -> PartWriter:
        _check_ids(run, attempt, index)
        path = self.part_path(run, attempt, index)
        try:
            return _LocalPart(path) if self.local else _RemotePart(self.fs, path)
        except OSError as e:
            raise SinkError(f"write: {self.url}: cannot create part {path}: {e}") from e

    def commit(self, run: str, attempt: int, parts: int) -> None:
        _check_ids(run, attempt)
        paths = [self.part_path(run, attempt, i) for i in range(parts)]
        try:
            if self.local:
                self._commit_local(run, attempt, paths)
            else:
                self._commit_remote(run, attempt, paths)
        except (InvalidSpec, SinkError):
            raise
        except Exception as e:
            raise SinkError(f"write: {self.url}: commit of run {run} attempt {attempt} failed "
                            f"({type(e).__name__}: {e})") from e

    def abort(self, run: str, attempt: int, parts: int) -> None:
        _check_ids(run, attempt)
        names = [self.part_path(run, attempt, i) for i in range(parts)]
        names += [self._temp(run, attempt, "concat"), self._temp(run, attempt, "ready")]
        for p in names:
            with contextlib.suppress(FileNotFoundError):
                if self.local:
                    os.unlink(p)
                else:
                    self.fs.rm(p)

    # local files

    def _missing_error(self, run: str, attempt: int, paths: list[str], missing: list[int]) -> SinkError:
        if len(missing) == len(paths):
            return SinkError(f"write: {self.url}: nothing to commit for run {run} attempt {attempt} "
                             f"(no parts such as {paths[0] if paths else '?'})")
        shown = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        return SinkError(f"write: {self.url}: run {run} attempt {attempt} is missing part(s) {shown} "
                         f"of {len(paths)} (e.g. {paths[missing[0]]})")

    def _commit_local(self, run: str, attempt: int, paths: list[str]) -> None:
        ready = self._temp(run, attempt, "ready")
        if not os.path.exists(ready):
            missing = [i for i, p in enumerate(paths) if not os.path.exists(p)]
            if paths and len(missing) == len(paths) and os.path.exists(self.path):
                return                                   # committed already
            if missing:
                raise self._missing_error(run, attempt, paths, missing)
            if os.path.lexists(self.path) and not self.overwrite:
                raise self._exists_error()
            if len(paths) == 1:
                os.rename(paths[0], ready)
            else:
                concat = self._temp(run, attempt, "concat")
                with open(concat, "wb") as out:
                    for p in paths:
                        _append_file(out.fileno(), p)
                    out.flush()
                    os.fsync(out.fileno())
                os.rename(concat, ready)
            _fsync_dir(self.dir)
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        self._place_local(ready)
        _fsync_dir(self.dir)

    def _place_local(self, ready: str) -> None:
        """Rename `ready` onto the target; without overwrite, never over an existing file."""
        if self.overwrite:
            os.replace(ready, self.path)
            return
        try:
            os.link(ready, self.path)
        except FileExistsError:
            if not os.path.samefile(ready, self.path):   # else: linked before, not yet unlinked
                raise self._exists_error() from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if os.path.lexists(self.path):                # no hard links here: check, then rename
                raise self._exists_error() from None
            os.rename(ready, self.path)
            return
        os.unlink(ready)

    # fsspec URLs

    def _commit_remote(self, run: str, attempt: int, paths: list[str]) -> None:
        fs = self.fs
        fs.invalidate_cache()
        ready = self._temp(run, attempt, "ready")
        if not fs.exists(ready):
            infos: list[dict | None] = []
            for p in paths:
                try:
                    infos.append(fs.info(p))
                except FileNotFoundError:
                    infos.append(None)
            missing = [i for i, info in enumerate(infos) if info is None]
            if paths and len(missing) == len(paths) and fs.exists(self.path):
                return                                   # committed already
            if missing:
                raise self._missing_error(run, attempt, paths, missing)
            if fs.exists(self.path) and not self.overwrite:
                raise self._exists_error()
            sizes = [int(info.get("size") or 0) for info in infos]
            if len(paths) == 1:
                fs.mv(paths[0], ready)
            elif hasattr(fs, "merge") and all(S3_MIN_PART <= s <= S3_MAX_PART for s in sizes[:-1]) \
                    and sizes[-1] <= S3_MAX_PART:
                fs.merge(ready, paths)                   # joined in the store, no download
            else:
                with fs.open(ready, "wb") as out:
                    for p in paths:
                        with fs.open(p, "rb") as f:
                            while data := f.read(COPY_BLOCK):
                                out.write(data)
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                fs.rm(p)
        fs.invalidate_cache()
        if not self.overwrite and fs.exists(self.path):
            raise self._exists_error()
        fs.mv(ready, self.path)


# -- PostgreSQL -----------------------------------------------------------------------------

def _sql_parts(name: str) -> list[str]:
    """'myschema."Counts"' -> ['myschema', 'Counts']: unquoted parts fold to lower case."""
    out = []
    for m in re.finditer(r'"((?:[^"]|"")+)"|([^.]+)', name):
        out.append(m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2).lower())
    return out


def safe_dsn(dsn: str) -> str:
    """The connection string with any password hidden."""
    dsn = re.sub(r"(://[^:@/]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)


def _copy_text(data: bytes, sep: bytes) -> bytes:
    """Lines of sep-split fields in COPY's text format (tab-delimited, backslash escapes)."""
    if b"\\" in data:
        data = data.replace(b"\\", b"\\\\")
    if b"\r" in data:
        data = data.replace(b"\r", b"\\r")
    if sep != b"\t":
        if b"\t" in data:
            data = data.replace(b"\t", b"\\t")
        data = data.replace(sep, b"\t")
    return data


class _PgPart:
    """COPY into this part's own staging table, all in one transaction: the table exists
    for others only once close() commits it, and not at all if the instance dies."""

    def __init__(self, sink: "PostgresSink", run: str, attempt: int, index: int):
        from psycopg import sql
        self.sep = sink.sep.encode()
        self.conn = sink._connect(SinkError)
        self._copy = self._cm = None
        try:
            staging = sink._staging(run, attempt, index)
            cur = self.conn.cursor()
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging))
            cur.execute(sql.SQL("CREATE UNLOGGED TABLE {} AS SELECT {} FROM {} WITH NO DATA")
                        .format(staging, sink._select_list(), sink._target()))
            self._cm = cur.copy(sql.SQL("COPY {} FROM STDIN").format(staging))
            self._copy = self._cm.__enter__()
        except Exception as e:
            self.conn.close()
            raise SinkError(f"write: {sink.display}: cannot start part {index}: {_pg_message(e)}") from e
        self.display = sink.display

    def write(self, data: bytes) -> None:
        try:
            self._copy.write(_copy_text(data, self.sep))
        except Exception as e:
            raise SinkError(f"write: {self.display}: {_pg_message(e)}") from e

    def close(self) -> None:
        if self.conn.closed:
            return
        try:
            self._cm.__exit__(None, None, None)
            self.conn.commit()
        except Exception as e:
            raise SinkError(f"write: {self.display}: {_pg_message(e)}") from e
        finally:
            self.conn.close()

    def discard(self) -> None:
        if self.conn.closed:
            return
        try:
            with contextlib.suppress(Exception):
                failed = SinkError("the instance failed")
                self._cm.__exit__(SinkError, failed, None)
            with contextlib.suppress(Exception):
                self.conn.rollback()
        finally:
            self.conn.close()


def _pg_message(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class PostgresSink(Sink):
    """Rows COPYed into an existing table. Instance i fills the unlogged staging table
    `<table>__<run>_<attempt>_<i>`; commit, in one transaction, records (table, run,
    attempt) in `shoal_commits`, empties the table if overwrite, inserts every staging
    table in index order and drops them. A second commit finds the record and does
    nothing. Fields fill `columns` in order (all the table's columns if not given); an
    empty field is an empty string."""

    def __init__(self, dsn: str, table: str, columns: list[str] | None = None, overwrite: bool = False):
        self.dsn = dsn
        self.table = table
        self.names = _sql_parts(table)
        self.columns = [_sql_parts(c)[0] for c in columns] if columns else None
        self.overwrite = overwrite
        self.display = f"{table} in {safe_dsn(dsn)}"

    def _connect(self, error: type[Exception], **kwargs):
        try:
            import psycopg
        except ImportError:
            msg = "PostgreSQL sinks need psycopg, which this Python does not have: pip install 'shoal[flows]'"
            raise (InvalidSpec([f"write.postgres: {msg}"]) if error is InvalidSpec else error(f"write: {msg}")) from None
        try:
            return psycopg.connect(self.dsn, connect_timeout=10, client_encoding="UTF8", **kwargs)
        except psycopg.Error as e:
            msg = f"cannot connect to {safe_dsn(self.dsn)}: {_pg_message(e)}"
            raise (InvalidSpec([f"write.postgres: {msg}"]) if error is InvalidSpec
                   else error(f"write: {msg}")) from None

    def _target(self):
        from psycopg import sql
        return sql.Identifier(*self.names)

    def _in_schema(self, name: str):
        from psycopg import sql
        return sql.Identifier(*self.names[:-1], name)

    def _staging(self, run: str, attempt: int, index: int):
        name = f"{self.names[-1]}__{run}_{attempt}_{index}"
        if len(name.encode()) > PG_NAME_MAX:
            digest = hashlib.sha1(name.encode()).hexdigest()[:16]
            base = self.names[-1].encode()[:PG_NAME_MAX - len(digest) - 2].decode(errors="ignore")
            name = f"{base}__{digest}"
        return self._in_schema(name)

    def _select_list(self):
        from psycopg import sql
        return sql.SQL(", ").join(map(sql.Identifier, self.columns)) if self.columns else sql.SQL("*")

    def _regclass(self, cur, ident) -> str | None:
        cur.execute("SELECT to_regclass(%s)::text", (ident.as_string(cur),))
        return cur.fetchone()[0]

    def check(self) -> None:
        with self._connect(InvalidSpec, autocommit=True) as conn, conn.cursor() as cur:
            if self._regclass(cur, self._target()) is None:
                raise InvalidSpec([f"write.table: table {self.table} does not exist in "
                                   f"{safe_dsn(self.dsn)} (create it first)"])
            if self.columns:
                cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                            (self._target().as_string(cur),))
                have = [r[0] for r in cur.fetchall()]
                missing = [c for c in self.columns if c not in have]
                if missing:
                    raise InvalidSpec([f"write.columns: table {self.table} has no column "
                                       f"{', '.join(missing)} (it has {', '.join(have)})"])

    def part(self, run: str, attempt: int, index: int) -> PartWriter:
        _check_ids(run, attempt, index)
        return _PgPart(self, run, attempt, index)

    def commit(self, run: str, attempt: int, parts: int) -> None:
        _check_ids(run, attempt)
        import psycopg
        from psycopg import sql
        marker = self._in_schema("shoal_commits")
        stagings = [self._staging(run, attempt, i) for i in range(parts)]
        with self._connect(SinkError, autocommit=True) as conn, conn.cursor() as cur:
            try:
                try:
                    cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (target text NOT NULL, run text NOT NULL, "
                                        "attempt integer NOT NULL, parts integer NOT NULL, "
                                        "committed_at timestamptz NOT NULL DEFAULT now(), "
                                        "PRIMARY KEY (target, run, attempt))").format(marker))
                except psycopg.errors.UniqueViolation:
                    pass                                 # created at the same moment by another commit
                target = self._target().as_string(cur)
                with conn.transaction():
                    cur.execute(sql.SQL("INSERT INTO {} (target, run, attempt, parts) VALUES (%s, %s, %s, %s) "
                                        "ON CONFLICT DO NOTHING RETURNING 1").format(marker),
                                (target, run, attempt, parts))
                    first = cur.fetchone() is not None
                    if first:
                        missing = [i for i, s in enumerate(stagings) if self._regclass(cur, s) is None]
                        if missing:
                            raise SinkError(f"write: {self.display}: run {run} attempt {attempt} is missing "
                                            f"part(s) {', '.join(map(str, missing[:10]))} of {parts} "
                                            f"(no staging table {stagings[missing[0]].as_string(cur)})")
                        if self.overwrite:
                            cur.execute(sql.SQL("TRUNCATE {}").format(self._target()))
                        cols = (sql.SQL(" ({})").format(self._select_list()) if self.columns else sql.SQL(""))
                        for s in stagings:
                            cur.execute(sql.SQL("INSERT INTO {}{} SELECT {} FROM {}")
                                        .format(self._target(), cols, self._select_list(), s))
                        for s in stagings:
                            cur.execute(sql.SQL("DROP TABLE {}").format(s))
                if not first:                            # committed before: only tidy up
                    for s in stagings:
                        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(s))
            except SinkError:
                raise
            except psycopg.Error as e:
                raise SinkError(f"write: {self.display}: commit of run {run} attempt {attempt} failed: "
                                f"{_pg_message(e)}") from e

    def abort(self, run: str, attempt: int, parts: int) -> None:
        _check_ids(run, attempt)
        import psycopg
        from psycopg import sql
        with self._connect(SinkError, autocommit=True) as conn, conn.cursor() as cur:
            try:
                for i in range(parts):
                    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._staging(run, attempt, i)))
            except psycopg.Error as e:
                raise SinkError(f"write: {self.display}: abort of run {run} attempt {attempt} failed: "
                                f"{_pg_message(e)}") from e


# -- stdout -----------------------------------------------------------------------------------

class _StreamPart:
    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    def close(self) -> None:
        self.stream.flush()

    def discard(self) -> None:
        """What reached the stream stays there."""


class StdoutSink(Sink):
    """Records written straight to a byte stream (this process's stdout by default). A
    stream cannot take back what it has shown: parts are not held until commit."""

    def __init__(self, stream: BinaryIO | None = None):
        self.stream = stream

    def part(self, run: str, attempt: int, index: int) -> PartWriter:
        return _StreamPart(self.stream if self.stream is not None else sys.stdout.buffer)

    def commit(self, run: str, attempt: int, parts: int) -> None:
        pass
