"""Task state transitions. Each takes a record and an event and returns the new record;
the store commits it with a transaction that checks what was read."""
from __future__ import annotations

from ..model import Attempt, TaskRecord, TaskState


def retry_delay_s(backoff_s: float, attempt: int, cap_s: float = 300.0) -> float:
    """Seconds to wait before attempt `attempt + 1`: backoff * 2**(attempt-1), capped."""
    if backoff_s <= 0:
        return 0.0
    return min(cap_s, backoff_s * (2 ** max(0, attempt - 1)))


def start_attempt(task: TaskRecord, node: str, now: float) -> TaskRecord:
    """queued -> running: a node claimed it."""
    n = task.attempt + 1
    return task.model_copy(update={
        "state": TaskState.running, "attempt": n, "not_before": None,
        "attempts": [*task.attempts, Attempt(n=n, node=node, started_at=now)],
    })


def finish_attempt(task: TaskRecord, result: Attempt, output: dict, now: float) -> TaskRecord:
    """running -> succeeded | failed | queued (retry) | cancelled, from how the attempt ended.
    `output` holds stdout_tail, stderr_tail, stdout_bytes, stderr_bytes."""
    attempts = [*task.attempts[:-1], result] if task.attempts else [result]
    update = {"attempts": attempts, **output}
    if task.cancel_requested:
        return task.model_copy(update={**update, "state": TaskState.cancelled, "finished_at": now,
                                       "reason": task.reason or "cancelled while running"})
    if result.state == TaskState.succeeded:
        return task.model_copy(update={**update, "state": TaskState.succeeded, "finished_at": now,
                                       "reason": None})
    return _failed_attempt(task.model_copy(update=update), result.reason or _exit_words(result), now)


def release_attempt(task: TaskRecord, result: Attempt, output: dict, now: float) -> TaskRecord:
    """Its node shut down cleanly: back to the queue; this attempt does not count
    against the task's retries."""
    if task.cancel_requested:
        return finish_attempt(task, result, output, now)
    result = result.model_copy(update={"state": TaskState.failed,
                                       "reason": f"node {result.node} shut down; requeued"})
    attempts = [*task.attempts[:-1], result] if task.attempts else [result]
    return task.model_copy(update={"attempts": attempts, **output, "state": TaskState.queued,
                                   "released": task.released + 1, "reason": result.reason,
                                   "not_before": None})


def node_lost(task: TaskRecord, node: str, now: float) -> TaskRecord:
    """The node running the current attempt died (its lease expired)."""
    attempts = list(task.attempts)
    if attempts:
        attempts[-1] = attempts[-1].model_copy(update={
            "state": TaskState.failed, "finished_at": now, "reason": f"node {node} was lost"})
    task = task.model_copy(update={"attempts": attempts})
    if task.cancel_requested:
        return task.model_copy(update={"state": TaskState.cancelled, "finished_at": now,
                                       "reason": "cancelled (its node was lost)"})
    task = _failed_attempt(task, f"node {node} was lost", now)
    # the command did not fail, its node did: the lease TTL was the wait already, so the
    # retry is claimable at once (backoff spaces out retries of failing commands only)
    return task.model_copy(update={"not_before": None}) if task.state == TaskState.queued else task


def cancel_queued(task: TaskRecord, now: float) -> TaskRecord:
    return task.model_copy(update={"state": TaskState.cancelled, "finished_at": now,
                                   "reason": "cancelled before it started", "not_before": None})


def request_cancel(task: TaskRecord) -> TaskRecord:
    return task.model_copy(update={"cancel_requested": True, "reason": "cancelled while running"})


def _failed_attempt(task: TaskRecord, why: str, now: float) -> TaskRecord:
    """Retry if the policy allows, else fail for good. Attempts are numbered from 1;
    retries=2 means up to 3 attempts."""
    if task.attempt - task.released <= task.spec.retries:
        delay = retry_delay_s(float(task.spec.backoff), task.attempt)
        return task.model_copy(update={"state": TaskState.queued, "reason": f"retrying: {why}",
                                       "not_before": now + delay if delay else None})
    counted = task.attempt - task.released
    tries = f" after {counted} attempts" if counted > 1 else ""
    return task.model_copy(update={"state": TaskState.failed, "finished_at": now,
                                   "reason": f"{why}{tries}"})


def _exit_words(result: Attempt) -> str:
    if result.signal:
        return f"killed by signal {result.signal}"
    return f"exit code {result.exit_code}"
