"""A flow run's decisions on plain data: events in, exact actions out (no etcd, no
processes, no sleeping)."""
from __future__ import annotations

from types import SimpleNamespace as NS

from shoal.flows.outcome import Outcome, OutcomeKind, outcome_of
from shoal.flows.run import Failure, FlowRunRecord, FlowState, Restart
from shoal.flows.spec import FlowSpec
from shoal.flows.state import (SETTLE_S, AbortSinks, Begin, CancelRequested, ClientGone, Commit, CommitFailed,
                               Committed, Finish, FollowAttempt, InstanceEnded, Prepare, Prepared, Refused,
                               RunState, StartAttempt, StopInstances, Tick, WakeAt, decide)

A, B0, B1 = ("a", 0), ("b", 0), ("b", 1)
OK = Outcome(kind=OutcomeKind.succeeded)
LOST = Outcome(kind=OutcomeKind.lost, message="node node-2 was lost")
PEER = Outcome(kind=OutcomeKind.peer_lost, message="lost a peer: UpstreamLost")
UPSTREAM = Outcome(kind=OutcomeKind.upstream_aborted, message="stopped: a[0] failed")
BOOM = Outcome(kind=OutcomeKind.failed, message="command exited with status 7", stderr="disk on fire")


def running(attempt: int = 1, restarts: int = 2, restarted: int = 0, bad_records: int = 0) -> RunState:
    return RunState(run="r", state=FlowState.running, attempt=attempt, instances=(A, B0, B1),
                    restarts=restarts, restarted=restarted, bad_records=bad_records)


def feed(run: RunState, *events, now: float = 100.0):
    actions = []
    for e in events:
        run, more = decide(run, e, now)
        actions += more
    return run, actions


def ended(who, outcome, attempt=1):
    return InstanceEnded(attempt, who, outcome)


def test_a_new_run_is_prepared_then_started_and_commits_once_all_succeeded():
    run = RunState(run="r", state=FlowState.pending, attempt=0, instances=(A, B0, B1), bad_records=2)
    run, actions = feed(run, Begin())
    assert actions == [Prepare()]
    run, actions = feed(run, Prepared())
    assert actions == [StartAttempt(1, None)] and run.state == FlowState.running and run.attempt == 1
    run, actions = feed(run, ended(A, OK), ended(B0, OK))
    assert actions == []
    run, actions = feed(run, ended(B1, Outcome(kind=OutcomeKind.succeeded, bad=2)))
    assert actions == [Commit(1)] and run.state == FlowState.committing
    run, actions = feed(run, Committed())
    assert actions == [Finish(FlowState.succeeded, None, bad_records=2)] and run.state == FlowState.succeeded
    assert feed(run, Committed(), CancelRequested(), Begin())[1] == []     # final: nothing more


def test_refused_checks_fail_the_run_before_any_instance():
    run = RunState(run="r", state=FlowState.pending, attempt=0, instances=(A,))
    run, actions = feed(run, Refused("stages[0] (a).read: x matched no files"))
    assert actions == [Finish(FlowState.failed, Failure(message="stages[0] (a).read: x matched no files"))]


def test_a_lost_instance_restarts_after_the_others_settle_and_counts_the_restart():
    run, actions = feed(running(), ended(B0, PEER), now=100.0)
    assert actions == [WakeAt(100.0 + SETTLE_S)]
    run, actions = feed(run, ended(A, LOST), now=100.2)
    assert actions == [WakeAt(100.0 + SETTLE_S)]
    run, actions = feed(run, Tick(), now=100.0 + SETTLE_S)
    # the lost instance is named, not the peer that only saw its stream break
    assert actions == [StopInstances(1), AbortSinks(1),
                       StartAttempt(2, Restart(attempt=1, why="a[0]: node node-2 was lost"))]
    assert run.attempt == 2 and run.restarted == 1 and run.ended == {} and run.failing_since is None
    # an event from the attempt given up changes nothing
    assert feed(run, ended(B1, LOST, attempt=1))[1] == []


def test_every_instance_ended_decides_at_once_without_waiting():
    run, actions = feed(running(), ended(A, LOST), ended(B0, PEER), ended(B1, UPSTREAM), now=100.0)
    assert actions[-1] == StartAttempt(2, Restart(attempt=1, why="a[0]: node node-2 was lost"))


def test_its_own_failure_fails_the_run_even_among_lost_peers():
    run, actions = feed(running(), ended(B0, UPSTREAM), ended(A, BOOM), ended(B1, PEER))
    assert actions[-3:] == [StopInstances(1), AbortSinks(1), Finish(FlowState.failed, Failure(
        message="stage instance a[0] failed: command exited with status 7", stage="a", stderr="disk on fire"))]
    assert run.state == FlowState.failed


