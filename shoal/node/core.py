"""The node's decisions as a pure state machine, in the shape of dask's
worker_state_machine: `NodeState.handle(*events, now=...)` returns instructions.

It decides what to claim (and how far ahead), what to start and in which order, what a
cancel does, what fencing and draining drop or kill, when to look again at a task held
back by its retry backoff, and how an attempt's end becomes its task's new record. It
does no I/O, reads no clock (every call is given `now`, wall seconds) and runs no
process; the scheduler turns watch replies, process exits and timers into events and
carries the instructions out."""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Iterator, NamedTuple

from ..exec.result import AttemptResult
from ..logic import placement, transitions
from ..model import Attempt, EndedBy, TaskRecord, TaskState
from ..model.keys import Keys
from ..settings import NodeSettings
from ..store.tasks import Claim, Completion, StepResult
from .queue_view import QueueView

log = logging.getLogger("shoal.node")
OUTPUT_FIELDS = ("stdout_tail", "stderr_tail", "stdout_bytes", "stderr_bytes", "result", "result_ref", "error")
STEP_RETRY_S = 0.5   # pause after a step etcd refused for longer than the store rides out


# -- events -----------------------------------------------------------------------------

@dataclass(slots=True)
class QueueLoaded:
    """The queue was read whole (or its first `limit` entries, `more` if cut short)."""
    kvs: list
    revision: int
    more: bool


@dataclass(slots=True)
class QueueChanged:
    """A watch batch on queue/: (kind, kv, prev) triples."""
    changes: list


@dataclass(slots=True)
class StepDue:
    """The step loop is free: commit what ended, claim what fits. `claim_delayed`: the
    claim delay has been waited already, so claim now."""
    claim_delayed: bool = False


@dataclass(slots=True)
class StepCommitted:
    """etcd answered a Step."""
    step: "Step"
    result: StepResult


@dataclass(slots=True)
class StepFailed:
    """A Step did not reach etcd (away longer than the store's retries)."""
    step: "Step"


@dataclass(slots=True)
class AttemptEnded:
    """Attempt `attempt` of a task ended (or could not start)."""
    task_id: str
    attempt: int
    result: AttemptResult


@dataclass(slots=True)
class CancelRequested:
    """A cancel key for a task of ours. `unstarted_only`: only if its process has not
    started (a task claimed ahead); a started one is left alone."""
    task_id: str
    unstarted_only: bool = False


@dataclass(slots=True)
class LeaseLost:
    """Our lease is gone (expired, or not refreshed for a whole TTL)."""


@dataclass(slots=True)
class Registered:
    """The node holds a lease again (or for the first time)."""


@dataclass(slots=True)
class DrainRequested:
    """The node is shutting down: kill with `grace_s`, hand everything back."""
    grace_s: float


@dataclass(slots=True)
class TimerFired:
    """The timer armed for `at` went off."""
    at: float


@dataclass(slots=True)
class ProgressPublished:
    """A running attempt's record was rewritten with progress at `read_rev`."""
    task_id: str
    attempt_rev: int
    record: TaskRecord
    read_rev: int


@dataclass(slots=True)
class RunningKeysRead:
    """Our running keys on the current lease, as (task id, create revision)."""
    keys: list


# -- instructions ----------------------------------------------------------------------

@dataclass(slots=True, frozen=True)
class Wake:
    """Run the step loop: there may be something to commit or claim."""


WAKE = Wake()


@dataclass(slots=True, frozen=True)
class DelayClaims:
    """Wait this long, then offer StepDue(claim_delayed=True): a busy node lets idler
    ones win the race for new work."""
    seconds: float


@dataclass(slots=True, frozen=True)
class RetryStep:
    """etcd is away: wait this long before the next step."""
    seconds: float


@dataclass(slots=True)
class Step:
    """One etcd transaction: these completions and claims. `fences` is the fence count
    when it was decided: a reply that comes back after a fence is stale."""
    completions: list[Completion]
    claims: list[Claim]
    fences: int


