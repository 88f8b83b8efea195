"""The HTTP API and the SDK as a user meets them, against a real two-node cluster:
submit, get, wait, list, events, logs (from any node), bad input and its messages,
size limits, and the embedded cluster `shoal.connect()` starts when none runs."""
from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

import shoal
from shoal.cluster.local import LocalCluster

pytestmark = pytest.mark.cluster

MAX_RETRIES = 3   # the cap the module's nodes are started with (--max-retries)


@pytest.fixture(scope="module")
def cluster():
    """One two-node cluster for the whole module, destroyed after it."""
    home = Path(tempfile.mkdtemp(prefix="shoal-test-api-"))
    c = LocalCluster(home, nodes=2, lease_ttl_s=5, node_args=["--max-retries", str(MAX_RETRIES)])
    try:
        c.up(timeout_s=120)
        yield c
    finally:
        c.destroy()


@pytest.fixture(scope="module")
def apis(cluster) -> dict[str, str]:
    """node id -> API address."""
    return {n["id"]: n["api"] for n in cluster.state()["nodes"]}


@pytest.fixture(scope="module")
def c(cluster):
    """A sync client connected to node-1."""
    client = shoal.connect(cluster.state()["nodes"][0]["api"], timeout_s=60)
    try:
        yield client
    finally:
        client.close()


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def total_tasks(c) -> int:
    return len(c.list(limit=10000))


# -- submit, get, wait ------------------------------------------------------------------

def test_submit_argv_get_and_wait_report_how_it_ran(c, apis):
    name = uniq("argv")
    rec = c.submit(["sh", "-c", "echo out; echo err >&2; exit 3"], name=name)
    assert rec.id.startswith("t") and rec.state.value == "queued" and rec.spec.name == name
    got = c.get(rec.id)
    assert got.id == rec.id and got.spec.command == ["sh", "-c", "echo out; echo err >&2; exit 3"]
    done = c.wait(rec.id, timeout=120)
    assert done.id == rec.id
    assert done.state.value == "failed"
    assert done.exit_code == 3
    assert done.stdout_tail == "out\n" and done.stderr_tail == "err\n"
    assert done.stdout_bytes == 4 and done.stderr_bytes == 4
    assert done.node in apis
    assert "exit code 3" in done.reason_text()
    a = done.last
    assert a.n == 1 and a.node == done.node and a.exit_code == 3
    assert rec.submitted_at <= a.started_at <= a.finished_at <= done.finished_at
    assert a.cpu_s is not None and a.cpu_s >= 0
    # a tiny shell's peak is below the node's own, which Linux folds into ru_maxrss: unknown
    assert a.max_rss_bytes is None or a.max_rss_bytes > 0
    # what wait returned is what get returns from now on
    assert c.get(rec.id).model_dump() == done.model_dump()


def test_argv_is_not_run_by_a_shell_but_a_string_is(c):
    argv = c.submit(["echo", "$((6*7))", "a  b"])
    shell = c.submit("echo $((6*7)) | tr 4 X")
    a, s = c.wait([argv.id, shell.id], timeout=120)
    assert a.state.value == "succeeded" and a.exit_code == 0
    assert a.stdout_tail == "$((6*7)) a  b\n"
    assert s.state.value == "succeeded" and s.exit_code == 0
    assert s.stdout_tail == "X2\n"


def test_cpu_seconds_and_max_rss_are_measured(c):
    # write 256 MiB (so the pages are resident, and the peak is above the node's own) and spin
    code = "b = b'x' * (256 << 20)\nn = 0\nfor i in range(3_000_000):\n    n += i\nprint(len(b), n > 0)"
    rec = c.wait(c.submit([sys.executable, "-c", code]).id, timeout=180)
    assert rec.state.value == "succeeded", rec.stderr_tail
    assert rec.stdout_tail == f"{256 << 20} True\n"
    assert rec.cpu_s > 0
    assert rec.max_rss_bytes >= 256 << 20
    summary = rec.summary()
    assert summary["cpu_s"] == rec.cpu_s and summary["max_rss_bytes"] == rec.max_rss_bytes
    assert summary["node"] == rec.node and summary["exit_code"] == 0
    assert summary["started_at"] == rec.started_at


