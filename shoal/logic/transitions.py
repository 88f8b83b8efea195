"""Task state transitions. Each takes a record and an event and returns the new record;
the store commits it with a transaction that checks what was read."""
from __future__ import annotations

from ..model import Attempt, EndedBy, TaskRecord, TaskState
from ..model.task import DEFAULT_NODE_LOSS_RETRIES

# the start of a queued task's reason when no live node can run it (placement.unplaceable)
UNPLACEABLE = "no node can run it: "


def retry_delay_s(backoff_s: float, attempt: int, cap_s: float = 300.0) -> float:
    """Seconds to wait before attempt `attempt + 1`: backoff * 2**(attempt-1), capped."""
    if backoff_s <= 0:
        return 0.0
    return min(cap_s, backoff_s * (2 ** max(0, attempt - 1)))


def start_attempt(task: TaskRecord, node: str, now: float) -> TaskRecord:
    """queued -> running: a node claimed it."""
    n = task.attempt + 1
    update = {"state": TaskState.running, "attempt": n, "not_before": None,
              "attempts": [*task.attempts, Attempt(n=n, node=node, started_at=now)]}
    if task.reason and task.reason.startswith(UNPLACEABLE):  # a node that fits came after all
        update["reason"] = None
    return task.model_copy(update=update)


def finish_attempt(task: TaskRecord, result: Attempt, output: dict, now: float) -> TaskRecord:
    """running -> succeeded | failed | queued (retry) | cancelled, from how the attempt ended.
    `output` holds stdout_tail, stderr_tail, stdout_bytes, stderr_bytes."""
    if task.cancel_requested and result.state != TaskState.succeeded:
        result = result.model_copy(update={"ended_by": EndedBy.cancelled})
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
    result = result.model_copy(update={"state": TaskState.failed, "ended_by": EndedBy.released,
                                       "reason": f"node {result.node} shut down; requeued"})
    attempts = [*task.attempts[:-1], result] if task.attempts else [result]
    return task.model_copy(update={"attempts": attempts, **output, "state": TaskState.queued,
                                   "released": task.released + 1, "reason": result.reason,
                                   "not_before": None})


def node_lost(task: TaskRecord, node: str, now: float, limit: int = DEFAULT_NODE_LOSS_RETRIES,
              ended_by: EndedBy = EndedBy.node_lost) -> TaskRecord:
    """The current attempt's node died (its lease expired: `node_lost`) or lost its lease
    and fenced the attempt (`lease_lost`). Neither is the command's doing, so it does not
    use up `retries`: the task is requeued up to its node-loss limit (its own
    `node_loss_retries`, else the cluster's `limit`), then fails saying so."""
    what = f"node {node} was lost" if ended_by == EndedBy.node_lost else \
        f"node {node} lost its lease and stopped the attempt"
    attempts = list(task.attempts)
    if attempts:
        attempts[-1] = attempts[-1].model_copy(update={
            "state": TaskState.failed, "finished_at": now, "reason": what, "ended_by": ended_by})
    losses = task.node_losses + 1
    task = task.model_copy(update={"attempts": attempts, "node_losses": losses})
    if task.cancel_requested:
        return task.model_copy(update={"state": TaskState.cancelled, "finished_at": now,
                                       "reason": f"cancelled ({what})"})
    allowed = task.spec.node_loss_retries if task.spec.node_loss_retries is not None else limit
    if losses <= allowed:
        # the lease TTL was the wait already, so the task is claimable at once (backoff
        # spaces out retries of failing commands only)
        return task.model_copy(update={"state": TaskState.queued, "not_before": None,
                                       "reason": f"{what}; requeued (node loss {losses} of {allowed})"})
    times = "1 node loss" if losses == 1 else f"{losses} node losses"
    return task.model_copy(update={"state": TaskState.failed, "finished_at": now,
                                   "reason": f"{what}; gave up after {times} (node_loss_retries: {allowed})"})


def release_orphan(task: TaskRecord, node: str, now: float) -> TaskRecord:
    """Its node found it held a claim it had lost track of (the claim's reply never came
    back) and handed it back before starting it: requeued, counted against nothing."""
    why = f"node {node} handed back a claim it had lost track of; requeued"
    attempts = list(task.attempts)
    if attempts:
        attempts[-1] = attempts[-1].model_copy(update={
            "state": TaskState.failed, "finished_at": now, "reason": why, "ended_by": EndedBy.released})
    task = task.model_copy(update={"attempts": attempts, "released": task.released + 1})
    if task.cancel_requested:
        return task.model_copy(update={"state": TaskState.cancelled, "finished_at": now,
                                       "reason": "cancelled before it started"})
    return task.model_copy(update={"state": TaskState.queued, "not_before": None, "reason": why})


def explain_unplaceable(reason: str | None, why: str | None) -> tuple[bool, str | None]:
    """A queued task's reason once told `why` no live node can run it (placement.unplaceable;
    None: one can): (changed, new reason). Ours is set or updated; cleared once a node
    fits; any other reason (a retry's) is left alone, and an unchanged one is not
    rewritten."""
    ours = bool(reason) and reason.startswith(UNPLACEABLE)
    if why is None:
        return (True, None) if ours else (False, reason)
    new = UNPLACEABLE + why
    return (new != reason, new)


def cancel_queued(task: TaskRecord, now: float) -> TaskRecord:
    return task.model_copy(update={"state": TaskState.cancelled, "finished_at": now,
                                   "reason": "cancelled before it started", "not_before": None})


def request_cancel(task: TaskRecord) -> TaskRecord:
    return task.model_copy(update={"cancel_requested": True, "reason": "cancelled while running"})


def _failed_attempt(task: TaskRecord, why: str, now: float) -> TaskRecord:
    """Retry if the policy allows, else fail for good. Attempts are numbered from 1;
    retries=2 means up to 3 attempts. Attempts its nodes handed back or lost are not
    counted."""
    counted = task.attempt - task.released - task.node_losses
    if counted <= task.spec.retries:
        delay = retry_delay_s(float(task.spec.backoff), counted)
        return task.model_copy(update={"state": TaskState.queued, "reason": f"retrying: {why}",
                                       "not_before": now + delay if delay else None})
    tries = f" after {counted} attempts" if counted > 1 else ""
    return task.model_copy(update={"state": TaskState.failed, "finished_at": now,
                                   "reason": f"{why}{tries}"})


def _exit_words(result: Attempt) -> str:
    if result.signal:
        return f"killed by signal {result.signal}"
    return f"exit code {result.exit_code}"
