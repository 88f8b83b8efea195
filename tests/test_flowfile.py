"""Flow files: every problem reported at once with its line, before anything runs; the
plan that a valid file gives (who sends to whom, where combiners run); the fluent API
building the same spec."""
from __future__ import annotations

from pathlib import Path

import pytest

import shoal
from shoal.errors import InvalidSpec
from shoal.client.flows import check
from shoal.flows.outcome import outcome_of
from shoal.flows.run import FlowState
from shoal.flows.state import Finish, InstanceEnded, RunState, StartAttempt, decide
from shoal.flows.file import parse_flow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def problems(text: str, base: str = "/tmp") -> list[str]:
    with pytest.raises(InvalidSpec) as e:
        parse_flow(text, base)
    return e.value.problems


def test_examples_are_valid_and_plan_combiners_and_senders():
    for name in ("wordcount", "sort", "join", "logs"):
        parse_flow((EXAMPLES / f"{name}.yaml").read_text(), str(EXAMPLES))
    spec, plan = parse_flow((EXAMPLES / "wordcount.yaml").read_text(), str(EXAMPLES))
    words, counts, top = plan.stages["words"], plan.stages["counts"], plan.stages["top"]
    assert words.source.paths == [str(EXAMPLES / "data" / "text*.txt")]   # relative to the file
    assert words.senders == (0,) and counts.senders == (2,) and top.senders == (2,)
    assert words.outputs[0].combine is not None and counts.combined == (True,)
    assert [o.target for o in counts.outputs] == ["top"] and top.outputs == ()
    _, plan = parse_flow((EXAMPLES / "join.yaml").read_text(), str(EXAMPLES))
    assert plan.stages["joined"].senders == (1, 1)
    assert [o.port for o in plan.stages["users"].outputs] == [1]


def test_unknown_stage_cycle_and_output_to_nowhere_each_with_its_line():
    text = """name: broken
stages:
  - name: a
    read: in.txt
    op: words
  - name: b
    input: {from: c, edge: hash, key: 1}
    op: count
  - name: c
    input: {from: b}
    op: pass
  - name: d
    input: {from: wordz}
    op: pass
    write: out.tsv
  - name: e
    input: a
    op: pass
"""
    got = problems(text)
    assert any(p.startswith("line 7:") and "cycle" in p and "b" in p and "c" in p for p in got), got
    assert any(p.startswith("line 13:") and "no stage named 'wordz'" in p for p in got), got
    assert any(p.startswith("line 16:") and "stages[4] (e)" in p and "goes nowhere" in p for p in got), got


def test_field_errors_name_the_field_and_line():
    text = """name: bad
stages:
  - name: a
    read: in.txt
    parallelism: 0
    op: {top: {k: -1}}
    colour: blue
  - name: b
    input: {from: a, edge: hash}
    op: pass
    write: out.tsv
  - name: c
    input: {from: a, edge: collect}
    parallelism: 3
    command: cat
    write: out2.tsv
"""
    got = problems(text)
    text_all = "\n".join(got)
    assert "line 5:" in text_all and "parallelism" in text_all
    assert "line 7:" in text_all and "colour" in text_all and "unknown field" in text_all
    assert "key: required for a hash edge" in text_all
    got2 = problems(text.replace("    parallelism: 0\n", "").replace("    colour: blue\n", "")
                    .replace("{from: a, edge: hash}", "{from: a, edge: hash, key: 1}"))
    assert any("op" in p and "k" in p for p in got2), got2
    assert any("parallelism must be 1" in p for p in got2), got2


def test_not_yaml_and_not_a_mapping():
    assert problems("stages: [")[0].startswith("line 1: not valid YAML")
    assert "a flow file is a mapping" in problems("- a\n- b\n")[0]


def test_stages_of_the_wrong_shape_are_a_problem_not_a_crash():
    assert problems("name: x\nstages: 3\n") == ["line 2: stages: 3 is not valid: Input should be a valid list"]
    assert "stages[0]" in problems("name: x\nstages: [7]\n")[0]


def test_missing_source_and_existing_sink_are_reported_before_any_task(tmp_path):
    (tmp_path / "out.tsv").write_text("old\n")
    spec, _ = parse_flow("name: x\nstages:\n  - name: a\n    read: nothing-here/*.txt\n    op: words\n"
                         "    write: out.tsv\n", str(tmp_path))
    with pytest.raises(InvalidSpec) as e:
        check(spec)      # no cluster is needed to know
    msg = str(e.value)
    assert "nothing-here/*.txt" in msg and "out.tsv" in msg and "overwrite: true" in msg
    assert (tmp_path / "out.tsv").read_text() == "old\n"


def test_fluent_api_builds_the_same_plan_as_the_yaml(tmp_path):
    f = (shoal.flow("wordcount").read(str(EXAMPLES / "data" / "text*.txt"), parallelism=2).words()
         .count(parallelism=2).top(10, by=2).write(str(tmp_path / "top10.tsv"), overwrite=True))
    spec = f.spec()
    assert [s.name for s in spec.stages] == ["read", "count", "top"]
    assert spec.stages[0].op == "words" and spec.stages[0].parallelism == 2      # fused with the read
    assert spec.stages[1].input.edge == "hash" and spec.stages[1].input.key == [1]
    assert spec.stages[2].input.edge == "collect"
    from shoal.flows.plan import plan_or_raise
    plan = plan_or_raise(spec)
    assert plan.stages["read"].outputs[0].combine is not None


