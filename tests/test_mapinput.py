"""`shoal map`'s pure rules, with plain data: linked sources, -N, --colsep, --tag, {%},
which commands need a shell, --pipe blocks, the environment a task carries, --results
paths, and the inline input a task may carry."""
from __future__ import annotations

import base64

import pytest
from hypothesis import given, strategies as st

from shoal.errors import InvalidSpec
from shoal.logic.mapinput import (MAX_ENV_BYTES, MAX_PIPE_INFLIGHT_BYTES, bash_functions, cut_blocks, parse_block,
                                  pipe_window, results_path, task_env)
from shoal.logic.template import as_command, combine, fill, group_args, split_columns, tag_lines, uses_slot
from shoal.model import TaskSpec
from shoal.model.task import MAX_INPUT_BYTES


def test_linked_sources_meet_up_to_the_shorter():
    assert combine([["a", "b", "c"], ["1", "2", "3"]], [False, True]) == [("a", "1"), ("b", "2"), ("c", "3")]
    assert combine([["a", "b", "c"], ["1", "2"]], [False, True]) == [("a", "1"), ("b", "2")]
    assert combine([["x", "y"], ["a", "b"], ["1", "2"]], [False, False, True]) == [
        ("x", "a", "1"), ("x", "b", "2"), ("y", "a", "1"), ("y", "b", "2")]
    assert combine([["a"], ["1", "2"]]) == [("a", "1"), ("a", "2")]  # unlinked: every combination


def test_several_inputs_per_job():
    combos = [("a",), ("b",), ("c",)]
    assert group_args(combos, 2) == [("a", "b"), ("c",)]
    assert group_args(combos, 0) == [(), (), ()]
    assert group_args(combos, None) == combos
    # the last job's missing {2} is empty, as in parallel; without -N it is an error
    assert fill("echo {1}-{2}", ("c",), 2, max_args=2) == "echo c-''"
    with pytest.raises(ValueError):
        fill("echo {1}-{2}", ("c",), 2)
    assert fill("echo", (), 1) == "echo"


def test_columns_split_at_a_regex():
    assert split_columns([("a\tb",), ("c\td",)], "\t") == [("a", "b"), ("c", "d")]
    assert split_columns([("a,,b,c",)], ",+") == [("a", "b", "c")]
    with pytest.raises(ValueError, match="--colsep"):
        split_columns([("a",)], "(")


def test_tag_starts_every_line():
    assert tag_lines("a 1", "x\ny\n") == "a 1\tx\na 1\ty\n"
    assert tag_lines("a", "x\ny") == "a\tx\na\ty"
    assert tag_lines("a", "") == ""


def test_slot_placeholder():
    assert uses_slot("echo {%}") and not uses_slot("echo {}")
    assert fill("echo {%} {#} {}", ("a b",), 7, slot=3) == "echo 3 7 'a b'"


@pytest.mark.parametrize("line", ["exit 1", "cd /tmp", "export X", "set -e", ". ./env.sh", "if"])
def test_shell_builtins_go_to_the_shell(line):
    assert as_command(line) == line


def test_exported_bash_functions_go_to_bash():
    funcs = bash_functions({"BASH_FUNC_doit%%": "() { echo $1; }", "PATH": "/bin"})
    assert funcs == {"doit"}
    assert as_command("doit 1", funcs) == ["bash", "-c", "doit 1"]
    assert as_command("echo 1 | doit", funcs) == ["bash", "-c", "echo 1 | doit"]
    assert as_command("/bin/true 1", funcs) == ["/bin/true", "1"]


def test_pipe_blocks_end_at_record_ends_like_parallel():
    data = b"".join(b"%d\n" % i for i in range(1, 100001))
    # `seq 100000 | parallel --pipe --block 100k wc -l` prints these counts
    assert [b.count(b"\n") for b in cut_blocks(data, 100_000)] == [18517, 16666, 16666, 16666, 16666, 14819]
    assert [len(b) for b in cut_blocks(data, 10_000)][:3] == [9998, 10000, 10000]
    assert cut_blocks(b"a\nb\nc", 2) == [b"a\n", b"b\n", b"c"]
    assert cut_blocks(b"x" * 50 + b"\n1\n", 10) == [b"x" * 50 + b"\n", b"1\n"]  # a long record goes whole
    assert cut_blocks(b"1\n2\n3\n4", 1, records=3) == [b"1\n2\n3\n", b"4"]
    assert cut_blocks(b"", 10) == []


@given(st.binary(max_size=300), st.integers(1, 40), st.one_of(st.none(), st.integers(1, 5)))
def test_pipe_blocks_keep_every_byte_in_order(data, block, records):
    blocks = cut_blocks(data, block, records)
    assert b"".join(blocks) == data
    assert all(blocks)


def test_block_sizes():
    assert parse_block("1K") == 1024 and parse_block("1k") == 1000 and parse_block("2M") == 2 * 1024 ** 2
    assert parse_block("500") == 500
    for bad in ("", "0", "ten", "5X"):
        with pytest.raises(ValueError, match="--block"):
            parse_block(bad)


def test_task_env_leaves_host_variables_behind():
    caller = {"PATH": "/usr/bin", "HOME": "/home/me", "SSH_AUTH_SOCK": "/tmp/x", "TERM": "xterm",
              "XDG_RUNTIME_DIR": "/run", "SHOAL_HOME": "/h", "LANG": "C.UTF-8", "MYVAR": "1", "PWD": "/w"}
    assert task_env(caller, {}) == {"LANG": "C.UTF-8", "MYVAR": "1"}
    assert task_env(caller, {"PATH": "/usr/bin"}) == {"LANG": "C.UTF-8", "MYVAR": "1", "PATH": "/usr/bin"}
    assert task_env(caller, {"MYVAR": "1"}, getenv=False) == {"MYVAR": "1"}


def test_task_env_over_the_cap_names_the_largest():
    with pytest.raises(ValueError, match=r"BIG.*--no-getenv --env NAME"):
        task_env({"BIG": "x" * MAX_ENV_BYTES, "SMALL": "1"}, {})
    assert task_env({"BIG": "x" * MAX_ENV_BYTES}, {}, getenv=False) == {}


def test_results_paths():
    assert results_path("out", ("a", "1")) == "out/1/a/2/1"
    assert results_path("out", ("b/c",)) == "out/1/b\\_c"


def test_task_input_is_bounded_base64():
    ok = TaskSpec.parse({"command": ["cat"], "input": base64.b64encode(b"x" * MAX_INPUT_BYTES).decode()})
    assert base64.b64decode(ok.input) == b"x" * MAX_INPUT_BYTES
    for data, expect in [
        ({"input": base64.b64encode(b"x" * (MAX_INPUT_BYTES + 1)).decode()}, "input: is 32,769 bytes"),
        ({"input": "not base64!"}, "input: is not base64"),
        ({"input": "eA==", "stdin": "/etc/hosts"}, r"input: give input \(bytes for stdin\) or stdin"),
    ]:
        with pytest.raises(InvalidSpec, match=expect):
            TaskSpec.parse({"command": ["cat"], **data})


def test_a_pipe_map_keeps_its_records_in_flight_small():
    for block in (1, 1000, 10_000, MAX_INPUT_BYTES):
        w = pipe_window(block)
        assert w >= 1 and w * (block * 4 // 3) <= MAX_PIPE_INFLIGHT_BYTES
    assert pipe_window(MAX_INPUT_BYTES) >= 8 and pipe_window(100) > 100
