"""Where a flow's records come from (SourceSpec, `read:`) and where they go (SinkSpec,
`write:`), validated from the YAML forms:

    read: data/*.txt                     a path, glob or fsspec URL (s3://bucket/logs/*.gz)
    read: [a.txt, b/*.txt]               several of them
    read: "-"                            stdin of the client
    read: {path: ..., chunk: 64M, storage_options: {...}}

    write: out.tsv                       a file or fsspec URL; {path: out.tsv, overwrite: true}
    write: "-"                           stdout of the client
    write: {postgres: "postgresql://user@host:5432/db", table: counts, columns: [word, n]}
    write: {sink: "package.module:ClassName", options: {...}}

Problems raise InvalidSpec, one line per problem, each naming the field (`read.chunk`,
`write.table`) and the form it expects."""
from __future__ import annotations

import os
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ..errors import InvalidSpec, describe_validation
from ..model.sizes import format_size, parse_size

MIN_CHUNK = 64 << 10
DEFAULT_CHUNK = 64 << 20

# a SQL name: unquoted (folded to lower case, as PostgreSQL does) or "double quoted"
_SQL_PART = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
SQL_NAME = re.compile(rf"{_SQL_PART}(?:\.{_SQL_PART})?\Z")
SQL_COLUMN = re.compile(rf"{_SQL_PART}\Z")
SINK_CLASS = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*\Z")


def _size(value: Any) -> int:
    return parse_size(value)


def absolute(path: str, cwd: str) -> str:
    """A local path (or file:// URL) made absolute against cwd, ~ expanded; other URLs as given."""
    if "://" in path and not path.startswith("file://"):
        return path
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(path.removeprefix("file://"))))


Size = Annotated[int, BeforeValidator(_size)]

_SOURCE_FORMS = {
    "paths": "a list of paths, globs or fsspec URLs",
    "stdin": "true or false",
    "iterable": "true or false",
    "chunk": "a size such as 64M (at least 64K)",
    "storage_options": "a mapping of fsspec storage options",
}
_SINK_FORMS = {
    "path": "a file path or fsspec URL",
    "stdout": "true or false",
    "postgres": "a connection URL such as postgresql://user@host:5432/db",
    "table": "a table name such as counts or myschema.counts",
    "columns": "a list of column names",
    "overwrite": "true or false",
    "sink": "'package.module:ClassName'",
    "options": "a mapping of keyword arguments for the sink class",
    "storage_options": "a mapping of fsspec storage options",
}


