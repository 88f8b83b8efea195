"""Python function tasks on real clusters: @shoal.task, futures and DAGs built by passing
them, warm workers, big results kept on their node, bad input refused at the door,
timeouts, memory limits, progress, and a node killed under a function DAG.

The functions below live in this test module, which the nodes cannot import (pytest put
tests/ on this process's sys.path only), so each is shipped with the task by value:
py_modules=[this module]. One test builds a module the nodes cannot see and checks the
error a user gets without py_modules, and that py_modules or working_dir fix it."""
from __future__ import annotations

import gc
import hashlib
import importlib
import os
import random
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path

import psutil
import pytest

import shoal
from shoal.errors import InvalidSpec, NotFound, ShoalError, TaskFailed
from shoal.cluster.local import LocalCluster
from shoal.model import TaskRecord

HERE = sys.modules[__name__]
WAIT_S = 180  # generous: a loaded 2-core machine runs this


def remote(**options):
    """@shoal.task shipping this module with each function (the nodes cannot import it)."""
    return shoal.task(py_modules=[HERE], **options)


# -- the functions the tests run --------------------------------------------------------

@remote()
def square(x):
    return x * x


@remote()
def add(a, b):
    return a + b


@remote()
def total(xs):
    return sum(xs)


@remote()
def whoami():
    return os.getpid()


@remote()
def where():
    return os.getcwd()


@remote()
def nap_then(value, seconds):
    time.sleep(seconds)
    return value


class Oops(Exception):
    pass


@remote()
def fail_with(message):
    raise ValueError(message)


@remote()
def fail_custom(message):
    raise Oops(message)


@remote()
def give_lock():
    return threading.Lock()


@remote()
def shout(word):
    print(f"hello from the worker: {word}")
    print("and to stderr", file=sys.stderr)
    return word.upper()


@remote(retries=1, backoff=0.1)
def die_once(marker):
    """Kill its own worker the first time; succeed once the marker exists."""
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    return "second time lucky"


def _pattern(n, seed):
    return random.Random(seed).randbytes(n)


@remote()
def blob(n, seed):
    return _pattern(n, seed)


@remote()
def digest(data):
    return len(data), hashlib.sha256(data).hexdigest()


@remote(timeout=2)
def overslept(pidfile):
    Path(pidfile).write_text(str(os.getpid()))
    time.sleep(60)
    return "woke up"


@remote(memory="100M")
def hog(mb, hold_s):
    chunks = [bytes([i % 251 + 1]) * (1 << 20) for i in range(mb)]  # every page touched
    time.sleep(hold_s)
    return len(chunks)


@remote()
def halfway(release_file):
    shoal.progress(0.5, "half")
    deadline = time.time() + 60
    while not os.path.exists(release_file) and time.time() < deadline:
        time.sleep(0.05)
    return "done"


@remote(retries=3)
def seed(x, delay):
    time.sleep(delay)
    return x


@remote(retries=3)
def plus(a, b, delay):
    time.sleep(delay)
    return a + b


# -- fixtures -----------------------------------------------------------------------------

NODE_A = ["--cpus", "2", "--slots", "2", "--labels", "side=a"]
NODE_B = ["--cpus", "2", "--slots", "2", "--labels", "side=b"]
_SHARED_NODE_PIDS: set[int] = set()


def _tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """conftest's check, except for the shared cluster's processes: its nodes keep warm
    workers between tests on purpose; the `shared` fixture checks they all go with it."""
    def mine():
        shared = {p.pid for n in _SHARED_NODE_PIDS for p in _tree(n)}
        return [p for p in psutil.Process().children(recursive=True) if p.pid not in shared]
    before = {p.pid for p in mine()}
    yield
    deadline = time.monotonic() + 5
    while True:
        left = [p for p in _alive(mine()) if p.pid not in before]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for p in left:
        p.kill()
    assert not left, f"test left processes running: {[(p.pid, p.cmdline()[:3]) for p in left]}"


