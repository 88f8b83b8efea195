"""The node's core driven with plain events: exact instructions out, no processes, no
etcd, no sleeping. Time is a TestClock read by the test, handed in as `now`."""
from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings, strategies as st

from shoal.exec.result import AttemptResult
from shoal.logic.clock import TestClock
from shoal.model import EndedBy, TaskRecord, TaskSpec, TaskState
from shoal.model.keys import Keys
from shoal.node.core import (WAKE, ArmTimer, AttemptEnded, CancelRequested, DelayClaims, DrainRequested,
                             KillAttempt, LeaseLost, NodeState, QueueChanged, Registered, RetryStep, Step,
                             StartAttempt, StepCommitted, StepDue, StepFailed, TimerFired)
from shoal.settings import NodeSettings
from shoal.store.kv import KV
from shoal.store.records import encode
from shoal.store.tasks import StepResult

KEYS = Keys("/t/")


def node_settings(**kw) -> NodeSettings:
    return NodeSettings(**{"node_id": "n1", "home": Path("/nonexistent"), "cpus": 2.0,
                           "memory_bytes": 8 << 30, "slots": 2, **kw})


class Harness:
    """A NodeState, a fake queue in etcd (revisions only) and the clock."""

    def __init__(self, **kw):
        self.s = node_settings(**kw)
        self.core = NodeState(self.s, KEYS)
        self.clock = TestClock()
        self.rev = 100
        self.records: dict[str, TaskRecord] = {}

    def handle(self, *events) -> list:
        return self.core.handle(*events, now=self.clock.time())

    def queue(self, *ids: str, priority: int = 0, not_before: float | None = None, attempt: int = 0,
              **spec) -> list:
        """Put queued tasks on the queue; the instructions the watch batch yields."""
        batch = []
        for tid in ids:
            self.rev += 1
            rec = TaskRecord(id=tid, spec=TaskSpec(command=["true"], priority=priority, **spec),
                             submitted_at=self.clock.time(), not_before=not_before, attempt=attempt)
            self.records[tid] = rec
            batch.append(("PUT", KV(KEYS.queue(priority, tid), encode(rec), self.rev, self.rev), None))
        return self.handle(QueueChanged(batch))

    def decide(self, claim_delayed: bool = False) -> list:
        return self.handle(StepDue(claim_delayed))

    def step(self) -> Step | None:
        """StepDue, waiting out a claim delay if asked; the Step (or None)."""
        out = self.decide()
        if out and isinstance(out[-1], DelayClaims):
            out = self.decide(claim_delayed=True)
        steps = [i for i in out if isinstance(i, Step)]
        return steps[0] if steps else None

    def commit(self, step: Step, claimed: list[bool] | None = None, completed: list[bool] | None = None,
               current: dict | None = None) -> list:
        self.rev += 1
        result = StepResult(revision=self.rev,
                            completed=completed if completed is not None else [True] * len(step.completions),
                            current=current or {},
                            claimed=claimed if claimed is not None else [True] * len(step.claims))
        return self.handle(StepCommitted(step, result))

    def run_step(self) -> list:
        step = self.step()
        assert step is not None
        return self.commit(step)

    def end(self, tid: str, took_s: float = 0.01, exit_code: int = 0, reason: str | None = None) -> list:
        n = self.core.held[tid].record.attempt
        t = self.clock.time()
        return self.handle(AttemptEnded(tid, n, AttemptResult(exit_code, None, t - took_s, t, 0.0, 0, reason=reason)))

    def warm_up(self, took_s: float = 0.01) -> None:
        """Run two tasks that take `took_s`, so the node knows its recent attempts' length."""
        self.queue("a0", "a1")
        self.run_step()
        self.end("a0", took_s)
        self.end("a1", took_s)
        self.run_step()
        assert not self.core.held


def started(out: list) -> list[str]:
    return [i.record.id for i in out if isinstance(i, StartAttempt)]


def claimed(step: Step) -> list[str]:
    return [c.task_id for c in step.claims]


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(n)]


# -- claiming ------------------------------------------------------------------------------

def test_a_fresh_node_claims_what_fits_and_starts_it():
    h = Harness()
    assert h.queue("t00", "t01", "t02") == [WAKE]
    step = h.step()
    assert claimed(step) == ["t00", "t01"] and step.completions == []
    assert step.claims[0].record.state == TaskState.running and step.claims[0].record.attempt == 1
    assert h.commit(step) == [StartAttempt(step.claims[0].record), StartAttempt(step.claims[1].record), WAKE]
    assert h.core.busy() == 2 and h.core.free().slots == 0