def test_wait_with_raise_on_failure(c):
    rec = c.submit("exit 7")
    with pytest.raises(shoal.TaskFailed) as e:
        c.wait(rec.id, timeout=120, raise_on_failure=True)
    assert e.value.task.id == rec.id and e.value.task.exit_code == 7
    assert "exit code 7" in str(e.value)


def test_get_and_cancel_of_an_unknown_id_raise_not_found(c):
    with pytest.raises(shoal.NotFound):
        c.get("t0000000000nosuchid")
    with pytest.raises(shoal.NotFound):
        c.cancel("t0000000000nosuchid")


def test_cancel_of_a_finished_task_is_a_conflict(c):
    rec = c.wait(c.submit("true").id, timeout=120)
    with pytest.raises(shoal.Conflict) as e:
        c.cancel(rec.id)
    assert "already ended succeeded" in str(e.value)


@pytest.mark.timeout(240)
def test_cancel_unstarted_only_leaves_a_started_task_alone(c, tmp_path):
    never_fits = c.submit("true", cpus=1000)  # no node has that many: it stays queued
    assert c.cancel(never_fits.id, unstarted_only=True).state.value == "cancelled"
    assert c.get(never_fits.id).reason == "cancelled before it started"

    mark = tmp_path / "go-on"
    rec = c.submit(f"echo started; n=0; while [ ! -e {mark} ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n+1)); done")
    for chunk in c.logs(rec.id, follow=True):
        if chunk:
            break  # its process runs
    assert c.cancel(rec.id, unstarted_only=True).state.value == "running"
    mark.touch()
    done = c.wait(rec.id, timeout=180)
    assert done.state.value == "succeeded" and not done.cancel_requested


def test_submit_many_returns_ids_in_order(c):
    job = uniq("batch")
    specs = [{"command": ["sh", "-c", f"echo {i}"], "name": f"n{i}"} for i in range(12)]
    ids = c.submit_many(specs, job=job)
    assert len(ids) == 12 and len(set(ids)) == 12
    assert ids == sorted(ids)  # ids are time-ordered
    recs = c.wait(ids, timeout=180)
    assert [r.id for r in recs] == ids
    for i, r in enumerate(recs):
        assert r.spec.name == f"n{i}"
        assert r.spec.job == job
        assert r.state.value == "succeeded" and r.stdout_tail == f"{i}\n"


def test_submit_many_in_chunks_keeps_the_order(c):
    job = uniq("chunks")
    ids = c.submit_many([{"command": ["echo", str(i)]} for i in range(7)], job=job, chunk=3)
    recs = c.wait(ids, timeout=180)
    assert [r.stdout_tail for r in recs] == [f"{i}\n" for i in range(7)]


# -- list -------------------------------------------------------------------------------

def test_list_filters_and_pages_newest_first(c, apis):
    job = uniq("list")
    t1, t2 = uniq("team"), uniq("team")
    specs = ([{"command": ["true"], "name": "alpha", "team": t1} for _ in range(3)]
             + [{"command": ["true"], "name": "beta", "team": t2} for _ in range(2)]
             + [{"command": "exit 1", "name": "gamma", "team": t1}])
    ids = c.submit_many(specs, job=job)
    recs = {r.id: r for r in c.wait(ids, timeout=180)}

    everything = c.list(job=job)
    assert [r.id for r in everything] == list(reversed(ids))  # newest first
    assert [r.id for r in c.list(job=job, name="alpha")] == list(reversed(ids[:3]))
    assert [r.id for r in c.list(job=job, team=t2)] == list(reversed(ids[3:5]))
    assert [r.id for r in c.list(team=t1)] == [ids[5], *reversed(ids[:3])]
    assert [r.id for r in c.list(job=job, state="failed")] == [ids[5]]
    assert [r.id for r in c.list(job=job, state="succeeded")] == list(reversed(ids[:5]))
    assert c.list(job=job, state="queued") == []
    assert c.list(job=uniq("no-such-job")) == []
    for node in apis:
        want = [tid for tid in reversed(ids) if recs[tid].node == node]
        assert [r.id for r in c.list(job=job, node=node)] == want

    # pages of 4, then 2, then none: together the whole list, in order
    page1 = c.list(job=job, limit=4)
    page2 = c.list(job=job, limit=4, before=page1[-1].id)
    page3 = c.list(job=job, limit=4, before=page2[-1].id)
    assert len(page1) == 4 and len(page2) == 2 and page3 == []
    assert [r.id for r in page1 + page2] == list(reversed(ids))

    # the raw API hands back the cursor for the next page
    body = httpx.get(c.address + "/v1/tasks", params={"job": job, "limit": 4}).json()
    assert [t["id"] for t in body["tasks"]] == list(reversed(ids))[:4]
    assert body["next"] == ids[2]
    body = httpx.get(c.address + "/v1/tasks", params={"job": job, "limit": 4, "before": body["next"]}).json()
    assert [t["id"] for t in body["tasks"]] == [ids[1], ids[0]]


