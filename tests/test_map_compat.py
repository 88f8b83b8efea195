"""`shoal map` as a drop-in for GNU parallel: each idiom of `man parallel_tutorial` runs
through both `parallel` and `shoal map` (on one local cluster), each in its own copy of
the same directory, and must give the same stdout, exit status and files."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shoal.cluster.local import LocalCluster

pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(shutil.which("parallel") is None,
                                 reason="GNU parallel is not installed (apt-get install -y parallel)")]

# (id, arguments after `parallel` / `shoal map`, stdin, whether the output order is fixed)
IDIOMS = [
    ("append", ["-k", "echo", ":::", "a", "b c", "d"], None, True),
    ("every-combination", ["echo", ":::", "a", "b", ":::", "1", "2"], None, False),
    ("linked", ["-k", "echo", ":::", "a", "b", "c", ":::+", "1", "2", "3"], None, True),
    ("linked-shorter", ["-k", "echo", ":::", "a", "b", "c", ":::+", "1", "2"], None, True),
    ("linked-files", ["-k", "echo {1}-{2}", "::::", "letters.txt", "::::+", "numbers.txt"], None, True),
    ("linked-in-product", ["-k", "echo", ":::", "x", "y", ":::", "a", "b", ":::+", "1", "2"], None, True),
    ("stdin-lines", ["-k", "echo", "[{}]"], b"one\ntwo words\n", True),
    ("placeholders", ["-k", "echo {.} {/} {//} {/.} {#}", ":::", "d/f.txt", "g.tar.gz"], None, True),
    ("quoting", ["-k", "echo {}", ":::", "a  b", "it's", "$HOME", "*"], None, True),
    ("N2", ["-k", "-N2", "echo {1}-{2}", ":::", "a", "b", "c", "d", "e"], None, True),
    ("N2-append", ["-k", "-N2", "echo", ":::", "a", "b", "c"], None, True),
    ("N0", ["-k", "-N0", "echo hi", ":::", "a", "b"], None, True),
    ("colsep", ["-k", "--colsep", "\t", "echo {2}-{1}", "::::", "table.tsv"], None, True),
    ("colsep-regex", ["-k", "--colsep", ",+", "echo {3} {1}", ":::", "a,,b,c", "d,e,f"], None, True),
    ("colsep-append", ["-k", "--colsep", ",", "echo", ":::", "x,y z"], None, True),
    ("tag", ["-k", "--tag", "echo", ":::", "a", "b", ":::", "1", "2"], None, True),
    ("tag-lines", ["--tag", "printf 'x\\ny'", ":::", "a", "b"], None, False),
    ("pipe-block", ["-k", "--pipe", "--block", "10k", "wc", "-l"], b"".join(b"%d\n" % i for i in range(20000)), True),
    ("pipe-N", ["-k", "--pipe", "-N", "7", "paste -sd+ -"], b"".join(b"%d\n" % i for i in range(1, 51)), True),
    ("pipe-unordered", ["--pipe", "-N3", "cat"], b"".join(b"%d\n" % i for i in range(40)), False),
    ("jobs-1-runs-one-at-a-time", ["-j1", "sleep 0.{}; echo {}", ":::", "3", "1", "2"], None, True),
    ("slot", ["-k", "-j1", "echo {%} {#}", ":::", "a", "b", "c"], None, True),
    ("results", ["--results", "out", "echo", ":::", "a", "b/c", ":::", "1", "2"], None, True),
    ("timeout", ["-k", "--timeout", "1", "echo start {}; sleep {}; echo end {}", ":::", "0", "30"], None, True),
    ("retries-count-every-run", ["--retries", "3", "echo x >> runs.{}; exit 1", ":::", "a"], None, True),
    ("exit-builtin", ["exit", ":::", "0", "1", "2"], None, False),
    ("exit-status-counts-failures", ["exit {}", ":::", "0", "3", "0", "5"], None, False),
    ("exit-status-at-most-101", ["false", ":::", *map(str, range(105))], None, False),
    ("cd-builtin", ["-k", "cd {} && cat f.txt", ":::", "d1", "d2"], None, True),
    ("export-builtin", ["-k", "export X={}; echo $X", ":::", "q", "r"], None, True),
    ("exported-variable", ["-k", "echo $MAPVAR {}", ":::", "1", "2"], None, True),
    ("relative-path", ["-k", "cat", ":::", "d1/f.txt", "letters.txt"], None, True),
    ("relative-output", ["gzip -k {}", ":::", "d1/f.txt", "d2/f.txt"], None, True),
    ("large-output", ["-k", "seq {}", ":::", "300000", "200000"], None, True),
    ("large-output-unordered", ["seq {}", ":::", "250000"], None, True),
    ("halt-soon", ["-j1", "--halt", "soon,fail=1", "echo {}; exit {}", ":::", "0", "3", "0", "0"], None, True),
    ("halt-now", ["-j1", "--halt", "now,fail=1", "echo {}; exit {}", ":::", "0", "4", "0"], None, True),
    ("halt-soon-2", ["-j1", "--halt", "soon,fail=2", "exit {}", ":::", "0", "3", "0", "4", "5"], None, True),
    ("dry-run", ["--dry-run", "gzip -k {}", ":::", "a b.log", "it's"], None, True),
]


def make_tree(root: Path) -> None:
    """The directory every idiom runs in (each tool gets its own copy)."""
    root.mkdir()
    (root / "letters.txt").write_text("a\nb\nc\n")
    (root / "numbers.txt").write_text("1\n2\n3\n")
    (root / "table.tsv").write_text("a\tb\nc\td\n")
    for d in ("d1", "d2"):
        (root / d).mkdir()
        (root / d / "f.txt").write_text(f"in {d}\n")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def home():
    """One local cluster for the module; `shoal map` finds it through SHOAL_HOME."""
    h = Path(tempfile.mkdtemp(prefix="shoal-test-compat-"))
    c = LocalCluster(h, nodes=1, lease_ttl_s=5)
    try:
        c.up(timeout_s=120)
        yield h
    finally:
        c.destroy()


def run_tool(argv: list[str], cwd: Path, stdin: bytes | None, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, input=stdin, capture_output=True, timeout=300,
                          **({} if stdin is not None else {"stdin": subprocess.DEVNULL}))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("args, stdin, ordered", [pytest.param(*c[1:], id=c[0]) for c in IDIOMS])
def test_same_as_gnu_parallel(home, tmp_path, args, stdin, ordered):
    env = dict(os.environ, SHOAL_HOME=str(home), MAPVAR="from-the-caller",
               PARALLEL_SHELL="/bin/sh")  # shoal runs shell commands with /bin/sh
    env.pop("SHOAL_ADDRESS", None)
    trees = {}
    runs = {}
    for tool, argv in (("parallel", ["parallel", "--will-cite", *args]),
                       ("shoal", [sys.executable, "-m", "shoal", "map", "--no-progress", *args])):
        make_tree(tmp_path / tool)
        runs[tool] = run_tool(argv, tmp_path / tool, stdin, env)
        trees[tool] = snapshot(tmp_path / tool)
    want, got = runs["parallel"], runs["shoal"]
    assert b"Traceback" not in got.stderr, got.stderr.decode()
    assert got.returncode == want.returncode, (got.returncode, want.returncode, got.stderr.decode()[-2000:])
    if ordered:
        assert got.stdout == want.stdout
    else:
        assert sorted(got.stdout.splitlines()) == sorted(want.stdout.splitlines())
    assert trees["shoal"] == trees["parallel"]