def test_claim_ahead_only_when_recent_attempts_are_short_and_the_queue_is_deeper_than_the_slots():
    h = Harness()
    h.warm_up(took_s=0.01)
    # 0.05 s horizon / 0.01 s per attempt: 5 per slot, 10 in all, beyond the 2 free slots
    h.queue(*ids("t", 20))
    assert claimed(h.step()) == ids("t", 12)

    short_queue = Harness()
    short_queue.warm_up(took_s=0.01)
    short_queue.queue("t00", "t01")        # not deeper than the slots: nothing held ahead
    assert claimed(short_queue.step()) == ["t00", "t01"]

    slow = Harness()
    slow.warm_up(took_s=1.0)               # long attempts: never claimed ahead
    slow.queue(*ids("t", 20))
    assert claimed(slow.step()) == ["t00", "t01"]


def test_a_busy_node_waits_the_claim_delay_before_claiming():
    h = Harness()
    h.queue("t00", "t01", "t02")
    step = h.step()
    h.commit(step, claimed=[True, False])   # t01 went to another node
    assert h.core.busy() == 1
    assert h.decide() == [DelayClaims(0.002)]  # one of two slots busy: half the 4 ms
    step = h.decide(claim_delayed=True)[0]
    assert claimed(step) == ["t02"]


def test_ready_tasks_start_in_queue_order():
    h = Harness()
    h.warm_up()
    h.queue(*ids("t", 6))
    h.commit(h.step())                      # t00, t01 run; t02..t05 held ahead
    assert list(h.core.ready) == ["t02", "t03", "t04", "t05"]
    h.queue("t06", "t07")
    h.queue("urgent", priority=5)           # claimed with later ones, but ahead in the queue
    step = h.step()
    assert claimed(step) == ["urgent", "t06", "t07"]
    assert h.commit(step) == [WAKE]         # no slot free: nothing starts
    assert list(h.core.ready) == ["urgent", "t02", "t03", "t04", "t05", "t06", "t07"]
    assert started(h.end("t00")) == ["urgent"]
    assert started(h.end("t01")) == ["t02"]


def test_a_task_bigger_than_what_is_free_waits_while_smaller_ones_behind_it_start():
    h = Harness(cpus=2.0, slots=2)
    h.queue("one", cpus=1.0)
    h.run_step()
    h.queue("big", cpus=2.0)
    h.queue("small", cpus=1.0)
    step = h.step()
    assert claimed(step) == ["small"]
    h.commit(step)
    h.end("one")
    h.end("small")
    assert claimed(h.step()) == ["big"]


def test_a_task_held_back_by_its_retry_backoff_arms_a_timer_for_when_it_is_due():
    h = Harness()
    due = h.clock.time() + 3.0
    h.queue("t00", not_before=due)
    assert h.decide() == [ArmTimer(due)]
    assert h.decide() == []                 # armed once
    h.clock.advance(3.0)
    assert h.handle(TimerFired(due)) == [WAKE]
    step = h.step()
    assert claimed(step) == ["t00"]


def test_an_earlier_backoff_arms_the_timer_earlier():
    h = Harness()
    later, sooner = h.clock.time() + 10.0, h.clock.time() + 2.0
    h.queue("t00", not_before=later)
    assert h.decide() == [ArmTimer(later)]
    h.queue("t01", not_before=sooner)
    assert h.decide() == [ArmTimer(sooner)]


# -- cancel ----------------------------------------------------------------------------------

def test_cancel_of_a_task_claimed_ahead_finishes_it_without_starting_it():
    h = Harness()
    h.warm_up()
    h.queue(*ids("t", 6))
    h.commit(h.step())
    assert "t03" in h.core.ready
    assert h.handle(CancelRequested("t03", unstarted_only=True)) == [WAKE]
    assert "t03" not in h.core.ready
    assert started(h.end("t00")) == ["t02"]   # t03 never starts
    assert started(h.end("t01")) == ["t04"]
    step = h.step()
    ended = {c.record.id: c.record for c in step.completions}
    assert ended["t03"].state == TaskState.cancelled
    assert ended["t03"].reason == "cancelled before it started"


