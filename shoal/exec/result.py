"""How an attempt ended, as plain data: what the executor reports and the node's core
turns into the task's new record."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AttemptResult:
    exit_code: int | None
    signal: int | None
    started_at: float
    finished_at: float
    cpu_s: float
    max_rss_bytes: int | None
    stdout_tail: str = ""
    stderr_tail: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    reason: str | None = None   # set when it did not simply exit
    result: str | None = None   # function tasks: base64 pickle of a small return value
    result_ref: dict | None = None   # ... or where a big one is kept
    error: dict | None = None   # ... or the exception it raised
    timed_out: bool = False

    @classmethod
    def not_run(cls, now: float, reason: str) -> "AttemptResult":
        """An attempt that ended without a process: cancelled or released before it
        started, or one that could not be started."""
        return cls(None, None, now, now, 0.0, 0, reason=reason)
