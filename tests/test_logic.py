"""Pure decisions with plain data: placement, transitions, retry policy, templates,
sizes, ids, validation messages."""
from __future__ import annotations

import time

import pytest
from hypothesis import given, settings, strategies as st

from shoal.errors import InvalidSpec
from shoal.logic import placement, transitions
from shoal.logic.placement import Capacity
from shoal.logic.template import as_command, combine, fill
from shoal.model import Attempt, EndedBy, TaskRecord, TaskSpec, TaskState, new_ids
from shoal.model.ids import id_time_ms
from shoal.model.keys import Keys, queue_rank
from shoal.model.sizes import parse_size


def spec(**kw) -> TaskSpec:
    return TaskSpec(command=["true"], **kw)


def rec(**kw) -> TaskRecord:
    return TaskRecord(id=new_ids(1)[0], spec=spec(**kw), submitted_at=time.time())


# -- validation -----------------------------------------------------------------------

@pytest.mark.parametrize("data, expect", [
    ({"command": ["x"], "colour": "red"}, "colour: unknown field"),
    ({"command": []}, "command: is empty"),
    ({"command": "  "}, "command: is empty"),
    ({"command": ["x"], "memory": "2 gigs"}, "memory: '2 gigs' is not a size (use 512M, 2G)"),
    ({"command": ["x"], "cpus": -1}, "cpus: -1"),
    ({"command": ["x"], "timeout": 0}, "timeout: 0"),
    ({"command": ["x"], "timeout": "5"}, "timeout: '5'"),
    ({"command": ["x"], "env": {"A": 1}}, "env.A: 1"),
    ({"command": ["x"], "retries": 11}, "retries: 11 is above this cluster's cap of 10"),
    ({"command": ["x"], "node_loss_retries": 11}, "node_loss_retries: 11 is above this cluster's cap of 10"),
    ({"command": ["x"], "node_loss_retries": -1}, "node_loss_retries: -1"),
    ({"command": ["x"], "node_loss_retries": "a"}, "node_loss_retries: 'a'"),
    ({"command": ["x"], "labels": ["a b"]}, "is not a label"),
])
def test_bad_input_names_the_field_and_form(data, expect):
    with pytest.raises(InvalidSpec) as e:
        TaskSpec.parse(data)
    assert any(expect in p for p in e.value.problems), e.value.problems


def test_every_problem_is_reported_at_once():
    with pytest.raises(InvalidSpec) as e:
        TaskSpec.parse({"command": [], "memory": "lots", "cpus": -2, "what": 1})
    fields = {p.split(":")[0] for p in e.value.problems}
    assert {"command", "memory", "cpus", "what"} <= fields


def test_sizes():
    assert parse_size("512M") == 512 << 20
    assert parse_size("2G") == 2 << 30
    assert parse_size("1.5GiB") == int(1.5 * (1 << 30))
    assert parse_size(1024) == 1024
    for bad in ("2 gigs", "-1G", "", True, -5):
        with pytest.raises(ValueError):
            parse_size(bad)


# -- ids and keys ----------------------------------------------------------------------

def test_ids_are_time_ordered_and_unique():
    ids = new_ids(5000)
    assert ids == sorted(ids) and len(set(ids)) == 5000
    later = new_ids(1)[0]
    assert later > ids[-1]
    assert abs(id_time_ms(later) - time.time() * 1000) < 5000


@given(st.lists(st.integers(-999, 999), min_size=2, max_size=20))
def test_queue_rank_orders_higher_priority_first(prios):
    ranked = sorted(prios, key=queue_rank)
    assert ranked == sorted(prios, reverse=True)


def test_keys_roundtrip():
    k = Keys("/p/")
    assert k.id_of(k.running("n1", "t1")) == "t1"
    assert k.node_of_running(k.running("n1", "t1")) == "n1"


# -- placement ------------------------------------------------------------------------

def test_fits_resources_and_labels():
    free = Capacity(cpus=2, memory=1 << 30, gpus=0, slots=2)
    assert placement.fits(spec(cpus=2), free, [])
    assert not placement.fits(spec(cpus=2.5), free, [])
    assert not placement.fits(spec(memory="2G"), free, [])
    assert not placement.fits(spec(gpus=1), free, [])
    assert placement.fits(spec(labels=["ssd"]), free, ["ssd", "zone=eu"])
    assert placement.fits(spec(labels=["zone=eu"]), free, ["ssd", "zone=eu"])
    assert not placement.fits(spec(labels=["zone=us"]), free, ["zone=eu"])
    assert not placement.fits(spec(), Capacity(2, 1 << 30, 0, 0), [])