def classify(records) -> tuple[str, object]:
    """What the driver decides once these instance tasks have ended without writing an
    outcome (their exit codes are the fallback): ("fail" | "restart", the record named)."""
    who = {(f"s{i}", 0): r for i, r in enumerate(records)}
    run, actions = RunState(run="r", state=FlowState.running, attempt=1, instances=tuple(who), restarts=2), []
    for w, r in who.items():
        run, more = decide(run, InstanceEnded(1, w, outcome_of(r, None)), now=0.0)
        actions += more
    last = actions[-1]
    if isinstance(last, Finish):
        return "fail", who[(last.failure.stage, 0)]
    assert isinstance(last, StartAttempt)
    return "restart", next(r for (stage, _), r in who.items() if last.restart.why.startswith(f"{stage}["))


def test_a_lost_instance_restarts_but_its_own_failure_does_not():
    from types import SimpleNamespace as NS
    st = lambda v: NS(value=v)   # noqa: E731
    lost = NS(id="1", state=st("failed"), exit_code=None, reason="node node-2 was lost")
    broke = NS(id="2", state=st("failed"), exit_code=75, reason="exited with status 75")
    own = NS(id="3", state=st("failed"), exit_code=3, reason="exited with status 3")
    ok = NS(id="4", state=st("succeeded"), exit_code=0, reason=None)
    assert classify([ok, lost, broke])[0] == "restart"
    assert classify([broke, own, ok]) == ("fail", own)
    killed = NS(id="5", state=st("failed"), exit_code=-9, reason="killed by signal 9")
    assert classify([killed])[0] == "restart"


def test_combined_output_is_hashed_on_where_its_key_lands():
    text = """name: by-second-field
stages:
  - name: a
    read: in.tsv
    parallelism: 2
    op: pass
  - name: n
    input: {from: a, edge: hash, key: 2}
    parallelism: 2
    op: {count: {key: [2]}}
    write: out.tsv
  - name: s
    input: {from: a, edge: hash, key: 3}
    op: {reduce: {key: 1, value: 2, fn: sum}}
    write: out2.tsv
"""
    _, plan = parse_flow(text, "/tmp")
    to_n, to_s = plan.stages["a"].outputs
    # the count combiner sends (field 2, n): the hash key is now its first field
    assert to_n.combine is not None and to_n.route_key == (1,)
    # an edge keyed on a field the reduce does not group by cannot be pre-aggregated
    assert to_s.combine is None and to_s.route_key == (3,) and plan.stages["s"].combined == (False,)
    # with more than one instance that would split a key's records: refused, with the line
    got = problems(text.replace("    op: {reduce:", "    parallelism: 2\n    op: {reduce:"))
    assert any(p.startswith("line 13:") and "not among reduce's key fields [1]" in p for p in got), got
    got = problems(text.replace("{from: a, edge: hash, key: 3}", "{from: a}").replace(
        "    op: {reduce:", "    parallelism: 2\n    op: {reduce:"))
    assert any("needs a hash edge on its key" in p for p in got), got


def test_range_edge_needs_a_file_reading_sender_and_bounds_split_evenly():
    got = problems("name: r\nstages:\n  - name: a\n    read: '-'\n    op: pass\n"
                   "  - name: s\n    input: {from: a, edge: range, key: 1}\n    parallelism: 2\n"
                   "    op: {sort: {key: 1}}\n    write: out.tsv\n")
    assert any(p.startswith("line 7:") and "range edge needs a sender that reads files" in p for p in got), got
    assert any("one key field" in p for p in problems(
        "name: r\nstages:\n  - name: a\n    read: x\n    op: pass\n  - name: s\n"
        "    input: {from: a, edge: range, key: [1, 2]}\n    op: pass\n    write: o\n"))
    from shoal.flows.runtime.sampling import bounds
    keys = [f"k{i:03d}" for i in range(300)]
    assert bounds(keys, 3) == ["k100", "k200"] and bounds(keys, 1) == [] and bounds([], 4) == []


def test_without_the_flows_extra_tasks_still_work_and_flows_say_what_to_install():
    import os
    import subprocess
    import sys
    # as if the `flows` extra were not installed: importing any of these fails
    block = "import sys; sys.modules.update(dict.fromkeys(['polars', 'pyarrow', 'numpy', 'psycopg']))\n"
    env = dict(os.environ, SHOAL_ADDRESS="http://127.0.0.1:9")
    code = block + "import shoal.node.node, shoal.api.app, shoal.cli.main, shoal.client.flows, shoal.flows.coordinator\n"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    code = block + (f"sys.argv = ['shoal', 'flow', 'run', {str(EXAMPLES / 'wordcount.yaml')!r}]\n"
                    "from shoal.cli.main import run\nrun()\n")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "pip install 'shoal[flows]'" in p.stderr and "Traceback" not in p.stderr


def test_instance_settings_are_read_once_from_what_the_node_hands_it():
    from shoal.flows.runtime.instance import InstanceSettings
    s = InstanceSettings.from_env({"SHOAL_ETCD": "http://a:2379,http://b:2379", "SHOAL_PREFIX": "/p/",
                                   "SHOAL_DATA_HOST": "10.0.0.5", "SHOAL_FLOW_DIR": "/data/flow",
                                   "SHOAL_NODE": "node-3", "SHOAL_SPILL_BYTES": "1000000"})
    assert s == InstanceSettings(etcd=["http://a:2379", "http://b:2379"], prefix="/p/", data_host="10.0.0.5",
                                 flow_dir="/data/flow", node="node-3", spill_bytes=1000000)
    assert InstanceSettings.from_env({}) == InstanceSettings(etcd=["http://127.0.0.1:2379"])
