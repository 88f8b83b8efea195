"""Every usage error, run through the real `shoal` entry point: a short message that says
what is wrong (and what is right), exit status 2, never a traceback. No cluster runs here:
these are refused before one would be needed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import shoal


def shoal_cmd(tmp_path: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, SHOAL_HOME=str(tmp_path / "home"), COLUMNS="200")
    env.pop("SHOAL_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "shoal", *args], env=env, cwd=cwd or tmp_path,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def assert_usage_error(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
    assert "Error: " in p.stderr, p.stderr
    assert len(p.stderr.splitlines()) <= 6, p.stderr   # short: usage, hint, the error
    for w in words:
        assert w in p.stderr, (w, p.stderr)


@pytest.mark.parametrize("args, words", [
    (["sbumit", "--", "true"], ["No such command 'sbumit'", "Did you mean 'submit'"]),
    (["submit"], ["Missing argument", "command"]),
    (["ls", "--bogus"], ["No such option: --bogus"]),
    (["ls", "--state", "done"], ["'--state'", "'done' is not one of", "'succeeded'", "'failed'"]),
    (["ls", "--limit", "100000"], ["'--limit'", "100000", "1 to 10000"]),
    (["ls", "--limit", "lots"], ["'--limit'", "lots"]),
    (["flow", "run", "missing.yaml"], ["'file'", "missing.yaml", "does not exist"]),
    (["flow", "validate", "missing.yaml"], ["missing.yaml", "does not exist"]),
    (["dag", "run", "missing.yaml"], ["missing.yaml", "does not exist"]),
    (["flow", "frob"], ["No such command 'frob'"]),
    (["dag"], []),
    (["logs"], ["Missing argument"]),
    (["logs", "t1", "--attempt", "first"], ["'--attempt'", "first"]),
    (["status"], ["Missing argument"]),
    (["cancel"], ["Missing argument"]),
    (["wait", "t1", "--timeout", "soon"], ["'--timeout'", "soon"]),
    (["up", "--nodes", "0"], ["'--nodes'"]),
    (["down", "--output", "yaml"], ["'--output'", "yaml"]),
    (["node", "--cpus", "many"], ["'--cpus'", "many"]),
    (["nodes", "--output", "xml"], ["'--output'", "xml"]),
])
def test_usage_errors_are_short_messages_with_status_2(tmp_path, args, words):
    p = shoal_cmd(tmp_path, *args)
    if args == ["dag"]:   # a group alone shows its help (as click does), still status 2
        assert p.returncode == 2 and "Traceback" not in p.stdout + p.stderr and "Usage" in p.stdout + p.stderr
        return
    assert_usage_error(p, *words)


def test_version(tmp_path):
    p = shoal_cmd(tmp_path, "--version")
    assert p.returncode == 0 and p.stdout.strip() == f"shoal {shoal.__version__}", p


def test_help_keeps_every_default(tmp_path):
    p = shoal_cmd(tmp_path, "submit", "--help")
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())
    for said in ("CPUs the task needs [default: 1]", "higher runs first [default: 0]",
                 "Times to retry a failed attempt [default: 0]", "[default: the directory you run this in]",
                 "Team charged for it [default: default]"):
        assert said in text, said
    p = shoal_cmd(tmp_path, "logs", "--help")
    assert "[default: the latest]" in " ".join(p.stdout.split())
    assert "Exit status 3" in " ".join(p.stdout.split())


def test_submit_help_says_where_a_task_runs(tmp_path):
    text = " ".join(shoal_cmd(tmp_path, "submit", "--help").stdout.split())
    assert "runs in the directory you submit it from" in text


# -- flow validate: every problem at once ------------------------------------------------------

FLOW = """\
name: check
stages:
  - name: a
    read: nomatch*.txt
    op: words
  - name: b
    input: {from: a, edge: collect}
    op: count
    write: {path: out.tsv}
"""


def test_flow_validate_reports_a_source_that_matches_nothing_and_an_existing_output(tmp_path):
    pytest.importorskip("polars")
    (tmp_path / "check.yaml").write_text(FLOW)
    (tmp_path / "out.tsv").write_text("kept\n")
    p = shoal_cmd(tmp_path, "flow", "validate", "check.yaml")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "2 problem(s)" in p.stderr
    assert f"stages[0] (a).read: {tmp_path}/nomatch*.txt matched no files" in p.stderr
    assert f"stages[1] (b).write: {tmp_path}/out.tsv exists (set overwrite: true" in p.stderr

    p = shoal_cmd(tmp_path, "flow", "validate", "check.yaml", "-o", "json")
    doc = json.loads(p.stdout)
    assert p.returncode == 2 and doc["ok"] is False and len(doc["problems"]) == 2
    assert [s["name"] for s in doc["stages"]] == ["a", "b"]

    (tmp_path / "out.tsv").unlink()
    (tmp_path / "nomatch1.txt").write_text("x\n")
    p = shoal_cmd(tmp_path, "flow", "validate", "check.yaml", "-o", "json")
    assert p.returncode == 0 and json.loads(p.stdout)["ok"] is True, p.stdout


def test_flow_validate_reports_every_schema_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: bad\nstages:\n  - name: a\n    read: x\n    cpus: -1\n    op: words\n"
                                       "  - name: b\n    input: {from: a, edge: collect}\n    parallelism: zero\n"
                                       "    op: count\n")
    p = shoal_cmd(tmp_path, "flow", "validate", "bad.yaml")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "line 5: stages[0] (a).cpus" in p.stderr and "line 9: stages[1] (b).parallelism" in p.stderr