@settings(max_examples=200)
@given(st.lists(st.tuples(st.floats(0, 4), st.integers(0, 3 << 30)), max_size=30),
       st.floats(0.5, 8), st.integers(1 << 20, 8 << 30), st.integers(1, 16))
def test_chosen_claims_never_exceed_free_capacity(tasks, cpus, memory, slots):
    free = Capacity(cpus, memory, 0, slots)
    cands = [(f"t{i}", spec(cpus=c, memory=m), None) for i, (c, m) in enumerate(tasks)]
    chosen = set(placement.choose_claims(cands, free, [], time.time(), limit=slots))
    picked = [s for tid, s, _ in cands if tid in chosen]
    assert len(picked) <= slots
    assert sum(s.cpus for s in picked) <= cpus + 1e-6
    assert sum(s.memory for s in picked) <= memory


def test_choose_claims_skips_backoff_and_big_tasks_but_keeps_order():
    now = time.time()
    cands = [("a", spec(cpus=8), None), ("b", spec(), now + 60), ("c", spec(), None), ("d", spec(), None)]
    assert placement.choose_claims(cands, Capacity(2, 1 << 30, 0, 4), [], now, 4) == ["c", "d"]


def test_claim_delay_grows_with_load():
    assert placement.claim_delay_s(0, 4) == 0
    assert 0 < placement.claim_delay_s(2, 4) < placement.claim_delay_s(4, 4)


# -- transitions ------------------------------------------------------------------------

def run_once(task: TaskRecord, code: int, node="n1") -> TaskRecord:
    t = transitions.start_attempt(task, node, time.time())
    a = Attempt(n=t.attempt, node=node, state=TaskState.succeeded if code == 0 else TaskState.failed,
                started_at=time.time(), finished_at=time.time(), exit_code=code)
    return transitions.finish_attempt(t, a, {"stdout_tail": "x"}, time.time())


def test_success_ends_succeeded():
    t = run_once(rec(), 0)
    assert t.state == TaskState.succeeded and t.attempt == 1 and t.stdout_tail == "x"


def test_retries_then_fails_with_every_attempt_kept():
    t = rec(retries=2, backoff=0)
    for expected in (TaskState.queued, TaskState.queued, TaskState.failed):
        t = run_once(t, 3)
        assert t.state == expected
    assert [a.exit_code for a in t.attempts] == [3, 3, 3]
    assert t.reason == "exit code 3 after 3 attempts"


def test_retry_waits_its_backoff():
    t = run_once(rec(retries=3, backoff=2), 1)
    assert t.state == TaskState.queued and t.not_before - time.time() == pytest.approx(2, abs=0.5)
    assert transitions.retry_delay_s(2, 3) == 8
    assert transitions.retry_delay_s(2, 30) == 300


@given(st.integers(0, 5), st.integers(0, 4), st.lists(st.sampled_from(["ok", "fail", "lost"]), min_size=1, max_size=12))
def test_attempts_never_exceed_either_limit(retries, node_loss_retries, outcomes):
    t = rec(retries=retries, backoff=0, node_loss_retries=node_loss_retries)
    for o in outcomes:
        if t.is_final:
            break
        if o == "lost":
            t = transitions.node_lost(transitions.start_attempt(t, "n1", time.time()), "n1", time.time())
        else:
            t = run_once(t, 0 if o == "ok" else 1)
    lost = [a for a in t.attempts if a.ended_by == EndedBy.node_lost]
    assert len(t.attempts) - len(lost) <= retries + 1   # node losses never use up `retries`
    assert len(lost) <= node_loss_retries + 1
    assert sum(a.state == TaskState.succeeded for a in t.attempts) <= 1
    if t.state == TaskState.succeeded:
        assert t.attempts[-1].state == TaskState.succeeded
    if t.state == TaskState.failed and t.attempts[-1].ended_by == EndedBy.node_lost:
        assert len(lost) == node_loss_retries + 1 and f"node_loss_retries: {node_loss_retries}" in t.reason


def test_cancel_requested_while_running_ends_cancelled():
    t = transitions.request_cancel(transitions.start_attempt(rec(retries=5), "n1", time.time()))
    a = Attempt(n=1, node="n1", state=TaskState.failed, exit_code=None, signal=15)
    done = transitions.finish_attempt(t, a, {}, time.time())
    assert done.state == TaskState.cancelled