class SourceSpec(BaseModel):
    """Files to read (`paths`, split into chunks of about `chunk` bytes), the client's
    stdin (`stdin`), or records the client supplies from Python (`iterable`)."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    paths: list[str] = Field(default_factory=list, description="paths, globs or fsspec URLs")
    stdin: bool = False
    iterable: bool = Field(False, description="records supplied by the client (Python API)")
    chunk: Size = Field(DEFAULT_CHUNK, description="bytes per chunk of a file, about")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="passed to fsspec")

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise InvalidSpec(describe_validation(e, "read", forms=_SOURCE_FORMS,
                                                  fields=("path", "chunk", "storage_options"))) from None

    @model_validator(mode="after")
    def _check(self):
        given = [name for name, on in (("path", bool(self.paths)), ("'-' (stdin)", self.stdin),
                                       ("iterable", self.iterable)) if on]
        if len(given) != 1:
            raise ValueError("give one of a path, glob or URL, a list of them, or '-' for stdin"
                             + (f" (got {' and '.join(given)})" if given else ""))
        for i, p in enumerate(self.paths):
            if not p.strip():
                raise ValueError(f"path {i} is empty (give a path, glob or URL)")
            if p == "-":
                raise ValueError("'-' (stdin) cannot be combined with paths")
        if self.chunk < MIN_CHUNK:
            raise ValueError(f"chunk: must be at least 64K (got {format_size(self.chunk)})")
        return self

    def resolved(self, cwd: str) -> "SourceSpec":
        """The same source with relative local paths made absolute against `cwd` (the
        client's directory), so every process reads the same files."""
        return self.model_copy(update={"paths": [absolute(p, cwd) for p in self.paths]})


class SinkSpec(BaseModel):
    """Exactly one of: a file or fsspec URL (`path`), the client's stdout (`stdout`), a
    PostgreSQL table (`postgres` + `table`), or a user sink class (`sink`)."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = Field(None, description="a file path or fsspec URL")
    stdout: bool = False
    postgres: str | None = Field(None, description="connection URL of the database")
    table: str | None = Field(None, description="an existing table, schema-qualified or not")
    columns: list[str] | None = Field(None, description="the table columns the fields fill, in order")
    overwrite: bool = Field(False, description="replace the file, or empty the table, at commit")
    sink: str | None = Field(None, description="'package.module:ClassName', a subclass of Sink")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the sink class")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="passed to fsspec")

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise InvalidSpec(describe_validation(e, "write", forms=_SINK_FORMS,
                                                  fields=SinkSpec.model_fields)) from None

    @property
    def kind(self) -> str:
        """file, stdout, postgres or user."""
        if self.path is not None:
            return "file"
        if self.stdout:
            return "stdout"
        return "postgres" if self.postgres is not None else "user"

    def resolved(self, cwd: str) -> "SinkSpec":
        """The same sink with a relative local path made absolute against `cwd` (the
        client's directory), so every process writes to the same place."""
        return self.model_copy(update={"path": absolute(self.path, cwd)}) if self.kind == "file" else self

    @model_validator(mode="after")
    def _check(self):
        given = [name for name, on in (("path", self.path is not None), ("'-' (stdout)", self.stdout),
                                       ("postgres", self.postgres is not None),
                                       ("sink", self.sink is not None)) if on]
        if len(given) != 1:
            raise ValueError("give one of a path or URL, '-' for stdout, postgres (with table) "
                             "or sink" + (f" (got {' and '.join(given)})" if given else ""))
        kind = self.kind
        if kind == "file" and (not self.path.strip() or "\n" in self.path):
            raise ValueError(f"path: expected a file path or fsspec URL (got {self.path!r})")
        if kind == "postgres":
            dsn = self.postgres.strip()
            if not (dsn.startswith(("postgresql://", "postgres://")) or "=" in dsn):
                raise ValueError(f"postgres: expected a connection URL such as "
                                 f"postgresql://user@host:5432/db (got {self.postgres!r})")
            if self.table is None:
                raise ValueError("table: required with postgres (the name of an existing table)")
            if not SQL_NAME.match(self.table):
                raise ValueError(f"table: expected a table name such as counts or myschema.counts "
                                 f"(got {self.table!r})")
            if self.columns is not None:
                if not self.columns:
                    raise ValueError("columns: give at least one column, or leave columns out for all")
                bad = [c for c in self.columns if not SQL_COLUMN.match(c)]
                if bad:
                    raise ValueError(f"columns: {bad[0]!r} is not a column name")
        else:
            for name in ("table", "columns"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: only a postgres sink takes {name}")
        if kind == "user" and not SINK_CLASS.match(self.sink):
            raise ValueError(f"sink: expected 'package.module:ClassName' (got {self.sink!r})")
        if kind != "user" and self.options:
            raise ValueError("options: only a user sink (sink: module:Class) takes options")
        if kind != "file" and self.storage_options:
            raise ValueError("storage_options: only a file or URL sink takes storage_options")
        if self.overwrite and kind not in ("file", "postgres"):
            raise ValueError(f"overwrite: a {'stdout' if kind == 'stdout' else 'user'} sink does not "
                             f"take overwrite" + (" (pass it in options)" if kind == "user" else ""))
        return self


def parse_source(value: Any) -> SourceSpec:
    """A SourceSpec from any `read:` form; InvalidSpec naming the problem otherwise."""
    if isinstance(value, SourceSpec):
        return value
    if isinstance(value, str):
        return SourceSpec(stdin=True) if value == "-" else SourceSpec(paths=[value])
    if isinstance(value, (list, tuple)):
        bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
        if bad:
            raise InvalidSpec([f"read[{i}]: expected a path, glob or URL (got {value[i]!r})" for i in bad])
        if "-" in value and len(value) > 1:
            raise InvalidSpec(["read: '-' (stdin) cannot be combined with paths"])
        return SourceSpec(stdin=True) if list(value) == ["-"] else SourceSpec(paths=list(value))
    if isinstance(value, dict):
        data = dict(value)
        if "path" in data and "paths" in data:
            raise InvalidSpec(["read: give path or paths, not both"])
        if "path" in data or "paths" in data:
            path = data.pop("path") if "path" in data else data.pop("paths")
            if path == "-" or path == ["-"]:
                data["stdin"] = True
            elif isinstance(path, str):
                data["paths"] = [path]
            elif isinstance(path, (list, tuple)) and all(isinstance(p, str) for p in path):
                if "-" in path:
                    raise InvalidSpec(["read.path: '-' (stdin) cannot be combined with paths"])
                data["paths"] = list(path)
            else:
                raise InvalidSpec([f"read.path: expected a path, glob or URL, or a list of them (got {path!r})"])
        return SourceSpec(**data)
    raise InvalidSpec([f"read: expected a path, glob or URL, '-' for stdin, a list of paths, or a mapping "
                       f"with path, chunk, storage_options (got {value!r})"])


def parse_sink(value: Any) -> SinkSpec:
    """A SinkSpec from any `write:` form; InvalidSpec naming the problem otherwise."""
    if isinstance(value, SinkSpec):
        return value
    if isinstance(value, str):
        return SinkSpec(stdout=True) if value == "-" else SinkSpec(path=value)
    if isinstance(value, dict):
        data = dict(value)
        if data.get("path") == "-":
            del data["path"]
            data["stdout"] = True
        return SinkSpec(**data)
    raise InvalidSpec([f"write: expected a path or URL, '-' for stdout, or a mapping with path, "
                       f"postgres and table, or sink (got {value!r})"])