def test_a_cancel_that_outruns_our_claims_reply_is_applied_when_the_reply_comes():
    """The cancel watch can deliver a cancel for a task our own step just claimed before
    the step's reply arrives: the task must not start once the reply comes."""
    h = Harness()
    h.queue("t00", "t01")
    step = h.step()
    assert [c.task_id for c in step.claims] == ["t00", "t01"]
    assert h.handle(CancelRequested("t00")) == []          # not ours yet, as far as we know
    out = h.commit(step)
    assert started(out) == ["t01"]                         # t00 never starts
    ended = {c.record.id: c.record for c in h.step().completions}
    assert list(ended) == ["t00"] and ended["t00"].last.reason == "cancelled"
    # a cancel for a claim another node won is forgotten with the reply
    h.queue("t02")
    lost = h.step()
    h.handle(CancelRequested("t02"))
    h.commit(lost, claimed=[False] * len(lost.claims))
    assert h.core.in_flight is None and not h.core.early_cancels


def test_unstarted_only_cancel_leaves_a_running_attempt_alone():
    h = Harness()
    h.queue("t00")
    h.run_step()
    assert h.handle(CancelRequested("t00", unstarted_only=True)) == []


def test_cancel_of_a_running_attempt_kills_it_with_the_cancel_grace():
    h = Harness(cancel_grace_s=0.5)
    h.queue("t00")
    h.run_step()
    assert h.handle(CancelRequested("t00")) == [KillAttempt("t00", "cancelled while running", 0.5)]
    assert h.handle(CancelRequested("unknown")) == []


def test_a_completion_whose_compare_lost_is_recomputed_from_the_current_record():
    h = Harness()
    h.queue("t00", retries=3)
    h.run_step()
    running = h.core.held["t00"].record
    h.end("t00", exit_code=None, reason="killed")   # as after a cancel's kill
    step = h.step()
    mine = step.completions[0].record
    assert mine.state == TaskState.queued            # a retry, as far as this node knew
    # meanwhile the cancel flagged the record in etcd: our compare on it lost
    theirs = running.model_copy(update={"cancel_requested": True, "reason": "cancelled while running"})
    assert h.commit(step, completed=[False], current={"t00": (theirs, 555)}) == [WAKE]
    again = h.step()
    assert [c.read_rev for c in again.completions] == [555]
    redone = again.completions[0].record
    assert redone.state == TaskState.cancelled and redone.reason == "cancelled while running"
    assert redone.attempts[-1].reason == "killed" and redone.attempts[-1].ended_by == EndedBy.cancelled
    h.commit(again)
    assert not h.core.held and h.core.completed_total == 1


def test_a_completion_whose_attempt_was_fenced_is_dropped():
    h = Harness()
    h.queue("t00")
    h.run_step()
    h.end("t00")
    step = h.step()
    assert h.commit(step, completed=[False], current={}) == []
    assert not h.core.held and not h.core.finished and h.step() is None


# -- fencing, drain ----------------------------------------------------------------------------

def test_fencing_kills_everything_and_drops_the_step_in_flight():
    h = Harness()
    h.warm_up()
    h.queue(*ids("t", 6))
    h.commit(h.step())                      # t00, t01 run, t02..t05 held
    assert started(h.end("t00")) == ["t02"]
    step = h.step()                         # in flight: t00's end
    assert [c.record.id for c in step.completions] == ["t00"]
    out = h.handle(LeaseLost())
    assert out == [KillAttempt("t01", "fenced: the node lost its lease", 0.0),
                   KillAttempt("t02", "fenced: the node lost its lease", 0.0)]
    assert h.commit(step) == [WAKE]         # its reply comes after the fence: dropped
    assert not h.core.held and not h.core.ready and not h.core.finished
    assert h.core.steps == 3                # the dropped step does not count
    assert h.handle(Registered()) == [WAKE]


def test_an_attempt_ending_after_its_task_was_fenced_and_claimed_again_is_ignored():
    h = Harness()
    h.queue("t00")
    h.run_step()
    h.handle(LeaseLost())
    h.queue("t00", attempt=1)               # requeued by the reaper, claimed here again
    h.run_step()
    assert h.core.held["t00"].record.attempt == 2
    stale = AttemptResult(0, None, 0.0, 0.0, 0.0, 0)
    assert h.handle(AttemptEnded("t00", 1, stale)) == []
    assert h.core.busy() == 1