def test_node_loss_is_not_charged_to_retries_and_has_its_own_limit():
    t = transitions.start_attempt(rec(retries=0, backoff=0), "n1", time.time())
    for n in (1, 2, 3):   # the default limit: 3 requeues
        t = transitions.node_lost(t, f"n{n}", time.time())
        assert t.state == TaskState.queued and t.not_before is None
        assert t.reason == f"node n{n} was lost; requeued (node loss {n} of 3)"
        assert t.attempts[-1].reason == f"node n{n} was lost" and t.attempts[-1].ended_by == EndedBy.node_lost
        t = transitions.start_attempt(t, "n9", time.time())
    t = transitions.node_lost(t, "n9", time.time())
    assert t.state == TaskState.failed and t.node_losses == 4
    assert t.reason == "node n9 was lost; gave up after 4 node losses (node_loss_retries: 3)"


def test_node_loss_then_a_failing_command_still_gets_its_retries():
    t = transitions.start_attempt(rec(retries=1, backoff=0), "n1", time.time())
    t = transitions.node_lost(t, "n1", time.time())
    t = run_once(t, 3, node="n2")
    assert t.state == TaskState.queued and t.reason == "retrying: exit code 3"
    t = run_once(t, 3, node="n2")
    assert t.state == TaskState.failed and t.reason == "exit code 3 after 2 attempts"
    assert [a.ended_by for a in t.attempts] == [EndedBy.node_lost, None, None]  # run_once sets none


def test_node_loss_limit_of_the_task_wins_over_the_clusters():
    t = transitions.start_attempt(rec(node_loss_retries=0), "n1", time.time())
    gone = transitions.node_lost(t, "n1", time.time(), limit=5)
    assert gone.state == TaskState.failed
    assert gone.reason == "node n1 was lost; gave up after 1 node loss (node_loss_retries: 0)"
    t = transitions.start_attempt(rec(), "n1", time.time())
    assert transitions.node_lost(t, "n1", time.time(), limit=0).state == TaskState.failed  # the cluster's
    kept = transitions.node_lost(t, "n1", time.time(), limit=1)
    assert kept.state == TaskState.queued and kept.reason.endswith("(node loss 1 of 1)")


def test_lease_lost_says_so_and_counts_as_a_node_loss():
    t = transitions.start_attempt(rec(), "n1", time.time())
    t = transitions.node_lost(t, "n1", time.time(), ended_by=EndedBy.lease_lost)
    assert t.state == TaskState.queued and t.node_losses == 1
    assert t.attempts[0].ended_by == EndedBy.lease_lost
    assert t.reason == "node n1 lost its lease and stopped the attempt; requeued (node loss 1 of 3)"


def test_cancel_requested_then_node_lost_ends_cancelled():
    t = transitions.request_cancel(transitions.start_attempt(rec(), "n1", time.time()))
    t = transitions.node_lost(t, "n1", time.time())
    assert t.state == TaskState.cancelled and t.reason == "cancelled (node n1 was lost)"


def test_an_orphaned_claim_is_handed_back_counted_against_nothing():
    t = transitions.start_attempt(rec(node_loss_retries=0), "n1", time.time())
    t = transitions.release_orphan(t, "n1", time.time())
    assert t.state == TaskState.queued and t.released == 1 and t.node_losses == 0
    assert t.attempts[0].ended_by == EndedBy.released
    assert run_once(t, 1).reason == "exit code 1"   # its one counted attempt


# -- templates ------------------------------------------------------------------------

def test_fill_placeholders():
    assert fill("gzip -k {}", ("a b.log",), 1) == "gzip -k 'a b.log'"
    assert fill("echo {1}-{2}", ("x", "y"), 1) == "echo x-y"
    assert fill("wc -l", ("f.txt",), 1) == "wc -l f.txt"
    assert fill("mv {} {.}.bak {/} {//} {/.} {#}", ("d/f.txt",), 7) == "mv d/f.txt d/f.bak f.txt d f 7"
    with pytest.raises(ValueError):
        fill("echo {3}", ("a",), 1)


def test_combine_varies_last_source_fastest():
    assert combine([["a", "b"], ["1", "2"]]) == [("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")]


def test_as_command_skips_the_shell_only_for_plain_words():
    assert as_command("/bin/true 1") == ["/bin/true", "1"]
    assert as_command("echo 'a b'") == "echo 'a b'"
    assert as_command("ls *.txt") == "ls *.txt"
    assert as_command("a | b") == "a | b"