@pytest.fixture(scope="module")
def shared():
    """Two nodes of 2 slots each, node-1 labelled side=a and node-2 side=b."""
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="shoal-fn-")), nodes=1, node_args=NODE_A)
    try:
        cluster.up()
        cluster.add_node("node-2", node_args=NODE_B)
        _SHARED_NODE_PIDS.update(n["pid"] for n in cluster.state()["nodes"])
        yield cluster
    finally:
        procs = [p for n in _SHARED_NODE_PIDS for p in _tree(n)]
        cluster.destroy()
        _SHARED_NODE_PIDS.clear()
        deadline = time.monotonic() + 10
        while _alive(procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = _alive(procs)
        for p in left:
            p.kill()
        assert not left, f"the shared cluster left processes running: {[(p.pid, p.cmdline()[:4]) for p in left]}"


@pytest.fixture(scope="module")
def c(shared):
    with shoal.connect(shared.address) as client:
        yield client


def node_api(cluster: LocalCluster, node_id: str) -> str:
    return next(n["api"] for n in cluster.state()["nodes"] if n["id"] == node_id)


def count_tasks(client) -> int:
    return len(client.list(limit=10000))


# -- 1. submit, map, gather, as_completed, errors -------------------------------------------

@pytest.mark.cluster
def test_a_function_runs_in_the_callers_directory_or_says_the_node_lacks_it(c, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert where.submit().result(timeout=WAIT_S) == str(tmp_path)
    f = where.options_(cwd="/nonexistent/shoal-dir").submit()
    with pytest.raises(shoal.TaskFailed, match="cwd /nonexistent/shoal-dir does not exist on node node-"):
        f.result(timeout=WAIT_S)


@pytest.mark.cluster
def test_submit_returns_the_value_and_a_direct_call_runs_here(c):
    f = square.submit(7)
    assert f.result(timeout=WAIT_S) == 49
    assert f.done() and f.exception() is None
    rec = c.get(f.id)
    assert rec.state.value == "succeeded" and rec.spec.function_name.endswith(".square")
    # a pid from a worker on a node, not ours
    assert whoami.submit().result(timeout=WAIT_S) != os.getpid()
    # the decorated function is still a plain function when called
    assert square(5) == 25
    assert whoami() == os.getpid()
    # Client.wait accepts futures
    a, b = add.submit(1, 2), add.submit(a=10, b=20)
    assert [r.state.value for r in c.wait([a, b], timeout=WAIT_S)] == ["succeeded", "succeeded"]
    assert (a.result(), b.result()) == (3, 30)


@pytest.mark.cluster
def test_map_and_gather_keep_the_input_order(c):
    fs = square.map(range(30))
    assert len(fs) == 30 and len({f.id for f in fs}) == 30
    assert c.gather(fs) == [i * i for i in range(30)]
    # several iterables zip like the builtin map
    assert c.gather(add.map(range(5), [10, 20, 30, 40, 50])) == [10, 21, 32, 43, 54]


@pytest.mark.cluster
def test_as_completed_yields_each_future_once(c):
    sleeps = [0.8, 0.0, 0.4, 0.1, 0.6, 0.0, 0.3, 0.2]
    fs = [nap_then.submit(i, s) for i, s in enumerate(sleeps)]
    seen = list(shoal.as_completed(fs, timeout=WAIT_S))
    assert Counter(id(f) for f in seen) == Counter(id(f) for f in fs)
    assert all(f.done() for f in seen)
    assert sorted(f.result() for f in seen) == list(range(len(sleeps)))
    # the same through the client
    again = list(c.as_completed(fs, timeout=WAIT_S))
    assert sorted(f.id for f in again) == sorted(f.id for f in fs)


@pytest.mark.cluster
def test_an_exception_comes_back_as_task_failed_with_type_message_and_traceback(c):
    f = fail_with.submit("bad input 42")
    with pytest.raises(TaskFailed) as info:
        f.result(timeout=WAIT_S)
    err = info.value
    assert err.remote_type == "ValueError"
    assert err.remote_message == "bad input 42"
    assert "fail_with" in err.remote_traceback and "ValueError: bad input 42" in err.remote_traceback
    assert "ValueError" in str(err) and "bad input 42" in str(err)
    exc = f.exception()
    assert isinstance(exc, TaskFailed) and exc.remote_type == "ValueError" and exc.remote_message == "bad input 42"
    rec = c.get(f.id)
    assert rec.state.value == "failed" and len(rec.attempts) == 1
    # an exception class of the user's own module is named with its module
    g = fail_custom.submit("mine")
    exc = g.exception(timeout=WAIT_S)
    assert exc.remote_type == f"{__name__}.Oops" and exc.remote_message == "mine"
    assert "fail_custom" in exc.remote_traceback
    # a return value that cannot travel back fails the task, saying so
    exc = give_lock.submit().exception(timeout=WAIT_S)
    assert exc is not None and exc.remote_type == "TypeError"
    assert "return value cannot be pickled" in exc.remote_message


@pytest.mark.cluster
def test_a_remote_exception_keeps_its_type_and_shows_its_traceback(c):
    with pytest.raises(ValueError) as info:     # the builtin type, caught as itself
        fail_with.submit("bad input 7").result(timeout=WAIT_S)
    err = info.value
    assert isinstance(err, TaskFailed) and err.remote_type == "ValueError"
    assert type(err).__qualname__ == "TaskFailed(ValueError)"
    # uncaught, Python prints the node's traceback above the local one
    printed = "".join(traceback.format_exception(err))
    assert "in fail_with" in printed and "ValueError: bad input 7" in printed
    assert printed.index("in fail_with") < printed.index("The above exception was the direct cause")
    # a class of a module this process imported (this test module) is caught too
    with pytest.raises(Oops):
        fail_custom.submit("mine").result(timeout=WAIT_S)
    assert isinstance(fail_custom.submit("again").exception(timeout=WAIT_S), Oops)
    # gather raises the same
    with pytest.raises(ValueError):
        c.gather([square.submit(2), fail_with.submit("in a gather")])


class NeedsItsOwnArguments(Exception):
    def __new__(cls, code):
        return super().__new__(cls, code)


def failed_with(kind: str) -> TaskRecord:
    return TaskRecord(id="t-x", spec={"command": "true"}, submitted_at=0.0, state="failed",
                            error={"type": kind, "message": "m", "traceback": f"Traceback ...\n{kind}: m\n"})


@pytest.mark.parametrize("kind, mixed_with", [
    ("ValueError", ValueError), ("KeyError", KeyError), ("OSError", OSError),
    (f"{__name__}.Oops", Oops), ("json.decoder.JSONDecodeError", "json"),
    # a module this process never imported, a class that will not build without its own
    # arguments, a non-Exception, a shoal error: a plain TaskFailed
    ("no_such_module.Error", None), (f"{__name__}.NeedsItsOwnArguments", None),
    ("KeyboardInterrupt", None), ("shoal.errors.Conflict", None), (None, None)])
def test_task_failed_mixes_in_the_remote_class_when_this_process_has_it(kind, mixed_with):
    import json
    import pickle
    from shoal.errors import from_body, to_body
    mixed_with = json.JSONDecodeError if mixed_with == "json" else mixed_with
    e = TaskFailed(failed_with(kind))
    assert isinstance(e, TaskFailed) and str(e) == "task t-x ended failed: failed"
    if mixed_with is None:
        assert type(e) is TaskFailed
    else:
        assert isinstance(e, mixed_with) and type(e) is type(TaskFailed(failed_with(kind)))  # made once
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is type(e) and again.remote_type == kind and str(again) == str(e)
    over_http = from_body(409, to_body(e), "failed")
    assert type(over_http) is type(e) and to_body(e)["error"] == "TaskFailed"
    if kind:
        assert f"{kind}: m" in str(e.__cause__) and f"{kind}: m" in str(over_http.__cause__)


@pytest.mark.cluster
def test_what_a_function_prints_is_kept_like_a_commands_output(c):
    f = shout.submit("hi")
    assert f.result(timeout=WAIT_S) == "HI"
    rec = f.record()
    assert "hello from the worker: hi" in rec.stdout_tail
    assert "and to stderr" in rec.stderr_tail
    assert "hello from the worker: hi" in "".join(c.logs(f.id))


# -- shipping code: py_modules, working_dir, and the error without them -----------------------

@pytest.mark.cluster
def test_a_module_the_node_cannot_import_fails_clearly_until_shipped(c, tmp_path):
    where = tmp_path / "mods"
    where.mkdir()
    name = f"fnmod_{uuid.uuid4().hex[:8]}"
    (where / f"{name}.py").write_text("def triple(x):\n    return 3 * x\n")
    sys.path.insert(0, str(where))
    try:
        mod = importlib.import_module(name)
    finally:
        sys.path.remove(str(where))
    try:
        assert mod.triple(2) == 6
        bare = shoal.task(mod.triple)
        f = bare.submit(2)
        rec = f.record(timeout=WAIT_S)
        assert rec.state.value == "failed"
        assert name in rec.reason and "py_modules" in rec.reason and "working_dir" in rec.reason
        with pytest.raises(TaskFailed) as info:
            f.result()
        assert info.value.remote_type == "ModuleNotFoundError" and name in info.value.remote_message
        # shipped with the task (by module object or by name), or found in working_dir
        assert shoal.task(py_modules=[mod])(mod.triple).submit(2).result(timeout=WAIT_S) == 6
        assert shoal.task(py_modules=[name])(mod.triple).submit(3).result(timeout=WAIT_S) == 9
        assert shoal.task(working_dir=str(where))(mod.triple).submit(4).result(timeout=WAIT_S) == 12
    finally:
        sys.modules.pop(name, None)


# -- 2. futures as arguments: a DAG ----------------------------------------------------------

@pytest.mark.cluster
def test_a_function_fans_in_over_two_thousand_futures_that_have_not_ended(c):
    parts = square.map(range(2000))
    f = total.submit(parts)     # most are still queued: recorded as edges, in chunks
    assert len(c.get(f.id).spec.depends_on) == 2000
    assert f.result(timeout=WAIT_S) == sum(i * i for i in range(2000))


@pytest.mark.cluster
def test_fan_out_fan_in_sums_the_squares_and_depends_on_each(c):
    squares = square.map(range(10))
    s = total.submit(squares)
    assert s.result(timeout=WAIT_S) == sum(i * i for i in range(10))
    rec = s.record()
    assert rec.spec.depends_on == [f.id for f in squares]
    # futures in kwargs and in map's items
    k = add.submit(a=squares[3], b=squares[4])
    assert k.result(timeout=WAIT_S) == 25
    assert c.get(k.id).spec.depends_on == [squares[3].id, squares[4].id]
    assert c.gather(add.map(squares, range(10))) == [i * i + i for i in range(10)]


@pytest.mark.cluster
def test_a_failed_upstream_makes_its_dependents_upstream_failed(c):
    bad = fail_with.submit("upstream broke")
    dep = add.submit(bad, 1)
    dep2 = square.submit(dep)
    assert bad.record(timeout=WAIT_S).state.value == "failed"
    for f in (dep, dep2):
        rec = f.record(timeout=WAIT_S)
        assert rec.state.value == "upstream_failed" and rec.attempts == []
        with pytest.raises(TaskFailed) as info:
            f.result()
        assert "upstream_failed" in str(info.value)
    assert bad.id in c.get(dep.id).reason and dep.id in c.get(dep2.id).reason


# -- 3. warm workers ---------------------------------------------------------------------------

@pytest.mark.cluster
def test_sequential_tasks_reuse_the_warm_workers(c):
    slots = next(n["slots"] for n in c.nodes() if n["id"] == "node-1")
    on_a = whoami.options_(labels=["side=a"])
    futures, pids = [], []
    for _ in range(20):
        futures.append(on_a.submit())
        pids.append(futures[-1].result(timeout=WAIT_S))
    assert {f.record().node for f in futures} == {"node-1"}
    assert os.getpid() not in pids
    assert len(set(pids)) <= slots, f"20 tasks saw {len(set(pids))} worker processes on a {slots}-slot node"


# -- 4. a worker dying mid-task ------------------------------------------------------------------

@pytest.mark.cluster
def test_a_worker_that_dies_fails_the_attempt_and_the_retry_succeeds(c, tmp_path):
    f = die_once.submit(str(tmp_path / "marker-retry"))
    assert f.result(timeout=WAIT_S) == "second time lucky"
    rec = f.record()
    assert rec.state.value == "succeeded"
    assert [a.state.value for a in rec.attempts] == ["failed", "succeeded"]
    first = rec.attempts[0].reason
    assert "worker process died" in first and "exit code 1" in first, first
    dead_pid = int((tmp_path / "marker-retry").read_text())
    assert whoami.submit().result(timeout=WAIT_S) != dead_pid

    g = die_once.options_(retries=0).submit(str(tmp_path / "marker-once"))
    rec = g.record(timeout=WAIT_S)
    assert rec.state.value == "failed" and len(rec.attempts) == 1
    assert "worker process died" in rec.reason, rec.reason
    with pytest.raises(TaskFailed):
        g.result()
    # both nodes still run function tasks afterwards
    assert c.gather(square.map(range(6))) == [i * i for i in range(6)]


# -- 5. results ----------------------------------------------------------------------------------

@pytest.mark.cluster
def test_a_big_result_stays_on_its_node_and_comes_back_intact(c, shared):
    small = blob.submit(1000, 1)
    assert small.result(timeout=WAIT_S) == _pattern(1000, 1)
    rec = small.record()
    assert rec.result is not None and rec.result_ref is None

    n = 200_000  # over the 64 KiB inline limit
    big = blob.submit(n, 2)
    assert big.result(timeout=WAIT_S) == _pattern(n, 2)
    rec = big.record()
    assert rec.result is None
    assert rec.result_ref["node"] == rec.node and rec.result_ref["bytes"] > n
    # any node hands it out: the holder and the other one (which proxies)
    other = "node-2" if rec.node == "node-1" else "node-1"
    with shoal.connect(node_api(shared, other)) as c2:
        assert c2.fetch_result(c2.get(big.id)) == _pattern(n, 2)


@pytest.mark.cluster
def test_a_50mb_result_crosses_nodes_intact_and_release_frees_it(c, shared):
    n = 50_000_000
    expected = hashlib.sha256(_pattern(n, 7)).hexdigest()
    big = blob.options_(labels=["side=a"]).submit(n, 7)
    h = digest.options_(labels=["side=b"]).submit(big)
    assert h.result(timeout=WAIT_S) == (n, expected)
    made, used = big.record(), h.record()
    assert made.node == "node-1" and used.node == "node-2"
    assert made.result is None and made.result_ref["node"] == "node-1"
    assert hashlib.sha256(big.result(timeout=WAIT_S)).hexdigest() == expected

    big.release()
    with pytest.raises(NotFound):
        big.result()
    with shoal.connect(node_api(shared, "node-2")) as c2:  # asked through the node without it
        with pytest.raises(NotFound):
            c2.fetch_result(c2.get(big.id))
    # a task that needs the released value fails, saying why
    late = digest.options_(labels=["side=b"]).submit(big)
    rec = late.record(timeout=WAIT_S)
    assert rec.state.value == "failed" and big.id in rec.reason


@pytest.mark.cluster
def test_release_through_the_node_without_the_result(c, shared):
    big = blob.options_(labels=["side=a"]).submit(100_000, 3)
    assert big.result(timeout=WAIT_S) == _pattern(100_000, 3)
    with shoal.connect(node_api(shared, "node-2")) as c2:
        shoal.Future(c2, big.id).release()
    with pytest.raises(NotFound):
        big.result()


# -- 5b. futures bound to their client, sync and async -----------------------------------------

def _drop_big_result(fn_submit) -> str:
    """Submit a big-result task, read its value, drop its only future; the task id."""
    big = fn_submit()
    value = big.result(timeout=WAIT_S)
    assert value == _pattern(100_000, 11)
    tid = big.id
    del big, value
    gc.collect()
    return tid


@pytest.mark.cluster
def test_each_future_goes_through_the_client_that_made_it(c, make_cluster):
    other = make_cluster(nodes=1)
    fa = square.submit(5)                          # c is current (the fixture's `with`)
    with shoal.connect(other.address) as b:
        assert shoal.client.current_client() is b
        fb = square.submit(6)
        assert fa.client is c and fb.client is b
        # b's cluster has never heard of fa's task: a hit there would be NotFound
        value = fa.result(timeout=WAIT_S)
        assert value == 25
        assert b.gather([fb, fa]) == [36, 25] and shoal.gather([fa, fb]) == [25, 36]
        assert {f.id for f in shoal.as_completed([fb], timeout=WAIT_S)} == {fb.id}
        with c.as_current():
            assert square.submit(7).client is c
        unsettled = square.submit(8)
        assert unsettled.client is b
        # a dropped future's result is freed by its own client, at that client's next submission
        with c.as_current():
            tid_c = _drop_big_result(lambda: blob.submit(100_000, 11))
        tid_b = _drop_big_result(lambda: blob.submit(100_000, 11))
        square.submit(1)                               # b's submission frees b's dropped result only
        with pytest.raises(NotFound):
            b.fetch_result(b.get(tid_b))
        assert c.fetch_result(c.get(tid_c)) == _pattern(100_000, 11)
        with c.as_current():
            square.submit(1)                           # now c frees its own
        with pytest.raises(NotFound):
            c.fetch_result(c.get(tid_c))
    assert shoal.client.current_client() is c         # the outer client again
    assert fb.result() == 36                           # settled: its value stays with it
    with pytest.raises(ShoalError, match="closed"):
        unsettled.result()


@pytest.mark.cluster
async def test_futures_of_the_async_client_are_awaited(c, shared):
    with c.as_current():
        from_sync = square.submit(4)
    async with shoal.aconnect(shared.address) as ac:
        assert shoal.client.current_client() is ac
        f = await square.asubmit(3)
        assert f.client is ac and f.is_async
        assert await f == 9 and await f.aresult(timeout=WAIT_S) == 9
        assert (await f.arecord()).state.value == "succeeded" and await f.aexception() is None
        fs = await square.amap(range(6))
        assert await ac.gather(fs) == [i * i for i in range(6)]
        assert await shoal.client.agather([fs[2], from_sync]) == [4, 16]   # each through its own client
        assert await (await total.asubmit(fs)) == 55  # futures as arguments: a DAG
        seen = [g.id async for g in ac.as_completed(fs, timeout=WAIT_S)]
        assert sorted(seen) == sorted(x.id for x in fs)
        assert await from_sync == 16                   # a sync client's future, awaited in a thread
        with pytest.raises(ShoalError, match="asubmit"):
            square.submit(1)
        with pytest.raises(ShoalError, match="await"):
            f.result()
        bad = await fail_with.asubmit("async oops")
        with pytest.raises(TaskFailed) as failed:
            await bad
        assert failed.value.remote_message == "async oops"
        # a dropped future's result is freed at the async client's next submission
        big = await blob.asubmit(100_000, 12)
        value = await big
        assert value == _pattern(100_000, 12)
        tid = big.id
        del big, value
        gc.collect()
        await square.asubmit(1)
        with pytest.raises(NotFound):
            await ac.fetch_result(await ac.get(tid))
    assert shoal.client.current_client() is c


# -- 6. bad input ----------------------------------------------------------------------------------

def test_bad_decoration_is_refused_at_once():
    with pytest.raises(InvalidSpec, match="not callable"):
        shoal.task(42)
    with pytest.raises(InvalidSpec, match="memory"):
        @shoal.task(memory="2 gigs")
        def f(x):
            return x
    with pytest.raises(InvalidSpec, match="retries"):
        shoal.task(retries=-1)(lambda: 1)
    with pytest.raises(InvalidSpec, match="memory"):
        square.options_(memory="lots")


@pytest.mark.cluster
def test_an_unpicklable_argument_is_refused_and_nothing_is_queued(c):
    before = count_tasks(c)
    with pytest.raises(InvalidSpec, match="cannot be pickled"):
        square.submit(threading.Lock())
    with socket.socket() as s:
        with pytest.raises(InvalidSpec, match="nothing was submitted"):
            add.submit(1, s)
        with pytest.raises(InvalidSpec):
            square.map([1, 2, s])
    assert count_tasks(c) == before


@pytest.mark.cluster
def test_a_future_of_another_cluster_is_refused(c, make_cluster):
    other = make_cluster(nodes=1)
    with shoal.connect(other.address) as elsewhere:
        foreign = square.submit(3)
        assert foreign.result(timeout=WAIT_S) == 9
        assert elsewhere.cluster_id != c.cluster_id
    before = count_tasks(c)
    with pytest.raises(InvalidSpec, match="another cluster"):
        add.submit(foreign, 1)
    with pytest.raises(InvalidSpec, match="another cluster"):
        total.submit([1, foreign])
    with pytest.raises(InvalidSpec, match="another cluster"):
        square.map([foreign])
    assert count_tasks(c) == before


# -- 7. timeout -------------------------------------------------------------------------------------

@pytest.mark.cluster
def test_a_timeout_kills_the_worker_and_the_node_goes_on(c, tmp_path):
    pidfile = tmp_path / "pid"
    f = overslept.options_(labels=["side=a"]).submit(str(pidfile))
    rec = f.record(timeout=WAIT_S)
    assert rec.state.value == "failed", rec.state
    assert "timed out" in rec.reason and "2s" in rec.reason, rec.reason
    dead = int(pidfile.read_text())
    deadline = time.monotonic() + 30
    while _alive(_tree(dead)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(_tree(dead)), "the timed-out worker is still running"
    nxt = whoami.options_(labels=["side=a"]).submit()
    assert nxt.result(timeout=WAIT_S) != dead
    assert nxt.record().node == "node-1"


# -- 8. memory ----------------------------------------------------------------------------------------

@pytest.mark.cluster
def test_growing_past_the_memory_limit_fails_the_task(c):
    f = hog.submit(400, 10)
    rec = f.record(timeout=WAIT_S)
    assert rec.state.value == "failed", rec.state
    assert "memory limit" in rec.reason and "100 MiB" in rec.reason, rec.reason
    assert square.submit(4).result(timeout=WAIT_S) == 16


# -- 9. progress ----------------------------------------------------------------------------------------

@pytest.mark.cluster
def test_progress_shows_while_the_task_runs(c, tmp_path):
    release = tmp_path / "release"
    f = halfway.submit(str(release))
    seen = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not f.done():
            p = c.get(f.id).progress
            if p and p.get("message") == "half":
                seen = p
                break
            time.sleep(0.05)
        assert f.progress == seen  # the same through the future
    finally:
        release.write_text("go")
    assert f.result(timeout=WAIT_S) == "done"
    assert seen is not None, "no progress was published while the task ran"
    assert seen["fraction"] == 0.5 and seen["message"] == "half"


# -- 10. a node killed under a function DAG -------------------------------------------------------------

@pytest.mark.cluster
def test_function_dag_survives_sigkill_of_one_of_three_nodes(make_cluster):
    cluster = make_cluster(nodes=3, lease_ttl_s=2)
    width, depth, delay = 10, 20, 0.2
    values = list(range(1, width + 1))
    expected = [values]
    for _ in range(depth - 1):
        prev = expected[-1]
        expected.append([prev[j] + prev[(j + 1) % width] for j in range(width)])
    with shoal.connect(node_api(cluster, "node-3")) as c:
        layers = [[seed.submit(v, delay) for v in values]]
        for _ in range(depth - 1):
            prev = layers[-1]
            layers.append([plus.submit(prev[j], prev[(j + 1) % width], delay) for j in range(width)])
        futures = [f for layer in layers for f in layer]
        assert len(futures) == 200
        # kill node-2 while it runs one of them
        deadline = time.monotonic() + 120
        while not c.list(state="running", node="node-2") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.list(state="running", node="node-2"), "node-2 never ran a task"
        cluster.kill_node("node-2", sig=9)
        done = c.wait(futures, timeout=300)
        assert all(r.state.value == "succeeded" for r in done), Counter(r.state.value for r in done)
        # the kill hit work in progress: those attempts were lost and ran again elsewhere
        lost = [r for r in done if any(a.reason == "node node-2 was lost" for a in r.attempts)]
        assert lost, "no attempt was lost with node-2"
        assert all(r.last.node != "node-2" for r in lost)
        for r in done:
            assert sum(a.state.value == "succeeded" for a in r.attempts) == 1, r.attempts
        assert [f.result() for f in layers[-1]] == expected[-1]
        assert c.gather(layers[5]) == expected[5]
    assert sum(expected[-1]) == sum(values) * 2 ** (depth - 1)
