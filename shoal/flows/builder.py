"""Flows from Python: a chain of calls builds the same FlowSpec a YAML file does.

    import shoal
    top = (shoal.flow("wc")
           .read("data/*.txt", parallelism=2)     # chunks dealt round-robin to 2 instances
           .words()                                # fused into the reading stage
           .count(parallelism=2)                   # hash on the word; senders pre-aggregate
           .top(10, by=2)                          # collect into one instance
           .write("top10.tsv", overwrite=True))
    result = top.run()                             # on shoal.connect()'s cluster

Each call that names a new kind of work adds a stage reading the one before; the edge is
the one that work needs (hash for count/reduce/distinct/join on their key, collect for
top, scatter otherwise) unless given. A stage that only reads takes the first work given
after it, so `read(...).words()` is one stage, not two. `.stdout()` sends the records to
the caller (`run()` then returns them in `result.output`, a file, or writes them to the
`stdout=` it is given); `.collect_rows()` runs the flow and returns the records as tuples.
"""
from __future__ import annotations

import base64
import os
from typing import Any, Callable, Iterable

from .spec import FlowSpec
from .iospec import absolute


def flow(name: str = "flow", separator: str = "\t", restarts: int = 2, bad_records: int = 0) -> "Flow":
    return Flow(name, separator, restarts, bad_records)


def _key(key) -> list[int]:
    return [key] if isinstance(key, int) else list(key)


def _abs(path):
    if isinstance(path, (list, tuple)):
        return [_abs(p) for p in path]
    return path if path == "-" else absolute(path, os.getcwd())


class Flow:
    def __init__(self, name: str, separator: str, restarts: int, bad_records: int):
        self.name, self.separator, self.restarts, self.bad_records = name, separator, restarts, bad_records
        self.stages: list[dict] = []
        self.items: Iterable | None = None

    def _name(self, base: str) -> str:
        taken = {s["name"] for s in self.stages}
        if base not in taken:
            return base
        n = 2
        while f"{base}{n}" in taken:
            n += 1
        return f"{base}{n}"

    def read(self, paths: str | list[str], parallelism: int = 1, chunk: str | None = None,
             name: str | None = None, **options) -> "Stage":
        """A source: path(s), glob(s) or fsspec URL(s), or '-' for stdin."""
        read: Any = _abs(paths)
        if chunk or options:
            read = {"path": read, **({"chunk": chunk} if chunk else {}), **options}
        return self._add({"name": name or self._name("read"), "read": read, "parallelism": parallelism})

    read_text = read

    def from_items(self, items: Iterable, name: str | None = None, parallelism: int = 1) -> "Stage":
        """A source of Python values: each a str (one line) or a tuple of fields."""
        self.items = items
        return self._add({"name": name or self._name("items"), "read": {"iterable": True},
                          "parallelism": parallelism})

    def _add(self, stage: dict) -> "Stage":
        self.stages.append(stage)
        return Stage(self, stage)

    def spec(self) -> FlowSpec:
        stages = []
        for s in self.stages:
            s = dict(s)
            if not any(k in s for k in ("op", "command", "function")):
                s["op"] = "pass"
            stages.append(s)
        return FlowSpec.model_validate({"name": self.name, "separator": self.separator,
                                        "restarts": self.restarts, "bad_records": self.bad_records,
                                        "stages": stages})

    def run(self, client=None, **kw):
        """Run to the end on `client` (default: shoal.connect()); a FlowResult."""
        if self.items is not None:
            kw.setdefault("items", self.items)
        if client is not None:
            return client.run_flow(self.spec(), os.getcwd(), **kw)
        from ..client.connect import connect
        with connect() as c:
            return c.run_flow(self.spec(), os.getcwd(), **kw)