def test_drain_stops_claiming_and_releases_held_tasks_without_using_retries():
    h = Harness(kill_grace_s=5.0)
    h.warm_up()
    h.queue(*ids("t", 6))
    h.commit(h.step())
    out = h.handle(DrainRequested(5.0))
    assert out == [WAKE, WAKE, WAKE, WAKE, KillAttempt("t00", "node n1 shut down", 5.0),
                   KillAttempt("t01", "node n1 shut down", 5.0)]
    h.queue("later")
    step = h.step()
    assert step.claims == []
    released = {c.record.id: c.record for c in step.completions}
    assert sorted(released) == ["t02", "t03", "t04", "t05"]
    for rec in released.values():
        assert rec.state == TaskState.queued and rec.released == 1
        assert rec.reason == "node n1 shut down; requeued"
    h.commit(step)
    h.end("t00", exit_code=None, reason="node n1 shut down")
    rec = h.step().completions[0].record
    assert rec.state == TaskState.queued and rec.released == 1 and rec.attempt - rec.released == 0


def test_each_attempt_records_what_ended_it():
    h = Harness(slots=5, cpus=5.0)
    h.queue(*ids("t", 5))
    h.commit(h.step())
    t = h.clock.time()
    results = {
        "t00": AttemptResult(0, None, t, t, 0.0, 0),
        "t01": AttemptResult(3, None, t, t, 0.0, 0),
        "t02": AttemptResult(None, 9, t, t, 0.0, 0, reason="killed for exceeding its memory limit"),
        "t03": AttemptResult(None, 15, t, t, 0.0, 0, reason="timed out after 1s", timed_out=True),
        "t04": AttemptResult.not_run(t, "cwd: /nope does not exist on node n1"),
    }
    for tid, res in results.items():
        h.handle(AttemptEnded(tid, 1, res))
    ended = {c.record.id: c.record.last.ended_by for c in h.step().completions}
    assert ended == {"t00": EndedBy.exit, "t01": EndedBy.exit, "t02": EndedBy.signal, "t03": EndedBy.timeout,
                     "t04": EndedBy.not_started}


def test_a_drained_attempt_is_recorded_as_released():
    h = Harness()
    h.queue("t00")
    h.commit(h.step())
    h.handle(DrainRequested(1.0))
    h.end("t00", exit_code=None, reason="node n1 shut down")
    rec = h.step().completions[0].record
    assert rec.state == TaskState.queued and rec.last.ended_by == EndedBy.released


def test_a_released_completion_whose_compare_lost_is_released_again():
    h = Harness()
    h.queue("t00")
    h.run_step()
    h.handle(DrainRequested(1.0))
    h.end("t00", exit_code=None, reason="killed")
    step = h.step()
    mine = step.completions[0].record
    theirs = mine.model_copy(update={"state": TaskState.running, "released": 0,
                                     "progress": {"fraction": 0.5, "message": "", "at": 1.0}})
    h.commit(step, completed=[False], current={"t00": (theirs, 777)})
    redone = h.step().completions[0].record
    assert redone.state == TaskState.queued and redone.released == 1


def test_a_step_etcd_did_not_answer_is_retried_after_a_pause():
    h = Harness()
    h.queue("t00")
    step = h.step()
    assert h.handle(StepFailed(step)) == [RetryStep(0.5)]
    assert claimed(h.step()) == ["t00"]


# -- a property ----------------------------------------------------------------------------

