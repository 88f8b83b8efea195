"""A flow: stages joined by edges. Each stage runs `parallelism` instances of one kind of
work (a built-in operator, a shell command, or a Python function) over records, and routes
what it emits to the stages that read it.

A record is a line of text whose fields are split by `separator` (a tab by default); key
fields are counted from 1, as in `sort -k1` and awk's `$1`.

Edges (how the records of stage A reach the instances of stage B):

    scatter       round-robin, one batch at a time (from a source: one chunk at a time)
    hash          by a stable hash of the key fields: equal keys meet in one instance
    broadcast     every record to every instance
    collect       everything into one instance (B's parallelism must be 1)
    merge_sorted  like collect, merging inputs already sorted by the key into one order
    range         by key ranges sampled from the sending stage's source: instance i gets
                  the i-th range, so sorted instances' outputs concatenate in key order
"""
from __future__ import annotations

import re
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..model.task import Size

EDGES = ("scatter", "hash", "broadcast", "collect", "merge_sorted", "range")
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def _checked_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError("use letters, digits, '_', '.' and '-'")
    return name


def _keys(value: Any) -> Any:
    """A key given as one field number is the list of that one field."""
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


class EdgeSpec(BaseModel):
    """Where a stage's input comes from and how its records are routed to the instances."""
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: str = Field(alias="from", min_length=1, description="the stage whose output this is")
    edge: Literal["scatter", "hash", "broadcast", "collect", "merge_sorted", "range"] = "scatter"
    key: list[int] = Field(default_factory=list, description="key fields (from 1) for hash, merge_sorted, range")
    numeric: bool = Field(False, description="merge_sorted: compare keys as numbers")
    reverse: bool = Field(False, description="merge_sorted: descending order")

    _key = field_validator("key", mode="before")(_keys)

    @field_validator("key")
    @classmethod
    def _positive(cls, key: list[int]) -> list[int]:
        if any(k < 1 for k in key):
            raise ValueError("key fields are counted from 1 (like sort -k1)")
        return key

    @model_validator(mode="after")
    def _key_where_needed(self):
        if self.edge in ("hash", "merge_sorted", "range") and not self.key:
            raise ValueError(f"key: required for a {self.edge} edge (a field number such as 1, or a list)")
        if self.key and self.edge not in ("hash", "merge_sorted", "range"):
            raise ValueError(f"key: only hash, merge_sorted and range edges take a key (this edge is {self.edge})")
        if self.edge == "range" and len(self.key) != 1:
            raise ValueError("key: a range edge takes one key field")
        return self


class StageSpec(BaseModel):
    """One stage. Exactly one of `op`, `command`, `function`; exactly one of `read` (a
    source) and `input`/`inputs` (other stages)."""
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = Field(min_length=1, max_length=100)
    parallelism: int = Field(1, ge=1, le=512)
    read: Any = Field(None, description="a source: path, glob, fsspec URL, '-' for stdin, or a mapping")
    input: Union[EdgeSpec, None] = None
    inputs: list[EdgeSpec] = Field(default_factory=list, description="two inputs, for join")
    op: Any = Field(None, description="a built-in operator: words, count, reduce, sort, top, distinct, join, pass")
    command: Union[str, list[str], None] = Field(None, description="a shell command over lines on stdin/stdout")
    function: Any = Field(None, description="'module:function', or a callable from the Python API")
    batch: bool = Field(False, description="function: called with a polars DataFrame per batch, "
                                           "not once per record")
    write: Any = Field(None, description="a sink: path, fsspec URL, '-' for stdout, or a mapping")
    cpus: float = Field(0.0, ge=0, le=1024, description="reserved per instance (0: share the node)")
    memory: Size = Field(0, description="per instance, e.g. 2G; sort spills to disk beyond it")
    labels: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)

    _name = field_validator("name")(_checked_name)

    @model_validator(mode="before")
    @classmethod
    def _input_shorthand(cls, data: Any) -> Any:
        # `input: words` means `input: {from: words}`: scatter from the stage `words`
        if isinstance(data, dict):
            data = dict(data)
            if isinstance(data.get("input"), str):
                data["input"] = {"from": data["input"]}
            if isinstance(data.get("inputs"), list):
                data["inputs"] = [{"from": i} if isinstance(i, str) else i for i in data["inputs"]]
        return data

    @model_validator(mode="after")
    def _one_of_each(self):
        work = [f for f in ("op", "command", "function") if getattr(self, f) is not None]
        if len(work) != 1:
            raise ValueError("give exactly one of op, command, function"
                             + (f" (got {', '.join(work)})" if work else ""))
        feeds = [f for f in ("read", "input", "inputs") if getattr(self, f)]
        if len(feeds) != 1:
            raise ValueError("give exactly one of read (a source), input (a stage) or inputs (two stages)"
                             + (f" (got {', '.join(feeds)})" if feeds else ""))
        return self

    @property
    def edges(self) -> list[EdgeSpec]:
        return [self.input] if self.input else list(self.inputs)


class FlowSpec(BaseModel):
    """A whole flow, as written in YAML or built with the Python API."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("flow", min_length=1, max_length=100)
    separator: str = Field("\t", min_length=1, max_length=1, description="between fields of a record")
    restarts: int = Field(2, ge=0, le=100, description="runs of the whole flow after an instance is lost")
    bad_records: int = Field(0, ge=0, description="malformed records tolerated before the flow fails")
    stages: list[StageSpec] = Field(min_length=1)

    _name = field_validator("name")(_checked_name)

    @field_validator("separator")
    @classmethod
    def _sep(cls, sep: str) -> str:
        if sep == "\n":
            raise ValueError("a newline ends a record; use another character (a tab by default)")
        return sep

    def stage(self, name: str) -> StageSpec:
        return next(s for s in self.stages if s.name == name)
