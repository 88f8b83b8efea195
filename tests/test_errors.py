"""The error system: every class in the tree drawn in shoal.errors, a status for each in
the API's table, bodies that rebuild the same error on the other side, and problems in
input worded and collected one way."""
from __future__ import annotations

import importlib
import pickle
import pkgutil
import re
import sys

import httpx
import orjson
import pytest
from fastapi import FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shoal import errors
from shoal.api.errors import INTERNAL, STATUS, install, status_of
from shoal.errors import (FilterFailed, FlowFailed, InvalidSpec, Problems, ShoalError, TaskFailed,
                          describe_validation, from_body, to_body)
from shoal.model import TaskRecord, TaskSpec

CLASSES = sorted(errors.error_classes().values(), key=lambda c: c.__name__)


def internal(cls: type) -> bool:
    return cls is ShoalError or issubclass(cls, errors.InternalError)


def sample(cls: type[ShoalError]) -> ShoalError:
    """An instance of `cls` with every field it carries set."""
    if issubclass(cls, InvalidSpec):
        return cls(["cpus: -1 is not valid (expected a number, 0 or more)", "colour: unknown field"])
    if cls is TaskFailed:
        return cls(TaskRecord(id="t1", spec=TaskSpec(command=["x"]), submitted_at=0.0, state="failed",
                              error={"type": "ValueError", "message": "bad", "traceback": "Traceback ..."}))
    if cls is FlowFailed:
        return cls("r1", "stage instance count[0] exited with status 3", stage="count", stderr="boom")
    if cls is FilterFailed:
        return cls(3, "grep: x: No such file")
    return cls(f"something about {cls.__name__}")


def test_every_class_is_drawn_in_the_tree():
    tree = errors.__doc__
    for cls in CLASSES:
        assert re.search(rf"(?m)(^|\s){cls.__name__}(\s|$)", tree), cls.__name__
    assert all(cls.__module__ == "shoal.errors" for cls in CLASSES)


