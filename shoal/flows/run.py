"""The record of one flow run, as etcd keeps it under flows/runs/<run>: what was asked (the
spec, where its paths are relative to), what the driver decided so far (attempt, instance
tasks, restarts, the end), and what the client that submitted it does for it, if anything."""
from __future__ import annotations

import enum
import re

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from .spec import FlowSpec

CLIENT = "__client__"    # the pseudo-stage of the submitting client: it feeds stdin, receives stdout
RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}\Z")


def driver_role(run: str) -> str:
    """The elected role of the node that drives `run` (its key: elections/flow/<run>)."""
    return f"flow/{run}"


class FlowState(str, enum.Enum):
    pending = "pending"          # submitted; no attempt started yet
    running = "running"          # attempt `attempt` has its instances submitted
    committing = "committing"    # every instance succeeded; the sinks are being committed
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINAL = frozenset({FlowState.succeeded, FlowState.failed, FlowState.cancelled})


class Restart(BaseModel):
    """One attempt that was given up because an instance (or its node) was lost."""
    model_config = ConfigDict(extra="forbid")
    attempt: int = Field(ge=1)
    why: str


class Failure(BaseModel):
    """Why a run failed: the message, and the stage instance and stderr when one was at fault."""
    model_config = ConfigDict(extra="forbid")
    message: str
    stage: str | None = None
    stderr: str = ""


class ClientLink(BaseModel):
    """What the client that submitted the run does for it. Only flows that read stdin (or a
    Python iterable) or write to stdout need one; the run fails if the client goes away."""
    model_config = ConfigDict(extra="forbid")
    feeds: str | None = Field(None, description="the stage the client sends its input to")
    receives: str | None = Field(None, description="the stage whose output the client receives")
    ttl_s: int = Field(10, ge=2, le=600, description="how long the client may stay silent before "
                                                     "the run counts it gone")


class FlowRunRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str = Field(min_length=1, max_length=100)
    state: FlowState = FlowState.pending
    attempt: int = Field(0, ge=0, description="the current attempt, 1, 2, ...; 0 before the first")
    restarts: int = Field(0, ge=0, le=100, description="attempts allowed after the first, when instances are lost")
    spec: FlowSpec
    base_dir: str = Field(min_length=1, description="where the flow's relative paths and functions are")
    bounds: dict[str, list[str]] | None = Field(None, description="range edge 'a>b' -> its key cut points")
    tasks: dict[str, list[str]] = Field(default_factory=dict, description="stage -> the current attempt's task ids")
    restarted: list[Restart] = Field(default_factory=list)
    error: str | None = None
    failure: Failure | None = None
    bad_records: int = Field(0, ge=0)
    client: ClientLink | None = None
    driver: str | None = Field(None, description="the node driving the run")
    driver_crashes: int = Field(0, ge=0, description="times a driver of this run failed on an unexpected error")
    started: float | None = None      # when it was submitted
    ended: float | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not RUN_ID.match(v):
            raise ValueError("use letters, digits, '_', '.' and '-' (at most 200)")
        return v

    @field_serializer("spec")
    def _spec(self, spec: FlowSpec):
        return spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)

    @property
    def is_final(self) -> bool:
        return self.state in FINAL

    def to_json(self) -> dict:
        return self.model_dump(mode="json")

    def summary(self) -> dict:
        return {"id": self.id, "name": self.name, "state": self.state.value, "attempt": self.attempt,
                "started": self.started, "ended": self.ended, "error": self.error}
