"""DAG files: the parser (every problem at once, each with its line and step) and
`shoal dag run/status/validate` end to end through the CLI against a real cluster."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shoal.errors import InvalidSpec
from shoal.logic.dagfile import parse_dag

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pipeline.yaml"


def problems(text: str, **kw) -> list[str]:
    with pytest.raises(InvalidSpec) as e:
        parse_dag(textwrap.dedent(text), **kw)
    return e.value.problems


GOOD = """\
name: nightly
defaults:
  retries: 1
  cpus: 1
  env: {STAGE: prod, LEVEL: "1"}
steps:
  report:
    command: make report
    after: [clean, stats]
    allow_failed_deps: true
  fetch:
    command: curl -fsS http://example/x -o /tmp/x
  clean:
    command: ["python", "clean.py"]
    after: fetch
    memory: 2G
    retries: 3
    env: {LEVEL: "2"}
  stats:
    command: wc -l /tmp/x
    after: [fetch, fetch]
"""


def test_good_file_gives_topological_order_and_specs():
    dag = parse_dag(GOOD)
    assert dag.name == "nightly"
    assert dag.order == ["fetch", "clean", "stats", "report"]  # by layer, then as written
    assert [[s.name for s in layer] for layer in dag.layers()] == [["fetch"], ["clean", "stats"], ["report"]]
    fetch, clean, stats, report = (dag.steps[n] for n in dag.order)
    assert (fetch.line, clean.line, stats.line, report.line) == (11, 13, 19, 7)
    assert fetch.after == () and clean.after == ("fetch",) and stats.after == ("fetch",)
    assert report.after == ("clean", "stats")
    assert fetch.spec.command == "curl -fsS http://example/x -o /tmp/x" and fetch.spec.retries == 1
    assert clean.spec.command == ["python", "clean.py"] and clean.spec.memory == 2 * 2**30
    assert clean.spec.retries == 3 and clean.spec.cpus == 1
    assert clean.spec.env == {"STAGE": "prod", "LEVEL": "2"}  # env is merged, the step wins
    assert fetch.spec.env == {"STAGE": "prod", "LEVEL": "1"}
    assert report.spec.allow_failed_deps and not clean.spec.allow_failed_deps
    assert [s.spec.name for s in dag.steps.values()] == dag.order
    assert all(s.spec.job is None and s.spec.depends_on == [] for s in dag.steps.values())
    ids = {"fetch": "t1", "clean": "t2", "stats": "t3"}
    assert report.task("nightly-abc", ids) == {
        "retries": 1, "cpus": 1, "env": {"STAGE": "prod", "LEVEL": "1"}, "command": "make report",
        "allow_failed_deps": True, "name": "report", "job": "nightly-abc", "depends_on": ["t2", "t3"]}
    assert "depends_on" not in fetch.task("j", {})


def test_unknown_step_in_after_names_the_step_and_line():
    got = problems("""\
        steps:
          fetch:
            command: echo
          clean:
            command: echo
            after:
              - fetch
              - fecth
          report:
            command: echo
            after: nothere
        """)
    assert got == ["line 8: steps.clean.after: no step 'fecth' (did you mean 'fetch'?) (steps: fetch, clean, report)",
                   "line 11: steps.report.after: no step 'nothere' (steps: fetch, clean, report)"]


def test_cycles_list_the_steps_on_them():
    got = problems("""\
        steps:
          a:
            command: echo
            after: [c]
          b:
            command: echo
            after: [a]
          c:
            command: echo
            after: [b]
          ok:
            command: echo
            after: [a]
          me:
            command: echo
            after: [ok, me]
        """)
    assert got == [
        "line 4: steps.a.after: cycle: a -> c -> b -> a (a runs after c, c runs after b, b runs after a; "
        "none of them can start)",
        "line 16: steps.me.after: cycle: me runs after itself"]


def test_duplicate_step_names_and_keys_are_caught_with_both_lines():
    got = problems("""\
        name: x
        steps:
          fetch:
            command: echo one
          clean:
            command: echo
            command: echo again
          fetch:
            command: echo two
        name: y
        """)
    assert got == [
        "line 7: steps.clean.command: duplicate key (first at line 6; YAML would silently keep only the last)",
        "line 8: steps.fetch: duplicate step name (first defined at line 3; YAML would silently keep only the last)",
        "line 10: name: duplicate key (first at line 1; YAML would silently keep only the last)"]


def test_merge_keys_override_without_being_duplicates():
    dag = parse_dag(textwrap.dedent("""\
        steps:
          a: &base
            command: echo a
            retries: 2
          b:
            <<: *base
            command: echo b
        """))
    assert dag.steps["b"].spec.command == "echo b" and dag.steps["b"].spec.retries == 2
    assert problems("steps:\n  a: &x\n    command: echo\n    env: *x\n")[0].startswith(
        "line 1: a YAML anchor is used inside itself")


def test_unknown_fields_and_bad_values_per_step_with_lines():
    got = problems("""\
        defaults:
          memroy: 1G
          retries: 1
        steps:
          a:
            command: echo
            cpu: 2
          b:
            command: echo
            timeout: -5
            env:
              GOOD: "x"
              BAD: 7
        """)
    assert got[0].startswith("line 2: defaults.memroy: unknown field (did you mean 'memory'?) (known fields: command,")
    assert "after" not in got[0]  # defaults cannot take after
    assert got[1].startswith("line 7: steps.a.cpu: unknown field (did you mean 'cpus'?) (known fields: after, command,")
    assert got[2].startswith("line 10: steps.b.timeout: -5 is not valid")
    assert got[3].startswith("line 13: steps.b.env.BAD: 7 is not valid")
    assert len(got) == 4  # the bad default is said once, not once per step


def test_fields_the_dag_sets_are_refused():
    got = problems("""\
        defaults:
          after: [a]
          job: j
        steps:
          a:
            command: echo
            depends_on: [t0123]
            name: other
        """)
    assert got == ["line 2: defaults.after: steps have their own after; it cannot be a default",
                   "line 3: defaults.job: set by the DAG: each run is its own job, <name>-<suffix>",
                   "line 7: steps.a.depends_on: set by the DAG from `after` (use after: [step, ...])",
                   "line 8: steps.a.name: set by the DAG: a step's name is its key under steps"]


def test_empty_steps_and_missing_commands():
    got = problems("""\
        steps:
          a:
          b: {}
          c:
            retries: 2
          d:
            command:
          e: echo hi
        """)
    assert got == [
        "line 2: steps.a: empty step (give it at least a command: `command: echo hi`)",
        "line 3: steps.b: empty step (give it at least a command: `command: echo hi`)",
        "line 4: steps.c: missing command (a shell string, or an argv list such as [sort, -u, x.txt])",
        "line 6: steps.d: missing command (a shell string, or an argv list such as [sort, -u, x.txt])",
        "line 8: steps.e: expected a mapping of fields (command, after, ...), got a string "
        "(put it under the step as `command: ...`)"]
    assert problems("name: x\nsteps:\n") == [
        "line 2: steps: no steps (give at least one: steps: {hello: {command: echo hi}})"]
    assert problems("name: x\n") == [
        "line 1: steps: missing (give at least one step: steps: {hello: {command: echo hi}})"]
    assert problems("") == ["line 1: the file is empty (expected name, defaults and steps)"]
    assert parse_dag("defaults: {command: echo hi}\nsteps: {a: {retries: 1}}").steps["a"].spec.command == "echo hi"


def test_every_problem_at_once_sorted_by_line():
    got = problems("""\
        name: bad name
        stepz: 1
        steps:
          a:
            command: echo
            after: [zz, a]
          b:
          a:
            command: echo
            cpus: lots
        """)
    assert [int(re.match(r"line (\d+):", p).group(1)) for p in got] == [1, 2, 7, 8, 10]
    assert got[0].startswith("line 1: name: 'bad name' is not a DAG name")
    assert got[1].startswith("line 2: stepz: unknown key (did you mean 'steps'?)")
    assert got[3].startswith("line 8: steps.a: duplicate step name (first defined at line 4")
    assert got[4].startswith("line 10: steps.a.cpus: 'lots' is not valid")


def test_bad_yaml_names_its_line():
    got = problems("""\
        steps:
          a:
            command: echo
           after: [b]
        """)
    assert len(got) == 1 and got[0].startswith("line 4: not valid YAML")
    assert problems("- a\n- b\n") == [
        "line 1: top level: expected a mapping with name, defaults and steps, got a list"]


def test_keys_are_text_after_takes_a_name_and_cwd_is_relative_to_the_file():
    dag = parse_dag(textwrap.dedent("""\
        defaults: {cwd: out}
        steps:
          on: {command: echo on}
          2: {command: echo 2, after: on, cwd: /abs}
          "no": {command: [ls], after: [2, on]}
        """), default_name="fromfile", base_dir="/data/project")
    assert dag.name == "fromfile"
    assert dag.order == ["on", "2", "no"]
    assert dag.steps["no"].after == ("2", "on")
    assert dag.steps["on"].spec.cwd == "/data/project/out" and dag.steps["2"].spec.cwd == "/abs"
    assert parse_dag("defaults: {cwd: .}\nsteps: {a: {command: x}}").steps["a"].spec.cwd == "."


def test_the_example_pipeline_is_valid():
    dag = parse_dag(EXAMPLE.read_text(), base_dir="/somewhere")
    assert dag.order[0] == "prepare" and dag.order[-1] == "report"
    assert all(s.spec.cwd == "/somewhere" for s in dag.steps.values())


def shoal(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def test_cli_validate_and_an_invalid_file_submits_nothing(tmp_path):
    ok = shoal("dag", "validate", str(EXAMPLE))
    assert ok.returncode == 0 and ok.stdout.startswith("OK: ") and "prepare, numbers" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  a:\n    command: echo\n    after: [b]\n  c:\n")
    out = shoal("dag", "validate", str(bad))
    assert out.returncode == 2
    assert out.stderr.splitlines()[1:] == [
        "  line 4: steps.a.after: no step 'b' (steps: a, c)",
        "  line 5: steps.c: empty step (give it at least a command: `command: echo hi`)"]
    # nothing listens there: had run tried to submit, it would fail with "cannot reach"
    run = shoal("dag", "run", "--address", "http://127.0.0.1:9", str(bad))
    assert run.returncode == 2 and "nothing was submitted" in run.stderr and "cannot reach" not in run.stderr
    js = shoal("dag", "validate", "-o", "json", str(bad))
    assert json.loads(js.stdout)["problems"][0].startswith("line 4:")


# -- against a real cluster -------------------------------------------------------------------

def status_json(address: str, job: str) -> dict:
    out = shoal("dag", "status", "--address", address, "-o", "json", job)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.cluster
def test_example_pipeline_runs_end_to_end(make_cluster, tmp_path):
    cluster = make_cluster(nodes=1)
    shutil.copy(EXAMPLE, tmp_path / "pipeline.yaml")
    out = shoal("dag", "run", "--address", cluster.address, "pipeline.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    job = re.match(r"job (numbers-[0-9a-z]{6})\n", out.stdout).group(1)
    report = (tmp_path / "pipeline-out" / "report.txt").read_text()
    assert "numbers:       1000" in report and "sum of squares: 333833500" in report
    assert "even numbers:  500" in report and "top word:      the x3" in report
    st = status_json(cluster.address, job)
    assert st["state"] == "succeeded"
    assert [s["step"] for s in st["steps"]] == ["prepare", "numbers", "words", "squares", "evens",
                                                "wordfreq", "report"]
    assert all(s["state"] == "succeeded" and s["exit_code"] == 0 for s in st["steps"])
    assert next(s for s in st["steps"] if s["step"] == "report")["after"] == ["squares", "evens", "wordfreq"]


# the last step waits on two that both wait on the first; each step logs when it starts
# and ends (right's command is an argv list), so the order they ran in can be checked
ORDER = """\
name: order
defaults:
  env: {{LOG: "{log}"}}
