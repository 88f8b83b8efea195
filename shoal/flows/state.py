"""What a flow run does next, decided in pure code. `decide(run, event, now)` takes the
run's state and one event (the driver took the run, an instance ended, a cancel, the
client went away, time passed, the sinks were committed) and returns the new state and
the actions the driver carries out. No I/O and no clock: the driver passes `now`.

The rules: an attempt succeeds when every instance succeeded (then the sinks are
committed, once); after the first instance that did not succeed, the others get SETTLE_S
to end on their own, then the run is decided: cancelled if a cancel was asked for, failed
if an instance failed by itself (its command, function or bad records: running it again
would fail again), else restarted while `restarts` allow (an instance or its node was
lost), else failed."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence, Union

from .outcome import Outcome, OutcomeKind
from .run import FINAL, Failure, FlowRunRecord, FlowState, Restart

SETTLE_S = 1.0      # after the first failure, how long the other instances get to end on their own

Who = tuple[str, int]   # (stage, instance index)


def who_text(who: Who) -> str:
    return f"{who[0]}[{who[1]}]"


@dataclass(frozen=True)
class RunState:
    run: str
    state: FlowState
    attempt: int
    instances: tuple[Who, ...]               # every instance of an attempt
    restarts: int = 0                        # attempts allowed after the first when instances are lost
    restarted: int = 0                       # ...of which used
    bad_records: int = 0                     # malformed records tolerated in all
    ended: Mapping[Who, Outcome] = field(default_factory=dict)   # this attempt's, in the order they ended
    failing_since: float | None = None       # when the first instance of this attempt did not succeed
    cancelling: bool = False

    @classmethod
    def of(cls, record: FlowRunRecord, instances: list[Who]) -> "RunState":
        return cls(run=record.id, state=record.state, attempt=record.attempt, instances=tuple(instances),
                   restarts=record.restarts, restarted=len(record.restarted),
                   bad_records=record.spec.bad_records)


# -- events ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Begin:
    """The driver holds the run: a new one, or one taken over from a driver that died."""


@dataclass(frozen=True)
class Prepared:
    """The checks passed and the range edges' bounds are sampled."""


@dataclass(frozen=True)
class Refused:
    """The checks failed before any instance started."""
    message: str


@dataclass(frozen=True)
class InstanceEnded:
    attempt: int
    who: Who
    outcome: Outcome


@dataclass(frozen=True)
class CancelRequested:
    pass


@dataclass(frozen=True)
class ClientGone:
    message: str


@dataclass(frozen=True)
class Tick:
    """Time passed (a WakeAt came due)."""


@dataclass(frozen=True)
class Committed:
    pass


@dataclass(frozen=True)
class CommitFailed:
    message: str


Event = Union[Begin, Prepared, Refused, InstanceEnded, CancelRequested, ClientGone, Tick, Committed, CommitFailed]


# -- actions --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prepare:
    """Check the sources and sinks, sample the range edges' bounds."""


@dataclass(frozen=True)
class StartAttempt:
    attempt: int
    restart: Restart | None = None           # the attempt given up, when this is a restart


@dataclass(frozen=True)
class FollowAttempt:
    """Take over a running attempt: submit what may be missing (submission is idempotent)
    and follow its instances."""
    attempt: int


@dataclass(frozen=True)
class StopInstances:
    attempt: int


@dataclass(frozen=True)
class AbortSinks:
    attempt: int


@dataclass(frozen=True)
class Commit:
    attempt: int


@dataclass(frozen=True)
class Finish:
    state: FlowState
    failure: Failure | None = None
    bad_records: int = 0


@dataclass(frozen=True)
class WakeAt:
    when: float


Action = Union[Prepare, StartAttempt, FollowAttempt, StopInstances, AbortSinks, Commit, Finish, WakeAt]


# -- decisions ------------------------------------------------------------------------------

