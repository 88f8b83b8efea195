"""How one stage instance ended, in its own words: each instance writes its outcome to
etcd before it exits, and the driver decides from outcomes, not from exit codes. An
instance that left no outcome (its node died, it was killed) counts as lost; exit codes
remain only as a fallback for an outcome that could not be written."""
from __future__ import annotations

import enum
import re

from pydantic import BaseModel, ConfigDict, Field

# exit statuses, the fallback when an outcome could not be written
EXIT_FAILED, EXIT_COMMAND, EXIT_BAD_RECORDS, EXIT_LOST, EXIT_UPSTREAM = 1, 3, 4, 75, 76


class OutcomeKind(str, enum.Enum):
    succeeded = "succeeded"
    failed = "failed"                    # its own command, function or operator failed
    bad_records = "bad_records"          # it saw more malformed records than the flow tolerates
    peer_lost = "peer_lost"              # a stream to or from another instance broke
    upstream_aborted = "upstream_aborted"  # a sender failed and told it so
    lost = "lost"                        # it left no outcome: its node died or it was killed


class Outcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: OutcomeKind
    message: str = ""
    stderr: str = Field("", description="the end of its command's stderr, when a command failed")
    bad: int = Field(0, ge=0, description="malformed records it skipped")
    bad_examples: list[str] = Field(default_factory=list)

    @property
    def own_failure(self) -> bool:
        """The instance failed by itself: running it again would fail again."""
        return self.kind in (OutcomeKind.failed, OutcomeKind.bad_records)


EXIT_KINDS = {EXIT_COMMAND: OutcomeKind.failed, EXIT_BAD_RECORDS: OutcomeKind.bad_records,
              EXIT_LOST: OutcomeKind.peer_lost, EXIT_UPSTREAM: OutcomeKind.upstream_aborted}


def outcome_of(task, written: Outcome | None) -> Outcome:
    """The outcome of an instance whose task has ended: what it wrote, else what its task
    record says. A task that did not succeed never counts as succeeded, whatever it wrote
    (it may have been killed right after writing)."""
    succeeded = task.state.value == "succeeded"
    if written is not None and (written.kind == OutcomeKind.succeeded) == succeeded:
        return written
    if succeeded:
        return Outcome(kind=OutcomeKind.succeeded)
    code, reason = task.exit_code, task.reason or ""
    if code is None or code <= 0 or "was lost" in reason:
        return Outcome(kind=OutcomeKind.lost, message=reason or "lost")
    kind = EXIT_KINDS.get(code, OutcomeKind.failed)
    stderr = (getattr(task, "stderr_tail", "") or "").strip()
    # the instance printed its outcome's message first on its stderr: "stage a[0]: command
    # exited with status 4". Its own exit status (3: "its command failed") would only say
    # the same in other numbers, so the message it printed is the one told
    said = re.search(r"^stage [^\s\[]+\[\d+\]: (.+)$", stderr, re.MULTILINE)
    if said:
        message, stderr = said.group(1), (stderr[:said.start()] + stderr[said.end():]).strip()
    else:
        message = f"its instance exited with status {code}" + (f" ({reason})" if reason and str(code) not in reason else "")
    return Outcome(kind=kind, message=message, stderr=stderr if kind == OutcomeKind.failed else "")