_queue = st.tuples(st.just("queue"), st.integers(1, 6), st.sampled_from([0.5, 1.0, 2.0]), st.integers(-1, 1))
_decide = st.tuples(st.just("decide"))
_commit = st.tuples(st.just("commit"), st.lists(st.booleans(), min_size=20, max_size=20))
_end = st.tuples(st.just("end"), st.integers(0, 50), st.sampled_from([0.001, 0.02, 1.0]))
_step = st.tuples(st.just("step"), st.lists(st.booleans(), min_size=20, max_size=20))
ops = st.lists(st.one_of(
    _queue, _step, _step, _decide, _commit, _end, _end,
    st.tuples(st.just("cancel"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("fence")),
    st.tuples(st.just("drain")),
    st.tuples(st.just("wait"), st.floats(0.0, 2.0)),
), min_size=10, max_size=80)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_under_any_events_no_task_is_both_ready_and_started_and_started_attempts_fit_the_node(script):
    h = Harness(cpus=3.0, slots=2)
    n = 0
    in_flight: Step | None = None
    ever_started: set[tuple[str, int]] = set()
    for op in script:
        out: list = []
        kind = op[0]
        if kind == "queue":
            for _ in range(op[1]):
                n += 1
                out += h.queue(f"t{n:04d}", cpus=op[2], priority=op[3],
                               not_before=h.clock.time() + 1.0 if n % 5 == 0 else None)
        elif kind in ("decide", "step") and in_flight is None:
            out = h.decide()
            if out and isinstance(out[-1], DelayClaims):
                out = h.decide(claim_delayed=True)
            in_flight = next((i for i in out if isinstance(i, Step)), None)
        if kind in ("commit", "step") and in_flight is not None:
            flags = op[1]
            step, in_flight = in_flight, None
            completed = [flags[i % 20] for i in range(len(step.completions))]
            current = {c.record.id: (None, 0) if i % 2 else (h.records[c.record.id], h.rev + 1)
                       for i, c in enumerate(step.completions) if not completed[i]}
            out = h.commit(step, claimed=[not flags[-1 - i % 20] for i in range(len(step.claims))],
                           completed=completed, current=current)
        elif kind == "end":
            alive = [tid for tid, x in h.core.held.items() if x.alive]
            if alive:
                h.clock.advance(op[2])
                out = h.end(alive[op[1] % len(alive)], took_s=op[2])
        elif kind == "cancel" and h.core.held:
            tids = list(h.core.held)
            out = h.handle(CancelRequested(tids[op[1] % len(tids)], op[2]))
        elif kind == "fence":
            out = h.handle(LeaseLost(), Registered())
        elif kind == "drain":
            out = h.handle(DrainRequested(1.0))
        elif kind == "wait":
            h.clock.advance(op[1])
        core = h.core
        for ins in out:
            if isinstance(ins, StartAttempt):
                key = (ins.record.id, ins.record.attempt)
                assert key not in ever_started, f"{key} started twice"
                ever_started.add(key)
                assert core.held[ins.record.id].alive
        alive = [x for x in core.held.values() if x.alive]
        assert not any(core.held[t].alive for t in core.ready), "a task both ready and started"
        assert len(set(core.ready)) == len(core.ready)
        assert set(core.ready) <= set(core.held) and set(core.finished) <= set(core.held)
        assert not set(core.ready) & set(core.finished)
        assert len(alive) <= 2
        assert sum(x.record.spec.cpus for x in alive) <= 3.0 + 1e-9
        assert core.busy() == len(alive) and core.free().slots == 2 - len(alive)
        if core.draining:
            assert not core.ready


def test_the_test_clock_moves_only_when_told():
    clock = TestClock(wall=100.0, monotonic=5.0)
    assert (clock.time(), clock.monotonic()) == (100.0, 5.0)
    clock.advance(2.5)
    assert (clock.time(), clock.monotonic()) == (102.5, 7.5)
    clock.set(50.0)                         # the wall clock may jump back; monotonic time does not
    assert (clock.time(), clock.monotonic()) == (50.0, 7.5)


# -- etcd out of reach ---------------------------------------------------------------------------

def test_an_etcd_outage_is_said_at_once_then_every_30s_and_its_end_too():
    from shoal.node.outage import EtcdOutage
    o = EtcdOutage("etcd at e:1")
    assert o.observe(100.0, None) == (None, False)
    assert o.observe(101.0, 99.0, "connection refused") == ("etcd at e:1 is unreachable: connection refused; retrying",
                                                            False)
    assert o.observe(120.0, 99.0, "connection refused") == (None, False)
    assert o.observe(131.0, 99.0) == ("etcd at e:1 has been unreachable for 32s; still retrying", False)
    assert o.observe(150.0, 99.0) == (None, False)
    assert o.observe(10_000.0, 99.0)[1] is False   # no limit: it never gives up
    assert o.observe(10_001.0, None) == ("etcd at e:1 answers again after 9902s", False)
    assert o.observe(10_002.0, None) == (None, False)


def test_an_etcd_outage_past_the_limit_says_exit():
    from shoal.node.outage import EtcdOutage
    o = EtcdOutage("etcd at e:1", exit_after_s=60)
    assert o.observe(101.0, 100.0, "refused") == ("etcd at e:1 is unreachable: refused; retrying", False)
    assert o.observe(159.0, 100.0) == ("etcd at e:1 has been unreachable for 59s; still retrying", False)
    assert o.observe(160.0, 100.0, "refused") == (
        "etcd at e:1 has been unreachable for 60s; exiting (--etcd-gone-exit 60)", True)