def test_list_with_a_bad_state_or_limit_is_invalid(c):
    with pytest.raises(shoal.InvalidSpec) as e:
        c.list(state="finished")
    assert "state" in str(e.value) and "succeeded" in str(e.value)
    with pytest.raises(shoal.InvalidSpec) as e:
        c.list(limit=0)
    assert "limit" in str(e.value) and "1 to 10000" in str(e.value)


# -- events -----------------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_events_stream_delivers_running_and_final_states(c):
    job = uniq("events")
    other = c.submit("true", job=uniq("other-job"))  # must not show up in our stream
    stream = c.events(job=job)
    try:
        hello = next(stream)  # the stream is open (and its start revision fixed) from here on
        assert hello["type"] == "hello" and hello["revision"] > 0
        rec = c.submit(["sh", "-c", "sleep 0.3; echo done"], job=job)
        states = []
        for ev in stream:
            if ev["type"] != "task":
                continue
            assert ev["task"]["spec"]["job"] == job
            assert ev["task"]["id"] == rec.id
            assert ev["revision"] > hello["revision"]
            states.append(ev["task"]["state"])
            if ev["task"]["state"] in ("succeeded", "failed", "cancelled"):
                final = ev["task"]
                break
    finally:
        stream.close()
    assert states[0] == "queued"
    assert "running" in states
    assert states[-1] == "succeeded"
    assert states.index("running") < len(states) - 1
    assert final["stdout_tail"] == "done\n" and final["exit_code"] == 0
    c.wait(other.id, timeout=120)


@pytest.mark.timeout(180)
def test_events_since_a_revision_replay_one_tasks_history(c):
    stream = c.events(task="t0000000000nosuchid")
    try:
        hello = next(stream)
        assert hello["type"] == "hello"
    finally:
        stream.close()
    rec = c.submit("true")
    c.wait(rec.id, timeout=120)  # it ended before the stream below opens
    stream = c.events(task=rec.id, since=hello["revision"] + 1)
    try:
        seen = []
        for ev in stream:
            if ev["type"] == "task":
                assert ev["task"]["id"] == rec.id
                seen.append(ev["task"]["state"])
                if ev["task"]["state"] == "succeeded":
                    break
    finally:
        stream.close()
    assert seen[0] == "queued" and "running" in seen and seen[-1] == "succeeded"


# -- OpenAPI, health, nodes ---------------------------------------------------------------

