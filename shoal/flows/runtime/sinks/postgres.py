"""A PostgreSQL table as a sink: each part COPYs into its own staging table; the commit moves
them all into the table in one transaction that also records the commit, so it happens once."""
from __future__ import annotations

import contextlib
import hashlib
import re
from ....errors import InvalidSpec, SinkError
from .base import PartWriter, Sink, check_ids


PG_NAME_MAX = 63            # bytes in a PostgreSQL identifier




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
        check_ids(run, attempt, index)
        return _PgPart(self, run, attempt, index)

    def commit(self, run: str, attempt: int, parts: int) -> None:
        check_ids(run, attempt)
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
        check_ids(run, attempt)
        import psycopg
        from psycopg import sql
        with self._connect(SinkError, autocommit=True) as conn, conn.cursor() as cur:
            try:
                for i in range(parts):
                    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._staging(run, attempt, i)))
            except psycopg.Error as e:
                raise SinkError(f"write: {self.display}: abort of run {run} attempt {attempt} failed: "
                                f"{_pg_message(e)}") from e