def test_out_of_restarts_fails_with_the_last_reason():
    run, actions = feed(running(attempt=3, restarted=2), ended(A, LOST, 3), ended(B0, OK, 3),
                        ended(B1, PEER, 3))
    assert actions[-1] == Finish(FlowState.failed, Failure(
        message="an instance was lost on each of 3 attempts (restarts: 2); last: a[0]: node node-2 was lost"))


def test_cancel_stops_the_instances_then_ends_cancelled_once_they_end():
    run, actions = feed(running(), CancelRequested())
    assert actions == [StopInstances(1)] and run.cancelling
    assert feed(run, CancelRequested())[1] == []            # asked twice: stopped once
    run, actions = feed(run, ended(A, LOST), ended(B0, LOST))
    assert actions == [WakeAt(100.0 + SETTLE_S)] * 2
    run, actions = feed(run, ended(B1, LOST))
    assert actions == [StopInstances(1), AbortSinks(1), Finish(FlowState.cancelled)]


def test_cancel_of_a_pending_run_and_of_a_committing_one():
    pending = RunState(run="r", state=FlowState.pending, attempt=0, instances=(A,))
    assert feed(pending, CancelRequested())[1] == [Finish(FlowState.cancelled)]
    committing = RunState(run="r", state=FlowState.committing, attempt=1, instances=(A,))
    assert feed(committing, CancelRequested())[1] == []     # too late: the output is on its way


def test_the_client_going_away_fails_the_run_and_commits_nothing():
    run, actions = feed(running(), ended(A, OK), ClientGone("its input client went away"))
    assert actions == [StopInstances(1), AbortSinks(1),
                       Finish(FlowState.failed, Failure(message="its input client went away"))]


def test_bad_records_over_the_limit_in_all_fail_without_committing():
    run = running(bad_records=3)
    two = Outcome(kind=OutcomeKind.succeeded, bad=2, bad_examples=["short"])
    run, actions = feed(run, ended(A, two), ended(B0, two), ended(B1, OK))
    assert actions == [AbortSinks(1), Finish(FlowState.failed, Failure(
        message="4 bad records in all (over the limit of 3; set bad_records: to tolerate more), "
                "e.g. ['short', 'short']"))]


def test_a_driver_taking_over_follows_or_commits_again():
    assert feed(running(attempt=2), Begin())[1] == [FollowAttempt(2)]
    committing = RunState(run="r", state=FlowState.committing, attempt=2, instances=(A,))
    run, actions = feed(committing, Begin())
    assert actions == [Commit(2)]
    assert feed(run, CommitFailed("sink: no space"))[1] == [Finish(FlowState.failed, Failure(message="sink: no space"))]


def test_run_state_from_a_record():
    spec = FlowSpec.model_validate({"name": "x", "restarts": 3, "bad_records": 5,
                                    "stages": [{"name": "a", "read": "in.txt", "op": "pass"}]})
    rec = FlowRunRecord(id="x-1", name="x", state=FlowState.running, attempt=2, restarts=3, spec=spec,
                        base_dir="/tmp", restarted=[Restart(attempt=1, why="a[0]: lost")])
    run = RunState.of(rec, [A])
    assert (run.attempt, run.restarts, run.restarted, run.bad_records) == (2, 3, 1, 5)


def test_outcomes_fall_back_to_the_task_record():
    st = lambda v: NS(value=v)   # noqa: E731
    written = Outcome(kind=OutcomeKind.failed, message="ValueError: x")
    assert outcome_of(NS(state=st("failed"), exit_code=1, reason="exited with status 1"), written) == written
    # a task that did not succeed is never taken as succeeded, whatever it wrote
    killed = NS(state=st("failed"), exit_code=-9, reason="killed by signal 9")
    assert outcome_of(killed, OK).kind == OutcomeKind.lost
    assert outcome_of(NS(state=st("succeeded"), exit_code=0, reason=None), None) == OK
    assert outcome_of(NS(state=st("failed"), exit_code=76, reason="x"), None).kind == OutcomeKind.upstream_aborted
    own = outcome_of(NS(state=st("failed"), exit_code=3, reason="exited with status 3", stderr_tail="oops\n"), None)
    assert own.kind == OutcomeKind.failed and own.stderr == "oops" and own.own_failure


def test_a_failed_stage_is_told_in_one_wording_when_its_outcome_was_not_written():
    # the instance exited 3 ("its command failed") because its command exited 4: the
    # message says the command's status once, not the instance's next to it
    st = lambda v: NS(value=v)   # noqa: E731
    rec = NS(state=st("failed"), exit_code=3, reason="exit code 3",
             stderr_tail="stage a[0]: command exited with status 4\nboom\n")
    out = outcome_of(rec, None)
    assert (out.kind, out.message, out.stderr) == (OutcomeKind.failed, "command exited with status 4", "boom")
    assert "exit code" not in out.message
    bare = outcome_of(NS(state=st("failed"), exit_code=3, reason="exit code 3", stderr_tail=""), None)
    assert bare.message == "its instance exited with status 3"