def decide(run: RunState, event: Event, now: float) -> tuple[RunState, list[Action]]:
    if run.state in FINAL:
        return run, []
    state = run.state
    if isinstance(event, Begin):
        if state == FlowState.pending:
            return run, [Prepare()]
        if state == FlowState.running:
            return run, [FollowAttempt(run.attempt)]
        return run, [Commit(run.attempt)]
    if isinstance(event, Prepared) and state == FlowState.pending:
        return _start(run, 1, None)
    if isinstance(event, Refused) and state == FlowState.pending:
        return _finish(run, FlowState.failed, Failure(message=event.message))
    if isinstance(event, CancelRequested):
        if state == FlowState.pending:
            return _finish(run, FlowState.cancelled)
        if state == FlowState.running and not run.cancelling:
            run = replace(run, cancelling=True)
            return run, [StopInstances(run.attempt)]
        return run, []          # committing: too late, the output is on its way
    if isinstance(event, ClientGone) and state in (FlowState.pending, FlowState.running):
        return _finish(run, FlowState.failed, Failure(message=event.message),
                       first=_stop(run) if state == FlowState.running else ())
    if isinstance(event, InstanceEnded):
        if state != FlowState.running or event.attempt != run.attempt or event.who in run.ended \
                or event.who not in run.instances:
            return run, []
        failing = run.failing_since
        if failing is None and event.outcome.kind != OutcomeKind.succeeded:
            failing = now
        run = replace(run, ended={**run.ended, event.who: event.outcome}, failing_since=failing)
        return _settle(run, now)
    if isinstance(event, Tick) and state == FlowState.running:
        return _settle(run, now)
    if isinstance(event, Committed) and state == FlowState.committing:
        return _finish(run, FlowState.succeeded, bad_records=_bad(run))
    if isinstance(event, CommitFailed) and state == FlowState.committing:
        return _finish(run, FlowState.failed, Failure(message=event.message))
    return run, []


def _bad(run: RunState) -> int:
    return sum(o.bad for o in run.ended.values())


def _stop(run: RunState) -> list[Action]:
    """Give up the current attempt: its instances and what its sinks wrote."""
    return [StopInstances(run.attempt), AbortSinks(run.attempt)]


def _start(run: RunState, attempt: int, restart: Restart | None,
           first: Sequence[Action] = ()) -> tuple[RunState, list[Action]]:
    """Start `attempt`, after the actions `first` (those giving up the one before)."""
    new = replace(run, state=FlowState.running, attempt=attempt, ended={}, failing_since=None,
                  restarted=run.restarted + (restart is not None))
    return new, [*first, StartAttempt(attempt, restart)]


def _finish(run: RunState, state: FlowState, failure: Failure | None = None, bad_records: int = 0,
            first: Sequence[Action] = ()) -> tuple[RunState, list[Action]]:
    """End the run in `state`, after the actions `first`."""
    return replace(run, state=state), [*first, Finish(state, failure, bad_records)]


def _settle(run: RunState, now: float) -> tuple[RunState, list[Action]]:
    """Decide the attempt once it can be decided: all succeeded, or SETTLE_S after the
    first that did not (or sooner, when every instance has ended)."""
    not_ok = [(w, o) for w, o in run.ended.items() if o.kind != OutcomeKind.succeeded]
    everyone = len(run.ended) == len(run.instances)
    if not not_ok:
        if not everyone:
            return run, []
        bad = _bad(run)
        if bad > run.bad_records:
            examples = [e for o in run.ended.values() for e in o.bad_examples]
            return _finish(run, FlowState.failed, Failure(message=(
                f"{bad} bad records in all (over the limit of {run.bad_records}; set bad_records: to "
                f"tolerate more), e.g. {examples[:3]}")), first=[AbortSinks(run.attempt)])
        return replace(run, state=FlowState.committing), [Commit(run.attempt)]
    settle_at = run.failing_since + SETTLE_S
    if not everyone and now < settle_at:
        return run, [WakeAt(settle_at)]
    stop = _stop(run)
    if run.cancelling:
        return _finish(run, FlowState.cancelled, first=stop)
    own = next(((w, o) for w, o in not_ok if o.own_failure), None)
    if own is not None:
        w, o = own
        return _finish(run, FlowState.failed, Failure(
            message=f"stage instance {who_text(w)} failed: {o.message or o.kind.value}", stage=w[0],
            stderr=o.stderr), first=stop)
    # name the instance that was lost rather than a peer that only saw its stream break
    w, o = next(((w, o) for w, o in not_ok if o.kind == OutcomeKind.lost), not_ok[0])
    why = f"{who_text(w)}: {o.message or o.kind.value}"
    if run.restarted < run.restarts:
        return _start(run, run.attempt + 1, Restart(attempt=run.attempt, why=why), first=stop)
    return _finish(run, FlowState.failed, Failure(message=(
        f"an instance was lost on each of {run.attempt} attempts (restarts: {run.restarts}); last: {why}")),
        first=stop)