def test_openapi_document_lists_the_routes(c):
    resp = httpx.get(c.address + "/openapi.json", timeout=30)
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["info"]["title"] == "shoal" and doc["info"]["version"] == shoal.__version__
    paths = doc["paths"]
    for path, method in [("/v1/tasks", "post"), ("/v1/tasks", "get"), ("/v1/tasks/batch", "post"),
                         ("/v1/tasks/{task_id}", "get"), ("/v1/tasks/{task_id}/cancel", "post"),
                         ("/v1/tasks/{task_id}/logs", "get"), ("/v1/events", "get"), ("/v1/wait", "post"),
                         ("/v1/nodes", "get"), ("/v1/health", "get"),
                         ("/v1/tasks/{task_id}/result", "get"), ("/v1/tasks/{task_id}/result", "delete")]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from the OpenAPI document"
    body = paths["/v1/tasks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"command", "function", "depends_on", "memory"} <= set(body["properties"])  # one of command/function


def test_health_of_every_node(c, apis):
    for node, api in apis.items():
        resp = httpx.get(api + "/v1/health", timeout=30)
        assert resp.status_code == 200
        h = resp.json()
        assert h["ok"] is True and h["etcd"] is True
        assert h["node"] == node and h["api"] == api and h["version"] == shoal.__version__
    assert c.health()["node"] == "node-1"
    # exactly one node is the reaper (the election may take a moment after start-up)
    deadline = time.monotonic() + 60
    while True:
        reapers = [n for n, api in apis.items() if httpx.get(api + "/v1/health", timeout=30).json()["reaper"]]
        if len(reapers) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(reapers) == 1


def test_nodes_lists_both(c, apis):
    nodes = {n["id"]: n for n in c.nodes()}
    assert set(nodes) == set(apis)
    for nid, n in nodes.items():
        assert n["api"] == apis[nid] and n["pid"] > 0 and n["cpus"] > 0 and n["slots"] >= 1
        assert n["heartbeat_age_s"] >= 0


# -- logs -------------------------------------------------------------------------------

@pytest.mark.timeout(240)
def test_full_logs_of_a_task_on_another_node_are_served_by_any_node(c, apis):
    expected = "".join(f"{i}\n" for i in range(1, 20001))
    rec = c.wait(c.submit("seq 1 20000; echo to-stderr >&2").id, timeout=120)
    assert rec.state.value == "succeeded"
    assert rec.stdout_bytes == len(expected) > 4096
    assert len(rec.stdout_tail.encode()) == 4096 and expected.endswith(rec.stdout_tail)
    holder = rec.node
    other = next(n for n in apis if n != holder)
    with shoal.connect(apis[other]) as via_other:
        assert via_other.health()["node"] == other
        assert "".join(via_other.logs(rec.id)) == expected
        assert "".join(via_other.logs(rec.id, stream="stderr")) == "to-stderr\n"
        assert "".join(via_other.logs(rec.id, attempt=1)) == expected
    with shoal.connect(apis[holder]) as via_holder:
        assert "".join(via_holder.logs(rec.id)) == expected
    resp = httpx.get(apis[other] + f"/v1/tasks/{rec.id}/logs", timeout=60)
    assert resp.status_code == 200 and resp.text == expected
    assert resp.headers.get("x-shoal-log-source") == f"node {holder}"


@pytest.mark.timeout(240)
def test_follow_logs_stream_while_running_and_end_with_the_task(c, tmp_path):
    mark = tmp_path / "go-on"
    # five lines, then wait (up to 2 minutes) for the test to say it saw output, then five more
    script = (f"for i in 1 2 3 4 5; do echo line$i; sleep 0.1; done; n=0; "
              f"while [ ! -e {mark} ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n+1)); done; "
              f"for i in 6 7 8 9 10; do echo line$i; sleep 0.1; done")
    rec = c.submit(script)
    text = ""
    for chunk in c.logs(rec.id, follow=True):
        if not text and chunk:
            # output arrives while the task still runs: it cannot have ended yet
            assert c.get(rec.id).state.value == "running"
            mark.touch()
        text += chunk
    assert text == "".join(f"line{i}\n" for i in range(1, 11))
    # the stream ended because the task did
    assert c.get(rec.id).state.value == "succeeded"


@pytest.mark.timeout(120)
def test_follow_logs_of_a_finished_task_returns_at_once(c):
    rec = c.wait(c.submit("echo a; echo b").id, timeout=120)
    assert "".join(c.logs(rec.id, follow=True)) == "a\nb\n"


def test_logs_of_an_unknown_id_raise_not_found(c):
    with pytest.raises(shoal.NotFound) as e:
        list(c.logs("t0000000000nosuchid"))
    assert "t0000000000nosuchid" in str(e.value)
    with pytest.raises(shoal.NotFound):
        list(c.logs("t0000000000nosuchid", follow=True))


# -- bad input ----------------------------------------------------------------------------

BAD = [
    pytest.param(dict(command="echo hi", colour="red"), ["colour", "unknown field", "command"], id="unknown-field"),
    pytest.param(dict(command=[]), ["command", "is empty", "argv list"], id="empty-argv"),
    pytest.param(dict(command=""), ["command", "is empty", "shell string"], id="empty-string"),
    pytest.param(dict(command="true", memory="2 gigs"), ["memory", "2 gigs", "512M"], id="memory-2-gigs"),
    pytest.param(dict(command="true", cpus=-1), ["cpus", "-1", "0 or more"], id="negative-cpus"),
    pytest.param(dict(command="true", timeout=0), ["timeout", "above 0"], id="timeout-0"),
    pytest.param(dict(command="true", timeout="5"), ["timeout", "'5'", "number of seconds"], id="timeout-string"),
    pytest.param(dict(command="true", env={"A": 1}), ["env", "A", "string"], id="env-not-string"),
    pytest.param(dict(command="true", retries=MAX_RETRIES + 2),
                 ["retries", str(MAX_RETRIES + 2), f"cap of {MAX_RETRIES}"], id="retries-over-cap"),
]


@pytest.mark.parametrize("fields,words", BAD)
def test_bad_input_names_the_field_and_queues_nothing(c, fields, words):
    fields = dict(fields)
    before = total_tasks(c)
    command = fields.pop("command")
    with pytest.raises(shoal.InvalidSpec) as e:
        c.submit(command, **fields)
    message = str(e.value)
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"
    assert e.value.problems and all(isinstance(p, str) for p in e.value.problems)
    assert e.value.problems[0].startswith(words[0])
    # the same through the raw API: 422 and the same kind of message
    resp = httpx.post(c.address + "/v1/tasks", json=dict(fields, command=command), timeout=30)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["error"] == "InvalidSpec"
    assert body["problems"] and body["problems"][0].startswith(words[0])
    for w in words:
        assert w in body["message"]
    # and in a batch
    with pytest.raises(shoal.InvalidSpec) as e:
        c.submit_many([dict(fields, command=command)])
    assert e.value.problems[0].startswith(f"tasks[0].{words[0]}")
    assert total_tasks(c) == before


def test_retries_over_the_cluster_cap_are_refused_by_the_server(c):
    """The SDK cannot know the cluster's cap: the server refuses (raw HTTP and SDK alike)."""
    before = total_tasks(c)
    resp = httpx.post(c.address + "/v1/tasks", json={"command": "true", "retries": 5}, timeout=30)
    assert resp.status_code == 422
    assert resp.json()["problems"] == [f"retries: 5 is above this cluster's cap of {MAX_RETRIES}"]
    resp = httpx.post(c.address + "/v1/tasks/batch", json={"tasks": [{"command": "true"},
                                                                       {"command": "true", "retries": 5}]})
    assert resp.status_code == 422
    assert resp.json()["problems"] == [f"tasks[1].retries: 5 is above this cluster's cap of {MAX_RETRIES}"]
    with pytest.raises(shoal.InvalidSpec) as e:
        c.submit("true", retries=5)
    assert e.value.problems == [f"retries: 5 is above this cluster's cap of {MAX_RETRIES}"]
    with pytest.raises(shoal.InvalidSpec) as e:
        c.submit_many([{"command": "true"}, {"command": "true", "retries": 5}])
    assert "tasks[1].retries" in str(e.value)
    assert total_tasks(c) == before
    # at the cap is fine
    rec = c.wait(c.submit("true", retries=MAX_RETRIES).id, timeout=120)
    assert rec.state.value == "succeeded" and rec.spec.retries == MAX_RETRIES


def test_a_refused_chunk_names_the_index_in_the_whole_list(c):
    """submit_many sends chunks; a problem only the server sees (the retries cap) is
    reported with the task's index in the caller's list, not within its chunk."""
    job = uniq("chunk-cap")
    specs = [{"command": ["true"]}, {"command": ["true"]}, {"command": ["true"]},
             {"command": ["true"], "retries": MAX_RETRIES + 1}, {"command": ["true"]}]
    with pytest.raises(shoal.InvalidSpec) as e:
        c.submit_many(specs, job=job, chunk=2)
    assert e.value.problems[0] == f"tasks[3].retries: {MAX_RETRIES + 1} is above this cluster's cap of {MAX_RETRIES}"
    assert "tasks[0] to tasks[1] were already submitted" in e.value.problems[1]
    # each chunk is all-or-nothing: the first one went in, the refused one did not
    submitted = c.list(job=job)
    assert len(submitted) == 2
    assert sorted(e.value.submitted_ids) == sorted(r.id for r in submitted)
    c.wait([r.id for r in submitted], timeout=120)


def test_a_single_task_batch_still_names_its_index(c):
    resp = httpx.post(c.address + "/v1/tasks/batch", json={"tasks": [{"command": "true", "cpus": -1}]}, timeout=30)
    assert resp.status_code == 422
    assert resp.json()["problems"][0].startswith("tasks[0].cpus")


def test_a_batch_reports_every_bad_task_with_its_index(c):
    before = total_tasks(c)
    specs = [{"command": "true"}, {"command": "true", "memory": "2 gigs"}, {"command": ["echo", "ok"]},
             {"command": "true", "cpus": -2}, {"command": "true"}]
    with pytest.raises(shoal.InvalidSpec) as e:
        c.submit_many(specs)
    problems = e.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("tasks[1].memory") and "2 gigs" in problems[0] and "512M" in problems[0]
    assert problems[1].startswith("tasks[3].cpus") and "0 or more" in problems[1]
    resp = httpx.post(c.address + "/v1/tasks/batch", json={"tasks": specs}, timeout=30)
    assert resp.status_code == 422
    assert resp.json()["problems"] == problems
    assert total_tasks(c) == before


def test_raw_http_bad_json_fields_get_422_with_problems(c):
    before = total_tasks(c)
    resp = httpx.post(c.address + "/v1/tasks", json={"command": 5, "cpus": "lots", "env": ["A=1"]}, timeout=30)
    assert resp.status_code == 422
    body = resp.json()
    assert body["error"] == "InvalidSpec" and isinstance(body["problems"], list)
    fields = [p.split(":")[0] for p in body["problems"]]
    assert sorted(fields) == ["command", "cpus", "env"]
    assert any("argv list" in p for p in body["problems"])
    # not a JSON object at all
    for content in (b"[1, 2]", b'"echo hi"', b"{not json"):
        resp = httpx.post(c.address + "/v1/tasks", content=content,
                          headers={"content-type": "application/json"}, timeout=30)
        assert resp.status_code == 422, content
        assert resp.json()["problems"], content
    resp = httpx.post(c.address + "/v1/tasks/batch", json={"tasks": []}, timeout=30)
    assert resp.status_code == 422 and "tasks" in resp.json()["problems"][0]
    assert total_tasks(c) == before


def test_a_value_over_etcds_request_limit_is_too_large(c):
    before = total_tasks(c)
    with pytest.raises(shoal.TooLarge) as e:
        c.submit("true", env={"BIG": "x" * (2 << 20)})
    assert "bytes" in str(e.value)
    with pytest.raises(shoal.TooLarge):
        c.submit_many([{"command": "true"}, {"command": "true", "env": {"BIG": "x" * (2 << 20)}}])
    assert total_tasks(c) == before


# -- async client -------------------------------------------------------------------------

async def test_async_client_submits_and_waits(cluster):
    async with shoal.aconnect(cluster.address) as ac:
        rec = await ac.submit(["echo", "async"])
        done = await ac.wait(rec.id, timeout=120)
        assert done.state.value == "succeeded" and done.stdout_tail == "async\n"
        seen = [r.id async for r in ac.as_finished([rec.id], timeout=60)]
        assert seen == [rec.id]
        text = "".join([t async for t in ac.logs(rec.id)])
        assert text == "async\n"


# -- embedded cluster ---------------------------------------------------------------------

@pytest.mark.timeout(240)
def test_connect_without_a_cluster_starts_an_embedded_one_and_stops_it(tmp_path, monkeypatch):
    home = tmp_path / "empty-home"
    home.mkdir()
    monkeypatch.setenv("SHOAL_HOME", str(home))
    monkeypatch.delenv("SHOAL_ADDRESS", raising=False)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    c = shoal.connect()
    try:
        started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        assert started, "connect() started no processes"
        rec = c.wait(c.submit("echo embedded").id, timeout=120)
        assert rec.state.value == "succeeded" and rec.stdout_tail == "embedded\n"
        node_pids = {n["pid"] for n in c.nodes()}
        assert node_pids <= {p.pid for p in started}
    finally:
        c.close()
    c.close()  # closing twice is harmless
    for p in started:
        assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    assert list(home.iterdir()) == []  # nothing was put in SHOAL_HOME