def test_no_error_class_lives_outside_the_errors_module():
    import shoal
    for info in pkgutil.walk_packages(shoal.__path__, "shoal."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as e:   # a module of an extra (flows) that is not installed
            if (e.name or "").startswith("shoal"):
                raise
            continue
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == info.name:
                assert info.name == "shoal.errors", f"{value.__name__} is defined in {info.name}"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_class_has_a_status_other_than_500_unless_internal(cls):
    if internal(cls):
        assert status_of(cls) == 500
    else:
        assert status_of(cls) != 500 and 400 <= status_of(cls) < 600, cls
    assert set(INTERNAL) <= set(STATUS) and all(internal(c) for c in INTERNAL)


def test_the_internal_classes_are_named_in_the_tables_docstring():
    import shoal.api.errors as api_errors
    text = " ".join((api_errors.STATUS.__doc__ or "", open(api_errors.__file__).read()))
    for cls in CLASSES:
        if internal(cls) and cls is not ShoalError:
            assert cls.__name__ in text, cls.__name__


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_body_rebuilds_the_same_error(cls):
    e = sample(cls)
    body = orjson.loads(orjson.dumps(to_body(e)))   # what crosses the wire
    assert body["error"] == cls.__name__ and body["message"] == str(e)
    back = from_body(status_of(cls), body, "fallback")
    assert type(back) is type(e) and isinstance(back, cls)   # TaskFailed: mixed with ValueError, both sides
    assert str(back) == str(e)
    for name in cls.fields:
        assert getattr(back, name) == getattr(e, name), name
    if isinstance(e, InvalidSpec):
        assert back.problems == e.problems


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_errors_pickle(cls):
    e = sample(cls)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is type(e) and isinstance(back, cls) and str(back) == str(e)
    for name in cls.fields:
        assert getattr(back, name) == getattr(e, name)


@pytest.mark.parametrize("status, cls", [(404, errors.NotFound), (409, errors.Conflict), (413, errors.TooLarge),
                                         (422, InvalidSpec), (503, errors.StoreUnavailable), (500, ShoalError),
                                         (418, ShoalError)])
def test_an_unknown_name_or_no_body_is_read_by_status(status, cls):
    for body in ({"error": "SomethingNewer", "message": "said the server"}, None, {"detail": "x"}):
        e = from_body(status, body, f"HTTP {status}: not json")
        assert type(e) is cls
        assert str(e) == ("said the server" if body and "message" in body else f"HTTP {status}: not json")
    assert from_body(422, None, "bad").problems == ["bad"]


def test_a_raw_body_is_decoded_when_it_is_json():
    e = from_body(404, b'{"error": "NotFound", "message": "no task t1"}', "fallback")
    assert type(e) is errors.NotFound and str(e) == "no task t1"
    e = from_body(502, "<html>bad gateway</html>", "HTTP 502: <html>bad gateway</html>")
    assert type(e) is ShoalError and str(e) == "HTTP 502: <html>bad gateway</html>"


def test_a_relayed_error_says_which_node_answered():
    e = from_body(404, {"error": "NotFound", "message": "no result"}, "", origin="node node-2")
    assert type(e) is errors.NotFound and str(e) == "node node-2: no result"


def test_a_body_naming_something_that_is_not_an_error_is_not_trusted():
    assert type(from_body(404, {"error": "SystemExit", "message": "x"}, "")) is errors.NotFound
    assert type(from_body(500, {"error": ["NotFound"], "message": "x"}, "")) is ShoalError


# -- the API's handlers ---------------------------------------------------------------------

def app_raising() -> httpx.AsyncClient:
    app = FastAPI()
    install(app)

    @app.get("/raise/{name}")
    async def raise_(name: str):
        raise sample(errors.error_classes()[name])

    @app.get("/count")
    async def count(limit: int = Query(...)):
        return {"limit": limit}

    @app.post("/body")
    async def body(spec: dict):
        return spec

    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api")


async def test_the_api_answers_each_error_with_its_status_and_a_body_that_rebuilds_it():
    async with app_raising() as client:
        answers = {cls: await client.get(f"/raise/{cls.__name__}") for cls in CLASSES}
    for cls, resp in answers.items():
        assert resp.status_code == status_of(cls), cls
        back = from_body(resp.status_code, resp.json(), resp.text)
        assert type(back) is type(sample(cls)) and isinstance(back, cls) and str(back) == str(sample(cls))


async def test_fastapis_own_validation_errors_are_worded_like_every_other_problem():
    async with app_raising() as client:
        limit = await client.get("/count", params={"limit": "lots"})
        not_json = await client.post("/body", content=b"{not json", headers={"content-type": "application/json"})
        a_list = await client.post("/body", json=[1, 2])
    assert limit.status_code == 422
    body = limit.json()
    assert body["error"] == "InvalidSpec"
    assert body["problems"] == ["limit: 'lots' is not valid: Input should be a valid integer, unable to parse "
                                "string as an integer"]
    assert not_json.status_code == 422 and not_json.json()["problems"][0].startswith("body: not valid JSON")
    resp = a_list
    assert resp.status_code == 422 and resp.json()["problems"][0].startswith("body: [1, 2] is not valid")


# -- problems in input ----------------------------------------------------------------------

def test_problems_are_reported_all_at_once_by_line():
    p = Problems()
    assert not p
    p.raise_if_any()   # nothing found: nothing raised
    p.add("steps.b.cpus", "'lots' is not valid", line=9)
    p.add(("stages", 2, "input", "from"), "no stage named 'x'", line=3)
    p.add("steps.b.cpus", "'lots' is not valid", line=9)   # found twice, said once
    with pytest.raises(InvalidSpec) as e:
        p.raise_if_any()
    assert e.value.problems == ["line 3: stages[2].input.from: no stage named 'x'",
                                "line 9: steps.b.cpus: 'lots' is not valid"]


def test_problems_found_under_a_prefix_keep_their_paths():
    p = Problems()
    p.extend("tasks[3]", ["command[1]: 1 is not valid", "memory: '2 gigs' is not a size (use 512M, 2G)"])
    p.extend(("stages", 0), ["read.chunk: must be at least 64K"])
    p.extend("", ["give exactly one of op, command, function"])
    assert [str(x) for x in p] == ["tasks[3].command[1]: 1 is not valid",
                                   "tasks[3].memory: '2 gigs' is not a size (use 512M, 2G)",
                                   "stages[0].read.chunk: must be at least 64K",
                                   "give exactly one of op, command, function"]
    assert p.items[0].path == ("tasks", 3, "command", 1)
    assert p.items[2].path == ("stages", 0, "read", "chunk")


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: list[str] | str
    cpus: float = Field(1.0, ge=0)
    env: dict[str, str] = {}
    right_key: list[int] = []

    def model_post_init(self, _):
        if len(self.right_key) > 2:
            raise ValueError("right_key: at most two fields")


def problems_of(data: dict, **kw) -> list[str]:
    with pytest.raises(ValidationError) as e:
        Limits.model_validate(data)
    return describe_validation(e.value, **kw)


def test_one_pydantic_formatter_names_the_field_and_the_form():
    forms = {"cpus": "a number, 0 or more", "env": "a mapping of names to strings", "command": "an argv list"}
    kw = dict(forms=forms, fields=Limits.model_fields)
    assert problems_of({"command": "x", "cpuz": 2}, **kw) == [
        "cpuz: unknown field (did you mean 'cpus'?) (known fields: command, cpus, env, right_key)"]
    assert problems_of({"command": "x", "cpus": -1}, **kw) == ["cpus: -1 is not valid (expected a number, 0 or more)"]
    assert problems_of({"command": "x", "env": {"A": 1}}, **kw) == [
        "env.A: 1 is not valid (expected a mapping of names to strings)"]
    assert problems_of({}, **kw) == ["command: required (an argv list)"]
    # a union reports each branch; the one that says where the problem lies wins
    assert problems_of({"command": ["a", 1]}, **kw) == ["command[1]: 1 is not valid (expected an argv list)"]
    assert problems_of({"command": 5}, **kw) == ["command: 5 is not valid (expected an argv list)"]
    # a model's own check that names a field is put under that field
    assert problems_of({"command": "x", "right_key": [1, 2, 3]}, prefix="op.join", **kw) == [
        "op.join.right_key: at most two fields"]
    assert problems_of({"command": "x", "cpuz": 2}, prefix="op.top", noun="option", fields=["cpus"]) == [
        "op.top.cpuz: unknown option (did you mean 'cpus'?) (known options: cpus)"]
    # without forms, pydantic's own words
    assert problems_of({"command": "x", "cpus": "lots"}) == [
        "cpus: 'lots' is not valid: Input should be a valid number, unable to parse string as a number"]


def test_tasks_dag_files_and_flow_files_word_problems_alike():
    from shoal.flows.file import parse_flow
    from shoal.logic.dagfile import parse_dag
    with pytest.raises(InvalidSpec) as task:
        TaskSpec.parse({"command": ["echo", 1], "cpus": -1})
    with pytest.raises(InvalidSpec) as dag:
        parse_dag("steps:\n  a:\n    command: [echo, 1]\n    cpus: -1\n")
    with pytest.raises(InvalidSpec) as flow:
        parse_flow("stages:\n  - name: a\n    read: x.txt\n    op: words\n    cpus: -1\n    write: o.tsv\n")
    assert task.value.problems == ["command[1]: 1 is not valid (expected an argv list of strings or a shell string)",
                                   "cpus: -1 is not valid (expected a number, 0 or more)"]
    assert dag.value.problems == [f"line {n}: steps.a.{p}" for n, p in zip((3, 4), task.value.problems)]
    assert flow.value.problems == ["line 5: stages[0] (a).cpus: -1 is not valid: Input should be greater than "
                                   "or equal to 0"]


def test_the_cli_prints_error_and_exits_non_zero(monkeypatch, capsys):
    from shoal.cli import main
    monkeypatch.setattr(sys, "argv", ["shoal", "status", "t0", "--address", "http://127.0.0.1:9"])
    with pytest.raises(SystemExit) as e:
        main.run()
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: cannot reach shoal at http://127.0.0.1:9") and "Traceback" not in err


def test_a_usage_error_is_shown_without_a_traceback(monkeypatch, capsys):
    from shoal.cli import main
    monkeypatch.setattr(sys, "argv", ["shoal", "dag", "run", "/nonexistent/pipeline.yaml"])
    with pytest.raises(SystemExit) as e:
        main.run()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Error: Invalid value for 'file'" in err and "Traceback" not in err