@dataclass(slots=True, frozen=True)
class StartAttempt:
    """Start the process of this (claimed, running) record's attempt."""
    record: TaskRecord


@dataclass(slots=True, frozen=True)
class KillAttempt:
    """SIGTERM the attempt's process group, SIGKILL after grace_s."""
    task_id: str
    reason: str
    grace_s: float


@dataclass(slots=True, frozen=True)
class ArmTimer:
    """Offer TimerFired(at) at wall time `at`."""
    at: float


@dataclass(slots=True, frozen=True)
class ReleaseOrphan:
    """A running key of ours with no attempt here (a claim whose reply was lost): hand
    the task back to the queue."""
    task_id: str
    create_revision: int


# -- state -------------------------------------------------------------------------------

@dataclass(slots=True)
class Held:
    """A task this node holds: claimed (in `NodeState.ready` until started), then
    started, then ended until the end is committed."""
    record: TaskRecord       # the running record as we wrote it
    read_rev: int            # its mod_revision
    attempt_rev: int         # create_revision of our running key
    alive: bool = False      # started and not ended: it uses the node's resources


class RunningAttempt(NamedTuple):
    task_id: str
    record: TaskRecord
    read_rev: int
    attempt_rev: int


class NodeState:
    """Everything the node decides from. `handle()` is the only way in that changes it."""

    def __init__(self, settings: NodeSettings, keys: Keys):
        self.s = settings
        self.keys = keys
        self.total = placement.Capacity(settings.cpus, settings.memory_bytes, settings.gpus,
                                        settings.slots, settings.disk_bytes)
        self.queue = QueueView()
        self.held: dict[str, Held] = {}
        # claimed but not started, in queue order: when the queue is deep a node claims a
        # few tasks beyond its free slots, so a finished attempt is replaced at once
        self.ready: deque[str] = deque()
        # ended, not yet committed: task id -> (new record, released by a drain)
        self.finished: dict[str, tuple[TaskRecord, bool]] = {}
        self.avg_runtime_s: float | None = None   # moving average of attempt run times
        self.accepting = True
        self.draining = False
        self.steps = 0
        self.completed_total = 0
        self.fences = 0          # times the lease was lost: a step decided before one is stale
        self.last_rev = 0        # revision of the last step whose reply was applied
        self.timer_at: float | None = None
        # the Step sent whose reply has not come back (the step loop sends one at a time),
        # and cancels that came meanwhile for what it claims (our cancel watch can outrun
        # our own step's reply): task id -> unstarted_only of the strongest cancel seen
        self.in_flight: Step | None = None
        self.early_cancels: dict[str, bool] = {}
        self._handlers = {
            QueueLoaded: self._queue_loaded, QueueChanged: self._queue_changed,
            StepDue: self._step_due, StepCommitted: self._step_committed, StepFailed: self._step_failed,
            AttemptEnded: self._attempt_ended, CancelRequested: self._cancel_requested,
            LeaseLost: self._lease_lost, Registered: self._registered,
            DrainRequested: self._drain_requested, TimerFired: self._timer_fired,
            ProgressPublished: self._progress_published, RunningKeysRead: self._running_keys_read,
        }

    def handle(self, *events, now: float) -> list:
        """Apply events in order; the instructions they call for, in order."""
        out: list = []
        for ev in events:
            self._handlers[type(ev)](ev, now, out)
        return out

    # -- queries --------------------------------------------------------------------------

    def free(self) -> placement.Capacity:
        """What is free now: total minus the attempts whose process is alive."""
        cap = self.total
        for h in self.held.values():
            if h.alive:
                cap = cap.minus(h.record.spec)
        return cap

    def busy(self) -> int:
        return sum(1 for h in self.held.values() if h.alive)

    def running(self) -> Iterator[RunningAttempt]:
        """Attempts whose process runs now."""
        for tid, h in self.held.items():
            if h.alive:
                yield RunningAttempt(tid, h.record, h.read_rev, h.attempt_rev)

    def prefetch(self) -> int:
        """How many tasks to hold beyond free slots. Only while recent attempts are short:
        then the claim round trip, not the work, is what limits throughput. Long tasks are
        never claimed ahead, so they never queue behind each other on a busy node while
        another node sits idle."""
        if self.avg_runtime_s is None or self.avg_runtime_s > self.s.prefetch_below_s:
            return 0
        # no more than the slots will start within the horizon: tasks held here are tasks
        # another node cannot take, and that the reaper must hand on if we die
        per_slot = min(self.s.prefetch_per_slot, int(self.s.prefetch_horizon_s / max(self.avg_runtime_s, 1e-4)))
        return per_slot * self.s.slots

    # -- queue ------------------------------------------------------------------------------

    def _queue_loaded(self, ev: QueueLoaded, now: float, out: list) -> None:
        self.queue.load(ev.kvs, ev.revision, ev.more)
        out.append(WAKE)

    def _queue_changed(self, ev: QueueChanged, now: float, out: list) -> None:
        if self.queue.apply(ev.changes):
            out.append(WAKE)

    # -- steps ---------------------------------------------------------------------------------

    def _step_due(self, ev: StepDue, now: float, out: list) -> None:
        claims = self._choose_claims(now, out) if self.accepting else []
        if claims and not ev.claim_delayed:
            busy = self.busy()
            if busy:
                out.append(DelayClaims(placement.claim_delay_s(busy, self.s.slots)))
                return
        held = self.held
        completions = [Completion(rec, held[tid].read_rev, held[tid].attempt_rev)
                       for tid, (rec, _) in self.finished.items()]
        if claims or completions:
            self.in_flight = Step(completions, claims, self.fences)
            out.append(self.in_flight)

    def _choose_claims(self, now: float, out: list) -> list[Claim]:
        """What to claim now: placement decides over the queue head (read lazily), this
        turns its choice into claims."""
        free = self.free()
        for tid in self.ready:
            free = free.minus(self.held[tid].record.spec)
        # beyond what is free, a deep queue lets us hold `prefetch` more, each of which
        # must fit the whole node
        extra = max(0, self.prefetch() - len(self.ready)) if len(self.queue) > self.s.slots else 0
        by_id = {}
        held = self.held

        def candidates():
            for key, kv, rec in self.queue.head(self.s.claim_scan):
                if rec.id not in held:
                    by_id[rec.id] = (key, kv, rec)
                    yield rec.id, rec.spec, rec.not_before
        ids, soonest = placement.plan_claims(candidates(), free, self.s.labels, now,
                                             total=self.total, extra=extra)
        node = self.s.node_id
        claims = []
        for tid in ids:
            key, kv, rec = by_id[tid]
            claims.append(Claim(tid, transitions.start_attempt(rec, node, now), key, kv.mod_revision))
        if soonest is not None and (self.timer_at is None or soonest < self.timer_at):
            self.timer_at = soonest
            out.append(ArmTimer(soonest))
        return claims

    def _step_failed(self, ev: StepFailed, now: float, out: list) -> None:
        # nothing was applied: what ended stays to commit, the claims are chosen afresh
        self._claims_answered(ev.step)
        out.append(RetryStep(STEP_RETRY_S))

    def _claims_answered(self, step: "Step") -> None:
        if self.in_flight is step:
            self.in_flight = None
            self.early_cancels.clear()

    def _step_committed(self, ev: StepCommitted, now: float, out: list) -> None:
        step, result = ev.step, ev.result
        try:
            self._apply_step(step, result, now, out)
        finally:
            self._claims_answered(step)

    def _apply_step(self, step: "Step", result: StepResult, now: float, out: list) -> None:
        if step.fences != self.fences:
            # fenced while the step was in flight (etcd away longer than the TTL): its
            # attempts are killed and forgotten, and what it claimed holds keys on the
            # old lease; the reaper requeues those like the rest of the fenced work
            log.info("a step decided before fencing ended after it; its result is dropped")
            out.append(WAKE)
            return
        self.last_rev = result.revision
        self.steps += 1
        self._after_completions(step.completions, result, now)
        self._after_claims(step.claims, result, now, out)
        # after any claims go again: on success there may be room for more, and when
        # another node won the race the lost keys are out of the view, so the next pass
        # tries other queued tasks (nothing else wakes an idle node that lost)
        if self.finished or step.claims:
            out.append(WAKE)

    def _after_completions(self, completions: list[Completion], result: StepResult, now: float) -> None:
        for c, ok in zip(completions, result.completed):
            tid = c.record.id
            new, released = self.finished.pop(tid)
            if ok:
                self.held.pop(tid, None)
                self.completed_total += 1
                continue
            current, rev = result.current.get(tid, (None, 0))
            if current is None:
                log.info("attempt %d of %s was fenced (its lease or claim is gone); dropped", c.record.attempt, tid)
                self.held.pop(tid, None)
                continue
            # someone changed the task meanwhile (a cancel request): redo from their record
            self.held[tid].read_rev = rev
            output = new.model_dump(include=set(OUTPUT_FIELDS))
            end = transitions.release_attempt if released else transitions.finish_attempt
            self.finished[tid] = (end(current, new.last, output, now), released)

    def _after_claims(self, claims: list[Claim], result: StepResult, now: float, out: list) -> None:
        rev = result.revision
        for c, ok in zip(claims, result.claimed):
            self.queue.discard(c.queue_key, None if ok else c.queued_rev)
            if ok:
                self.held[c.task_id] = Held(c.record, rev, rev)
                self.ready.append(c.task_id)
                if c.task_id in self.early_cancels:   # cancelled before we knew we had it
                    self._cancel_requested(CancelRequested(c.task_id, self.early_cancels[c.task_id]), now, out)
        if len(self.ready) > 1:
            # start in queue order (priority, then age): a task claimed now may be ahead of
            # those claimed earlier, e.g. one requeued from a lost node or of higher priority,
            # and must not wait behind the tasks held ahead of free slots
            key, held = self.keys.queue, self.held
            self.ready = deque(sorted(self.ready, key=lambda t: key(held[t].record.spec.priority, t)))
        self._start_ready(out)

    def _start_ready(self, out: list) -> None:
        """Start claimed attempts, in queue order, while they fit what is free."""
        ready, labels = self.ready, self.s.labels
        while ready:
            h = self.held[ready[0]]
            if not placement.fits(h.record.spec, self.free(), labels):
                return
            ready.popleft()
            h.alive = True
            out.append(StartAttempt(h.record))

    # -- attempts -------------------------------------------------------------------------------

    def _attempt_ended(self, ev: AttemptEnded, now: float, out: list) -> None:
        h = self.held.get(ev.task_id)
        # an attempt fenced and forgotten may end after its task was claimed here again
        if h is None or not h.alive or h.record.attempt != ev.attempt:
            return
        self._end(ev.task_id, h, ev.result, out)

    def _end(self, task_id: str, h: Held, res: AttemptResult, out: list) -> None:
        freed = h.alive
        h.alive = False
        ok = res.exit_code == 0 and res.reason is None
        attempt = Attempt(n=h.record.attempt, node=self.s.node_id,
                          state=TaskState.succeeded if ok else TaskState.failed,
                          started_at=res.started_at, finished_at=res.finished_at,
                          exit_code=res.exit_code, signal=res.signal, cpu_s=res.cpu_s,
                          max_rss_bytes=res.max_rss_bytes, reason=res.reason, ended_by=ended_by(res))
        took = max(0.0, res.finished_at - res.started_at)
        self.avg_runtime_s = took if self.avg_runtime_s is None else 0.9 * self.avg_runtime_s + 0.1 * took
        output = {f: getattr(res, f) for f in OUTPUT_FIELDS}
        if self.draining:
            new = transitions.release_attempt(h.record, attempt, output, res.finished_at)
        else:
            new = transitions.finish_attempt(h.record, attempt, output, res.finished_at)
        self.finished[task_id] = (new, self.draining)
        out.append(WAKE)
        if freed:
            self._start_ready(out)

    def _cancel_requested(self, ev: CancelRequested, now: float, out: list) -> None:
        tid = ev.task_id
        h = self.held.get(tid)
        if h is None:
            step = self.in_flight
            if step is not None and any(c.task_id == tid for c in step.claims):
                # our claim's reply is still on its way: apply it then
                self.early_cancels[tid] = self.early_cancels.get(tid, True) and ev.unstarted_only
            return
        if tid in self.ready:   # claimed, not started
            self.ready.remove(tid)
            if ev.unstarted_only:  # the record in etcd is not flagged: flag the one we write
                h.record = h.record.model_copy(update={"cancel_requested": True,
                                                       "reason": "cancelled before it started"})
            self._end(tid, h, AttemptResult.not_run(now, "cancelled"), out)
        elif h.alive and not ev.unstarted_only:
            out.append(KillAttempt(tid, "cancelled while running", self.s.cancel_grace_s))

    def _progress_published(self, ev: ProgressPublished, now: float, out: list) -> None:
        h = self.held.get(ev.task_id)
        # only if nothing moved meanwhile (the attempt may have ended while it was written)
        if h is not None and h.alive and h.attempt_rev == ev.attempt_rev:
            h.record, h.read_rev = ev.record, ev.read_rev

    # -- lease, shutdown, timers ---------------------------------------------------------------

    def _lease_lost(self, ev: LeaseLost, now: float, out: list) -> None:
        """Every attempt we run may already be running elsewhere: kill them all now and
        forget them; their writes would be refused anyway."""
        self.fences += 1
        for tid, h in self.held.items():
            if h.alive:
                out.append(KillAttempt(tid, "fenced: the node lost its lease", 0.0))
        self.held.clear()
        self.finished.clear()
        self.ready.clear()

    def _registered(self, ev: Registered, now: float, out: list) -> None:
        out.append(WAKE)

    def _drain_requested(self, ev: DrainRequested, now: float, out: list) -> None:
        """Stop claiming; kill running attempts and hand every task we hold back to the
        queue without counting it against its retries."""
        self.accepting = False
        self.draining = True
        while self.ready:
            tid = self.ready.popleft()
            self._end(tid, self.held[tid], AttemptResult.not_run(now, "not started"), out)
        for tid, h in self.held.items():
            if h.alive:
                out.append(KillAttempt(tid, f"node {self.s.node_id} shut down", ev.grace_s))

    def _timer_fired(self, ev: TimerFired, now: float, out: list) -> None:
        if self.timer_at == ev.at:
            self.timer_at = None
        out.append(WAKE)

    def _running_keys_read(self, ev: RunningKeysRead, now: float, out: list) -> None:
        # only keys older than the last step we applied: a newer one may be a claim whose
        # reply is still on its way
        for tid, create_rev in ev.keys:
            if tid not in self.held and create_rev <= self.last_rev:
                out.append(ReleaseOrphan(tid, create_rev))


def ended_by(res: AttemptResult) -> EndedBy:
    """How an attempt ended, from what its process did (a cancel or a release is marked
    by the transition that knows of it)."""
    if res.timed_out:
        return EndedBy.timeout
    if res.signal is not None:
        return EndedBy.signal
    if res.exit_code is None:
        return EndedBy.cancelled if res.reason == "cancelled" else EndedBy.not_started
    return EndedBy.exit