steps:
  last:
    command: echo last >> "$LOG"
    after: [left, right]
  first:
    command: sleep 0.3; echo first >> "$LOG"
  left:
    command: echo left-start >> "$LOG"; sleep 0.5; echo left-end >> "$LOG"
    after: first
  right:
    command: ["sh", "-c", "echo right-start >> \\"$LOG\\"; sleep 0.5; echo right-end >> \\"$LOG\\""]
    after: [first]
"""


@pytest.mark.cluster
def test_steps_run_in_dependency_order(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2)
    log = tmp_path / "order.log"
    dag = tmp_path / "order.yaml"
    dag.write_text(ORDER.format(log=log))
    out = shoal("dag", "run", "--address", cluster.address, "-o", "json", str(dag))
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["job"].startswith("order-") and res["state"] == "succeeded"
    lines = log.read_text().split()
    assert lines[0] == "first" and lines[-1] == "last" and sorted(lines[1:5]) == [
        "left-end", "left-start", "right-end", "right-start"]
    assert lines.index("left-start") < lines.index("left-end")
    assert lines.index("right-start") < lines.index("right-end")
    steps = {s["step"]: s for s in res["steps"]}
    assert steps["last"]["after"] == ["left", "right"]
    for before, after in (("first", "left"), ("first", "right"), ("left", "last"), ("right", "last")):
        assert steps[after]["started_at"] >= steps[before]["finished_at"] - 0.01


@pytest.mark.cluster
def test_a_failed_step_fails_its_dependents_upstream_and_the_run(make_cluster, tmp_path):
    cluster = make_cluster(nodes=1)
    log = tmp_path / "ran.log"
    dag = tmp_path / "broken.yaml"
    dag.write_text(textwrap.dedent(f"""\
        defaults:
          env: {{LOG: "{log}"}}
        steps:
          ok:
            command: echo ok >> "$LOG"
          broken:
            command: echo broken >> "$LOG"; echo oops >&2; exit 3
            after: ok
          child:
            command: echo child >> "$LOG"
            after: broken
          grandchild:
            command: echo grandchild >> "$LOG"
            after: [child]
          cleanup:
            command: echo cleanup >> "$LOG"
            after: [broken]
            allow_failed_deps: true
        """))
    out = shoal("dag", "run", "--address", cluster.address, str(dag))
    assert out.returncode == 1, out.stdout + out.stderr
    job = re.match(r"job (broken-[0-9a-z]{6})\n", out.stdout).group(1)  # named after the file
    assert "step broken failed: exit code 3" in out.stderr
    assert f"job {job}: 2 succeeded, 1 failed, 2 upstream_failed" in out.stderr
    assert sorted(log.read_text().split()) == ["broken", "cleanup", "ok"]
    st = status_json(cluster.address, job)
    assert st["state"] == "failed"
    states = {s["step"]: s["state"] for s in st["steps"]}
    assert states == {"ok": "succeeded", "broken": "failed", "child": "upstream_failed",
                      "grandchild": "upstream_failed", "cleanup": "succeeded"}
    reasons = {s["step"]: s["reason"] for s in st["steps"]}
    assert reasons["child"] == "dependency broken ended failed"  # step names, not task ids
    assert reasons["grandchild"] == "dependency child ended upstream_failed"
    table = shoal("dag", "status", "--address", cluster.address, job)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line.split()[2] for line in table.stdout.splitlines()
            if line.split() and line.split()[0] in states}
    assert rows == states
    assert "failed (2 succeeded, 1 failed, 2 upstream_failed)" in table.stdout
    missing = shoal("dag", "status", "--address", cluster.address, "no-such-job")
    assert missing.returncode == 1 and missing.stderr.startswith("Error: no tasks in job 'no-such-job'")


# -- from Python: client.run_dag --------------------------------------------------------------

@pytest.mark.cluster
async def test_run_dag_from_python_in_order_and_a_bad_file_submits_nothing(make_cluster, tmp_path):
    from shoal.client import aconnect, connect
    cluster = make_cluster(nodes=1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  a:\n    command: echo\n    after: [b]\n  c:\n")
    log = tmp_path / "order.log"
    good = tmp_path / "order.yaml"
    good.write_text(ORDER.format(log=log))
    with connect(cluster.address) as c:
        with pytest.raises(InvalidSpec) as e:
            c.run_dag(bad)
        assert e.value.problems == [
            "line 4: steps.a.after: no step 'b' (steps: a, c)",
            "line 5: steps.c: empty step (give it at least a command: `command: echo hi`)"]
        assert c.list(limit=100) == []                    # nothing was submitted

        run = c.run_dag(str(good), wait=True, timeout=120)
        assert run.ok and re.fullmatch(r"order-[0-9a-z]{6}", run.job)
        assert list(run.ids) == ["first", "left", "right", "last"]  # dependency order
        assert list(run.records) == list(run.ids)
        assert all(r.state.value == "succeeded" and r.spec.job == run.job for r in run.records.values())
        assert run.records["last"].spec.depends_on == [run.ids["left"], run.ids["right"]]
        lines = log.read_text().split()
        assert lines[0] == "first" and lines[-1] == "last" and sorted(lines[1:5]) == [
            "left-end", "left-start", "right-end", "right-start"]
        recs = run.records
        for before, after in (("first", "left"), ("first", "right"), ("left", "last"), ("right", "last")):
            assert recs[after].started_at >= recs[before].finished_at - 0.01
        assert sorted(r.id for r in c.list(job=run.job)) == sorted(run.ids.values())

    async with aconnect(cluster.address) as ac:           # the async client, without waiting
        started = await ac.run_dag(good, job="order-mine")
        assert started.job == "order-mine" and started.records == {} and not started.ok
        done = await ac.wait(list(started.ids.values()), timeout=120)
        assert [r.state.value for r in done] == ["succeeded"] * 4
