"""No node a client depends on: the SDK and the CLI know every node and move to another
when the one they talk to dies (requests sent again, streams resumed without repeating
an item), submissions carry client-chosen ids so a retried one never creates a task
twice, and a client that cannot reach any node says so and exits at once."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest

import shoal
from shoal.client import AsyncClient
from shoal.client.failover import NodeRing
from shoal.model import new_ids

# -- helpers ---------------------------------------------------------------------------


def shoal_env(home: Path | None = None) -> dict:
    env = dict(os.environ)
    env.pop("SHOAL_ADDRESS", None)
    if home is not None:
        env["SHOAL_HOME"] = str(home)
    env["COLUMNS"] = "200"
    return env


def cli(home: Path | None, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`shoal ARGS` as a subprocess; a hang fails the test through `timeout`."""
    return subprocess.run([sys.executable, "-m", "shoal", *args], env=shoal_env(home), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (got := pred()):
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return got


class Proxy:
    """A TCP proxy in front of one node, standing for that node as the client sees it:
    `cut_answers` makes it pass requests on but drop the connection instead of answering
    (the node did the work, then died); `kill()` drops every connection and stops
    listening (the node is gone)."""

    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.cut_answers = False
        self.cut = 0                      # answers dropped
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.front = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self.front

    async def _serve(self, reader, writer):
        self._tasks.add(asyncio.current_task())
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src, dst, answers: bool):
            try:
                while data := await src.read(65536):
                    if answers and self.cut_answers:
                        self.cut += 1
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                if answers:
                    dst.transport.abort()   # the node hung up: so does the proxy

        try:
            await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
                self._writers.discard(w)
            self._tasks.discard(asyncio.current_task())

    async def kill(self) -> None:
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await self._server.wait_closed()

    async def close(self) -> None:
        await self.kill()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
def two_nodes(make_cluster):
    cluster = make_cluster(nodes=2, lease_ttl_s=2)
    return [n["api"] for n in cluster.state()["nodes"]]


@pytest.fixture
async def proxied(two_nodes):
    """(proxy in front of node-1, an AsyncClient that knows the proxy first, node-2 second)."""
    proxy = Proxy(two_nodes[0])
    front = await proxy.start()
    client = AsyncClient([front, two_nodes[1]])
    try:
        await client.open()
        yield proxy, client
    finally:
        await client.aclose()
        await proxy.close()


# -- which node next (pure) -----------------------------------------------------------------

def test_ring_moves_past_failed_nodes_and_learns_new_ones():
    ring = NodeRing("http://a:1, http://b:2/,http://a:1")
    assert ring.addresses == ["http://a:1", "http://b:2"]
    ring.learn(["http://b:2", "http://c:3"])
    assert ring.current == "http://a:1" and ring.addresses[-1] == "http://c:3"
    ring.failed("http://a:1")
    assert ring.current == "http://b:2"
    ring.failed("http://b:2")
    assert ring.current == "http://c:3"
    ring.failed("http://c:3")            # all failed once: a new round, in order
    assert ring.current == "http://a:1"
    ring.failed("http://b:2")            # a stale report about a node not in use moves nothing
    assert ring.current == "http://a:1"
    with pytest.raises(ValueError):
        NodeRing(" , ")


# -- idempotent submission (the API) --------------------------------------------------------

def test_submit_with_the_same_ids_twice_creates_the_tasks_once(two_nodes):
    api = two_nodes[0]
    job = f"idem-{uuid.uuid4().hex[:8]}"
    ids = new_ids(3)
    body = {"tasks": [{"command": ["true"]}] * 3, "job": job, "ids": ids}
    first = httpx.post(api + "/v1/tasks/batch", json=body, timeout=30)
    again = httpx.post(two_nodes[1] + "/v1/tasks/batch", json=body, timeout=30)
    assert first.status_code == again.status_code == 201
    assert first.json()["ids"] == again.json()["ids"] == ids
    listed = httpx.get(api + "/v1/tasks", params={"job": job}, timeout=30).json()["tasks"]
    assert sorted(t["id"] for t in listed) == sorted(ids)

    one = new_ids(1)[0]
    a = httpx.post(api + "/v1/tasks", params={"id": one}, json={"command": "true"}, timeout=30)
    b = httpx.post(api + "/v1/tasks", params={"id": one}, json={"command": "true"}, timeout=30)
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] == b.json()["id"] == one and b.json()["submitted_at"] == a.json()["submitted_at"]

    # the same id for another spec: a conflict naming it, and the task is left as it was
    other = httpx.post(api + "/v1/tasks", params={"id": one}, json={"command": "false"}, timeout=30)
    assert other.status_code == 409 and one in other.json()["message"]
    assert httpx.get(f"{api}/v1/tasks/{one}", timeout=30).json()["spec"]["command"] == "true"

    # a dependent task resent: the same task; its id for another spec: a conflict
    dep = new_ids(1)[0]
    for _ in range(2):
        r = httpx.post(api + "/v1/tasks", params={"id": dep}, json={"command": "true", "depends_on": [ids[0]]},
                       timeout=30)
        assert r.status_code == 201 and r.json()["id"] == dep
    r = httpx.post(api + "/v1/tasks", params={"id": dep}, json={"command": "false", "depends_on": [ids[0]]},
                   timeout=30)
    assert r.status_code == 409 and dep in r.json()["message"]