def test_release_on_clean_shutdown_does_not_use_up_retries():
    t = transitions.start_attempt(rec(retries=0), "n1", time.time())
    a = Attempt(n=1, node="n1", state=TaskState.failed, signal=15)
    t = transitions.release_attempt(t, a, {}, time.time())
    assert t.state == TaskState.queued and t.attempts[0].reason == "node n1 shut down; requeued"
    assert t.attempts[0].ended_by == EndedBy.released
    t = run_once(t, 1, node="n2")
    assert t.state == TaskState.failed and t.reason == "exit code 1"  # one counted attempt, no retries


def test_progress_lines_last_wellformed_one_wins():
    from shoal.node.progress import last_progress
    out = b"hello\n::progress 0.2 loading\nnoise ::progress 0.9 no\n::progress 1.7 done all\n::progress x bad\n"
    assert last_progress(out, from_stdout=True) == (1.0, "done all")
    assert last_progress(b"0.5 half way\n", from_stdout=False) == (0.5, "half way")
    assert last_progress(b"nothing here\n", from_stdout=True) is None


def test_plan_claims_takes_some_ahead_and_reports_the_next_backoff():
    now = time.time()
    cands = [("a", spec(), None), ("b", spec(), now + 5), ("c", spec(), None), ("d", spec(), None),
             ("e", spec(cpus=8), None)]
    ids, wake_at = placement.plan_claims(iter(cands), Capacity(1, 1 << 30, 0, 1), [], now,
                                         total=Capacity(2, 1 << 30, 0, 2), extra=2)
    assert ids == ["a", "c", "d"] and wake_at == now + 5  # one fits now, two ahead; e never fits


# -- why no node can run a task -------------------------------------------------------------

def offer(node_id: str = "n1", cpus: float = 2, memory: str = "4G", gpus: int = 0, labels=(), disk: str = "0"):
    from shoal.model import NodeInfo
    return NodeInfo(id=node_id, host="h", pid=1, api="http://h:1", cpus=cpus, memory=parse_size(memory),
                    gpus=gpus, disk=parse_size(disk), slots=2, labels=list(labels), started_at=0.0)


@pytest.mark.parametrize("want, expect", [
    (dict(cpus=100), "no node has 100 cpus; the largest offers 2"),
    (dict(labels=["gpu-a100"]), "no node has label gpu-a100"),
    (dict(labels=["zone=us"]), "no node has label zone=us"),
    (dict(memory="64G"), "no node has 64G of memory; the largest offers 8G"),
    (dict(gpus=2), "no node has 2 gpus; the most any offers is 1"),
    (dict(cpus=8, labels=["ssd"]), "no node has 8 cpus; the largest offers 2; no node has label ssd"),
    (dict(cpus=2, gpus=1), "no single node offers all it asks for together (2 cpus, 1 gpus)"),
])
def test_unplaceable_says_why_from_what_the_live_nodes_offer(want, expect):
    nodes = [offer("n1", cpus=2, memory="8G", labels=["zone=eu"]), offer("n2", cpus=1, memory="2G", gpus=1)]
    got = placement.unplaceable(TaskSpec.parse({"command": ["x"], **want}), nodes)
    assert got == expect


def test_unplaceable_is_none_when_a_node_fits_or_none_is_known():
    nodes = [offer("n1", cpus=2), offer("n2", cpus=16, labels=["gpu"])]
    assert placement.unplaceable(spec(cpus=16, labels=["gpu"]), nodes) is None
    assert placement.unplaceable(spec(cpus=100), []) is None   # no node yet: nothing to judge from


def test_the_unplaceable_reason_is_written_only_when_it_changes_and_cleared_when_a_node_fits():
    why = "no node has 100 cpus; the largest offers 2"
    changed, reason = transitions.explain_unplaceable(None, why)
    assert changed and reason == "no node can run it: no node has 100 cpus; the largest offers 2"
    assert transitions.explain_unplaceable(reason, why) == (False, reason)
    assert transitions.explain_unplaceable(reason, why.replace("2", "4")) == (True, reason.replace("2", "4"))
    assert transitions.explain_unplaceable(reason, None) == (True, None)
    assert transitions.explain_unplaceable(None, None) == (False, None)   # nothing of ours to clear
    assert transitions.explain_unplaceable("retrying: exit code 1", None) == (False, "retrying: exit code 1")
    marked = rec(cpus=100).model_copy(update={"reason": reason})
    assert transitions.start_attempt(marked, "n9", time.time()).reason is None
