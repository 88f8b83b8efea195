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
    from shoal.flows.runtime.sinks import Sink

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
            os.unlink(self.path)"""
from __future__ import annotations

import importlib

from ....errors import InvalidSpec
from ...iospec import SinkSpec
from .base import PartWriter, Sink, check_ids
from .files import FileSink
from .postgres import PostgresSink, safe_dsn
from .stdout import StdoutSink

__all__ = ["PartWriter", "Sink", "FileSink", "PostgresSink", "StdoutSink", "check_ids", "make_sink", "safe_dsn"]


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
        raise InvalidSpec([f"write.sink: {spec.sink} is not a subclass of shoal.flows.runtime.sinks.Sink"])
    try:
        return obj(**spec.options)
    except TypeError as e:
        raise InvalidSpec([f"write.options: {spec.sink} does not take these options ({e})"]) from None