def test_ids_of_the_wrong_form_are_refused_naming_the_field(two_nodes):
    api = two_nodes[0]
    good = new_ids(1)[0]
    r = httpx.post(api + "/v1/tasks/batch", timeout=30, json={
        "tasks": [{"command": "true"}] * 3, "ids": ["nope", good, good]})
    assert r.status_code == 422
    problems = r.json()["problems"]
    assert any(p.startswith("ids[0]: 'nope' is not a task id") for p in problems), problems
    assert any(p.startswith("ids[2]:") and "repeats ids[1]" in p for p in problems), problems
    r = httpx.post(api + "/v1/tasks/batch", timeout=30, json={"tasks": [{"command": "true"}] * 2, "ids": [good]})
    assert r.status_code == 422 and r.json()["problems"][0].startswith("ids: 1 ids for 2 tasks")
    r = httpx.post(api + "/v1/tasks", params={"id": "t-x"}, json={"command": "true"}, timeout=30)
    assert r.status_code == 422 and r.json()["problems"][0].startswith("id: 't-x' is not a task id")
    assert httpx.get(f"{api}/v1/tasks/{good}", timeout=30).status_code == 404   # nothing was written


# -- the SDK moves to another node ------------------------------------------------------------

async def test_submit_retried_after_the_node_died_mid_request_does_not_duplicate(proxied):
    proxy, c = proxied
    job = f"cut-{uuid.uuid4().hex[:8]}"
    proxy.cut_answers = True     # node-1 carries out the request, then the answer never comes
    ids = await c.submit_many([{"command": ["true"]} for _ in range(20)], job=job)
    one = await c.submit(["true"], job=job)
    assert proxy.cut >= 1, "the first node never got the request"
    assert c.address != proxy.front and len(set(ids)) == 20
    listed = await c.list(job=job, limit=1000)
    assert sorted(r.id for r in listed) == sorted([*ids, one.id])   # each task once
    done = await c.wait(ids)
    assert [r.state.value for r in done] == ["succeeded"] * 20


async def test_as_finished_resumes_on_another_node_without_repeats(proxied, tmp_path):
    proxy, c = proxied
    gate = tmp_path / "gate"
    quick = await c.submit_many([{"command": ["true"]} for _ in range(5)])
    await c.wait(quick)
    gated = await c.submit_many([{"command": f"while [ ! -e {gate} ]; do sleep 0.05; done"} for _ in range(5)])
    seen = []
    async with contextlib.aclosing(c.as_finished(quick + gated)) as finished:
        async for rec in finished:
            seen.append(rec.id)
            if len(seen) == len(quick):          # the ones done are in; now node-1 goes away
                await proxy.kill()
                gate.touch()
    assert sorted(seen) == sorted(quick + gated) and len(seen) == 10
    assert c.address != proxy.front   # it finished through node-2


async def test_events_resume_on_another_node_without_repeats(proxied):
    proxy, c = proxied
    job = f"ev-{uuid.uuid4().hex[:8]}"
    got: list[tuple] = []
    hellos = 0

    async def follow():
        nonlocal hellos
        async for ev in c.events(job=job, state="succeeded"):
            if ev["type"] == "hello":
                hellos += 1
                started.set()
            elif ev["type"] == "task":
                got.append((ev["revision"], ev["task"]["id"]))
                if len(got) == 6:
                    return

    started = asyncio.Event()
    watcher = asyncio.create_task(follow())
    try:
        await asyncio.wait_for(started.wait(), 30)
        first = await c.submit_many([{"command": ["true"]} for _ in range(3)], job=job)
        await c.wait(first)
        await asyncio.sleep(0.3)   # let their events reach the stream before node-1 goes
        await proxy.kill()
        second = await c.submit_many([{"command": ["true"]} for _ in range(3)], job=job)
        await asyncio.wait_for(watcher, 60)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert hellos == 1
    assert sorted(tid for _, tid in got) == sorted(first + second)


