"""The task: what a user submits (TaskSpec, validated at the door) and what etcd
holds about it (TaskRecord: the spec plus state and attempts)."""
from __future__ import annotations

import base64
import binascii
import enum
from typing import Annotated, Any, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt,
                      ValidationError, field_validator, model_validator)

from ..errors import Problems, describe_validation
from .sizes import parse_size

DEFAULT_MAX_RETRIES = 10
DEFAULT_NODE_LOSS_RETRIES = 3   # requeues after a node loss, unless the task or cluster says otherwise
MAX_INPUT_BYTES = 32 * 1024   # inline stdin: a node claims and ends many records in one etcd transaction


class TaskState(str, enum.Enum):
    waiting = "waiting"      # reserved: unmet dependencies
    held = "held"            # reserved: held by a user or a budget
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    upstream_failed = "upstream_failed"   # a dependency failed; it never ran


FINAL_STATES = frozenset({TaskState.succeeded, TaskState.failed, TaskState.cancelled,
                          TaskState.upstream_failed})


def _size(v: Any) -> int:
    return parse_size(v)


Size = Annotated[int, BeforeValidator(_size)]
Seconds = Union[StrictInt, StrictFloat]


class TaskSpec(BaseModel):
    """What to run and what it needs. Unknown fields are refused."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    command: Union[list[str], str, None] = Field(
        None, description="argv list, or a shell string run by /bin/sh -c (or give `function`)")
    function: str | None = Field(
        None, description="a Python call, cloudpickled and base64-encoded: (fn, args, kwargs)")
    function_name: str | None = Field(None, max_length=256, description="the function's qualified name")
    working_dir: str | None = Field(None, description="function tasks: a directory on the node put "
                                                      "first on sys.path and made the current directory")
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    stdin: str | None = Field(None, description="path of a file on the node fed to stdin")
    input: str | None = Field(None, description="bytes fed to stdin, base64-encoded, at most "
                              f"{MAX_INPUT_BYTES // 1024} KiB decoded (it is stored in the record)")
    cpus: float = Field(1.0, ge=0, le=1024)
    memory: Size = Field(0, description="bytes, or a size such as 512M, 2G; 0 = no limit")
    disk: Size = 0
    gpus: int = Field(0, ge=0, le=64)
    slots: int = Field(1, ge=0, le=1, description="1: takes one of the node's slots; 0: runs beside them "
                                                  "(flow stage instances, which must all run at once)")
    labels: list[str] = Field(default_factory=list,
                              description="labels the node must have: 'key' or 'key=value'")
    priority: int = Field(0, ge=-999, le=999, description="higher runs first")
    retries: int = Field(0, ge=0, description="runs again after the command fails (exit, signal, timeout)")
    node_loss_retries: int | None = Field(
        None, ge=0, description="runs again after its node is lost, its lease expires or its attempt is "
                                "fenced; these do not use up `retries` [default: the cluster's, 3]")
    backoff: Seconds = Field(1.0, ge=0, description="seconds before retry n is (backoff * 2**(n-1))")
    timeout: Seconds | None = Field(None, gt=0, description="seconds; the attempt is killed after")
    name: str | None = Field(None, max_length=256)
    team: str = Field("default", min_length=1, max_length=128)
    job: str | None = Field(None, max_length=128)
    depends_on: list[str] = Field(default_factory=list, max_length=10000,
                                  description="ids of tasks that must succeed before this one is queued")
    allow_failed_deps: bool = Field(False, description="run even if a dependency failed")

    @model_validator(mode="after")
    def _one_kind_of_work(self):
        if self.command is None and self.function is None:
            raise ValueError("command: required (an argv list such as ['echo', 'hi'], a shell "
                             "string, or a Python function through @shoal.task)")
        if self.command is not None and self.function is not None:
            raise ValueError("command: give a command or a function, not both")
        if self.input is not None and self.stdin is not None:
            raise ValueError("input: give input (bytes for stdin) or stdin (a file on the node), not both")
        return self

    @property
    def is_function(self) -> bool:
        return self.function is not None

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, v):
        if v is None:
            return v
        if isinstance(v, str):
            if not v.strip():
                raise ValueError("is empty (give an argv list such as ['echo', 'hi'] or a shell string)")
        else:
            if not v or not v[0]:
                raise ValueError("is empty (give an argv list such as ['echo', 'hi'] or a shell string)")
        return v

    @field_validator("input")
    @classmethod
    def _input_small(cls, v):
        if v is None:
            return v
        try:
            size = len(base64.b64decode(v, validate=True))
        except binascii.Error:
            raise ValueError("is not base64 (give the bytes for stdin base64-encoded)") from None
        if size > MAX_INPUT_BYTES:
            raise ValueError(f"is {size:,} bytes; a task carries at most {MAX_INPUT_BYTES:,} bytes of input "
                             "(cut it smaller, e.g. shoal map --pipe --block 32K, or give stdin: a file on the node)")
        return v

    @field_validator("labels")
    @classmethod
    def _labels_form(cls, v):
        for label in v:
            if not label or label.startswith("=") or any(c.isspace() for c in label):
                raise ValueError(f"{label!r} is not a label (use 'key' or 'key=value')")
        return v

    def argv(self) -> list[str]:
        return ["/bin/sh", "-c", self.command] if isinstance(self.command, str) else list(self.command)

    def display(self) -> str:
        if self.function is not None:
            return f"{self.function_name or 'function'}(...)"
        return self.command if isinstance(self.command, str) else " ".join(self.command)

    @classmethod
    def parse(cls, data: dict, max_retries: int = DEFAULT_MAX_RETRIES) -> "TaskSpec":
        """Validate `data`, collecting every problem into one InvalidSpec."""
        problems = Problems()
        spec = None
        try:
            spec = cls.model_validate(data)
        except ValidationError as e:
            problems.extend("", describe_validation(e, forms=_EXPECTED, fields=cls.model_fields, whole="task"))
        # the cap is this cluster's, so it is checked here rather than by the model
        for name in ("retries", "node_loss_retries"):
            value = getattr(spec, name) if spec is not None else data.get(name) if isinstance(data, dict) else None
            if isinstance(value, int) and value > max_retries:
                problems.add(name, f"{value} is above this cluster's cap of {max_retries}")
        problems.raise_if_any()
        return spec


_EXPECTED = {
    "command": "an argv list of strings or a shell string",
    "env": "a mapping of string names to string values",
    "timeout": "a number of seconds above 0",
    "backoff": "a number of seconds, 0 or more",
    "cpus": "a number, 0 or more",
    "gpus": "a whole number, 0 or more",
    "priority": "a whole number from -999 to 999",
    "retries": "a whole number, 0 or more",
    "node_loss_retries": "a whole number, 0 or more",
}


class EndedBy(str, enum.Enum):
    """Why an attempt ended: its own doing (exit, signal, timeout), the user's (cancelled),
    or the cluster's (the rest), which never uses up the task's `retries`."""
    exit = "exit"                  # the process exited
    signal = "signal"              # killed by a signal (a memory limit, an outside kill)
    timeout = "timeout"            # killed at its timeout
    cancelled = "cancelled"        # a user cancelled it
    not_started = "not_started"    # it could not be started (a missing cwd, a full disk)
    node_lost = "node_lost"        # its node died: the node's lease expired
    lease_lost = "lease_lost"      # its node lost its lease and fenced it, then came back
    released = "released"          # its node handed it back (shutting down, or a claim it lost track of)


class Attempt(BaseModel):
    """One run of a task on one node."""
    model_config = ConfigDict(extra="ignore")

    n: int
    node: str
    state: TaskState = TaskState.running
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    cpu_s: float | None = None
    max_rss_bytes: int | None = None
    reason: str | None = None
    ended_by: EndedBy | None = None


class TaskRecord(BaseModel):
    """A task as etcd holds it: spec, state and every attempt."""
    model_config = ConfigDict(extra="ignore")

    id: str
    spec: TaskSpec
    state: TaskState = TaskState.queued
    submitted_at: float
    attempt: int = 0                       # number of the current (or last) attempt
    released: int = 0                      # attempts handed back by nodes shutting down (not counted)
    node_losses: int = 0                   # attempts lost with their node or lease (node_loss_retries)
    deps_left: int = 0                     # waiting: dependencies not yet ended, as of submit
    # (the live count is in waits/<id>, and the tasks waiting on this one are the keys
    # deps/<id>/<dependent>: neither grows this record, see logic/dag.py)
    # function tasks: the return value (small ones inline, base64 of a pickle; big ones
    # stay on the node that made them), or the exception it raised
    result: str | None = None
    result_ref: dict | None = None         # {"node": id, "bytes": size} when not inline
    error: dict | None = None              # {"type", "message", "traceback"}
    progress: dict | None = None           # {"fraction": 0..1, "message", "at"}
    attempts: list[Attempt] = Field(default_factory=list)
    not_before: float | None = None        # retry backoff: not claimable before this time
    cancel_requested: bool = False
    finished_at: float | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    stdout_bytes: int = 0                  # full sizes: the tails are all of it when small
    stderr_bytes: int = 0
    reason: str | None = None              # why it failed or was cancelled, in words

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def node(self) -> str | None:
        return self.last.node if self.last else None

    @property
    def exit_code(self) -> int | None:
        return self.last.exit_code if self.last else None

    @property
    def started_at(self) -> float | None:
        return self.last.started_at if self.last else None

    @property
    def cpu_s(self) -> float | None:
        return self.last.cpu_s if self.last else None

    @property
    def max_rss_bytes(self) -> int | None:
        return self.last.max_rss_bytes if self.last else None

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    def reason_text(self) -> str:
        if self.reason:
            return self.reason
        if self.exit_code is not None:
            return f"exit code {self.exit_code}"
        return self.state.value

    def summary(self) -> dict:
        """The record as JSON-ready data, with the current attempt's figures lifted up."""
        return summarize(self.model_dump(mode="json"))


def summarize(d: dict) -> dict:
    """Lift the current attempt's figures to the top of a record's JSON form; works on
    plain dicts so streams need not build models."""
    last = d["attempts"][-1] if d.get("attempts") else {}
    for key in ("node", "exit_code", "started_at", "cpu_s", "max_rss_bytes"):
        d[key] = last.get(key)
    return d