class Stage:
    """The output of one stage; calling a work method adds the stage that reads it."""

    def __init__(self, flow: Flow, stage: dict):
        self.flow = flow
        self.stage = stage

    @property
    def name(self) -> str:
        return self.stage["name"]

    def then(self, *, op: Any = None, command: str | list[str] | None = None,
             function: Callable | str | None = None, batch: bool = False, edge: str = "scatter",
             key=None, parallelism: int | None = None, name: str | None = None, **fields) -> "Stage":
        """The general form: the next stage's work and how records reach it."""
        work: dict = {}
        if op is not None:
            work["op"] = op
        if command is not None:
            work["command"] = command
        if function is not None:
            work["function"] = function if isinstance(function, str) else \
                "pickle:" + base64.b64encode(__import__("cloudpickle").dumps(function)).decode()
            work["batch"] = batch
        fusable = (edge == "scatter" and key is None and self._bare()
                   and parallelism in (None, self.stage["parallelism"]) and not fields)
        if fusable:
            self.stage.update(work)
            if name:
                self.stage["name"] = name
            return self
        inp: dict = {"from": self.name, "edge": edge}
        if key is not None:
            inp["key"] = _key(key)
        default_n = 1 if edge in ("collect", "merge_sorted") else self.stage["parallelism"]
        return self.flow._add({"name": name or self.flow._name(_label(work)), "input": inp,
                               "parallelism": parallelism or default_n, **work, **fields})

    # -- built-in operators -----------------------------------------------------------

    def words(self, **kw) -> "Stage":
        """One record per whitespace-separated word."""
        return self.then(op="words", **kw)

    flat_map_words = words

    def count(self, key=1, parallelism: int | None = None, **kw) -> "Stage":
        """(key fields..., count) per key; hash-partitioned on the key, pre-aggregated."""
        return self.then(op={"count": {"key": _key(key)}}, edge="hash", key=key, parallelism=parallelism, **kw)

    def reduce(self, key=1, value: int = 2, fn: str = "sum", parallelism: int | None = None, **kw) -> "Stage":
        """(key fields..., fn(value)) per key, fn one of sum, min, max."""
        return self.then(op={"reduce": {"key": _key(key), "value": value, "fn": fn}}, edge="hash", key=key,
                         parallelism=parallelism, **kw)

    def distinct(self, key=None, parallelism: int | None = None, **kw) -> "Stage":
        op = {"distinct": {"key": _key(key)}} if key is not None else "distinct"
        return self.then(op=op, edge="hash", key=key or 1, parallelism=parallelism, **kw)

    def top(self, k: int = 10, by: int = 2, numeric: bool = True, reverse: bool = False, **kw) -> "Stage":
        """The k records with the largest field `by` (smallest with reverse), gathered into one."""
        return self.then(op={"top": {"k": k, "by": by, "numeric": numeric, "reverse": reverse}},
                         edge="collect", parallelism=1, **kw)

    def sort(self, key=1, numeric: bool = False, reverse: bool = False, **kw) -> "Stage":
        """Sorted in each instance, then merged into one sorted stream (merge_sorted)."""
        opts = {"key": _key(key), "numeric": numeric, "reverse": reverse}
        local = self.then(op={"sort": opts}, **kw)
        return Stage(local.flow, local.flow._add({
            "name": local.flow._name("merged"), "parallelism": 1, "op": "pass",
            "input": {"from": local.name, "edge": "merge_sorted", "key": _key(key), "numeric": numeric,
                      "reverse": reverse}}).stage)

    def _bare(self) -> bool:
        """A stage that only reads (and writes nowhere): the next work can run in it."""
        return ("read" in self.stage and "write" not in self.stage
                and not any(k in self.stage for k in ("op", "command", "function")))

    def join(self, other: "Stage", key=1, right_key=None, how: str = "inner",
             parallelism: int | None = None, **kw) -> "Stage":
        """Records of this stage (left) joined with `other` (right) on the key fields."""
        rk = _key(right_key if right_key is not None else key)
        n = parallelism or max(self.stage["parallelism"], other.stage["parallelism"])
        return self.flow._add({"name": kw.pop("name", None) or self.flow._name("join"), "parallelism": n,
                               "op": {"join": {"key": _key(key), "right_key": rk, "how": how}},
                               "inputs": [{"from": self.name, "edge": "hash", "key": _key(key)},
                                          {"from": other.name, "edge": "hash", "key": rk}], **kw})

    # -- commands and functions -----------------------------------------------------------

    def pipe(self, command: str | list[str], **kw) -> "Stage":
        """A shell command over the records as lines on stdin/stdout."""
        return self.then(command=command, **kw)

    def map(self, fn: Callable, **kw) -> "Stage":
        """fn(fields tuple) -> None, a line, a tuple of fields, or a generator of those."""
        return self.then(function=fn, **kw)

    def map_batches(self, fn: Callable, **kw) -> "Stage":
        """fn(polars.DataFrame) -> DataFrame, per batch."""
        return self.then(function=fn, batch=True, **kw)

    def collect(self, **kw) -> "Stage":
        """Everything into one instance, unchanged."""
        return self.then(op="pass", edge="collect", parallelism=1, **kw)

    # -- sinks --------------------------------------------------------------------------

    def write(self, target: str | dict, overwrite: bool = False) -> Flow:
        """A file or fsspec URL (committed only when the flow succeeds), or a sink mapping
        such as {"postgres": DSN, "table": "t"}."""
        if isinstance(target, str):
            target = {"path": _abs(target), "overwrite": overwrite}
        self.stage["write"] = target
        return self.flow

    def stdout(self) -> Flow:
        self.stage["write"] = "-"
        return self.flow

    def run(self, client=None, **kw):
        return self.flow.run(client, **kw)

    def collect_rows(self, client=None) -> list[tuple[str, ...]]:
        """Run with this stage's records sent back to the caller, and return them."""
        self.stdout()
        result = self.flow.run(client)
        try:
            with open(result.output, encoding="utf-8") as f:
                return [tuple(line.rstrip("\n").split(self.flow.separator)) for line in f]
        finally:
            os.unlink(result.output)


def _label(work: dict) -> str:
    op = work.get("op")
    if op is not None:
        return op if isinstance(op, str) else next(iter(op))
    return "cmd" if "command" in work else "fn"