async def test_logs_follow_resumes_on_another_node_after_what_was_given(proxied, tmp_path):
    proxy, c = proxied
    gate = tmp_path / "gate"
    rec = await c.submit(f"echo first; while [ ! -e {gate} ]; do sleep 0.05; done; echo second")
    text = ""
    async with contextlib.aclosing(c.logs(rec.id, follow=True)) as chunks:
        async for chunk in chunks:
            text += chunk
            if text == "first\n":
                await proxy.kill()
                gate.touch()
    assert text == "first\nsecond\n"


# -- the CLI after a node died, and when none answers ------------------------------------------

def test_cli_works_through_the_other_nodes_and_says_when_none_answers(make_cluster):
    cluster = make_cluster(nodes=2, lease_ttl_s=2)
    cluster.kill_node("node-1")
    nodes = cli(cluster.home, "nodes", "-o", "json")
    assert nodes.returncode == 0, nodes.stderr
    assert "node-2" in nodes.stdout
    ls = cli(cluster.home, "ls")
    assert ls.returncode == 0, ls.stderr
    dead_api = cluster.state()["nodes"][1]["api"]
    cluster.kill_node("node-2")
    p = cli(cluster.home, "nodes")
    assert p.returncode == 1 and p.stderr.startswith("Error: ") and "Traceback" not in p.stderr
    assert "no live node" in p.stderr and dead_api in p.stderr and "no shoal cluster is running" not in p.stderr


@pytest.mark.parametrize("script", [
    "import shoal\nshoal.connect('http://127.0.0.1:1')\n",                        # the error, uncaught
    "import shoal\ntry:\n    shoal.connect('http://127.0.0.1:1')\nexcept shoal.ShoalError as e:\n    print(e)\n",
])
def test_a_script_that_cannot_connect_prints_the_error_and_exits(script, tmp_path):
    p = subprocess.run([sys.executable, "-c", script], env=shoal_env(tmp_path), capture_output=True, text=True,
                       timeout=60)
    assert "cannot reach shoal at http://127.0.0.1:1" in p.stdout + p.stderr


def test_shoal_nodes_at_a_wrong_address_prints_the_error_and_exits(tmp_path):
    p = cli(tmp_path, "nodes", "--address", "http://127.0.0.1:1", timeout=60)
    assert p.returncode == 1 and p.stderr.startswith("Error: cannot reach shoal at http://127.0.0.1:1")


def test_a_client_left_open_does_not_hang_the_script_at_exit(make_cluster):
    cluster = make_cluster(nodes=1)
    script = textwrap.dedent(f"""
        import shoal
        c = shoal.connect({cluster.address!r})      # never closed
        print(len(c.nodes()))
        c.get("t0000000000000000000")               # and the script ends with an error
    """)
    p = subprocess.run([sys.executable, "-c", script], env=shoal_env(), capture_output=True, text=True, timeout=60)
    assert p.stdout == "1\n" and "NotFound" in p.stderr and p.returncode == 1


# -- the node the CLI talks to is SIGKILLed in the middle of `shoal map` ------------------------------

def test_map_finishes_when_its_node_is_killed(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, lease_ttl_s=2)
    effects = tmp_path / "effects"
    job = f"kill-{uuid.uuid4().hex[:8]}"
    inputs = [str(i) for i in range(300)]
    argv = [sys.executable, "-m", "shoal", "map", "--job", job,
            f"echo {{}} >> {effects}; sleep 0.1; echo {{}}", ":::", *inputs]
    with subprocess.Popen(argv, env=shoal_env(cluster.home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, stdin=subprocess.DEVNULL) as proc:
        try:
            wait_for(lambda: effects.exists() and len(effects.read_text().splitlines()) >= 30, 120,
                     "the first tasks to run")
            cluster.kill_node("node-1")   # the first node of cluster.json: the one the CLI talks to
            out, err = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert sorted(out.split()) == sorted(inputs)

    assert cli(cluster.home, "nodes").returncode == 0
    ls = cli(cluster.home, "ls", "--job", job, "--limit", "1000", "-o", "json")
    assert ls.returncode == 0, ls.stderr
    with shoal.connect(cluster.addresses()) as c:
        recs = c.list(job=job, limit=1000)
    assert len(recs) == len({r.id for r in recs}) == 300            # no task recorded twice
    assert all(r.state.value == "succeeded" for r in recs)
    by_input = {r.spec.command.split("echo ")[1].split(" ")[0]: r for r in recs}
    assert sorted(by_input) == sorted(inputs)
    counts = collections.Counter(effects.read_text().split())
    for i in inputs:
        lost = sum(1 for a in by_input[i].attempts if a.node == "node-1" and a.state.value != "succeeded")
        assert 1 <= counts[i] <= 1 + lost, (i, counts[i], by_input[i].attempts)
