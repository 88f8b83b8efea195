"""The async client: every route of a node's HTTP API as a method, the futures it made
(their results freed when the last one is dropped), and DAG files run from Python."""
from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import os
import re
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable

import anyio
import httpx
import orjson

from .. import errors
from ..errors import InvalidSpec, ShoalError, UnplaceableWarning
from ..logic.template import as_command, combine, fill
from ..model import TaskRecord, TaskSpec, new_ids
from . import current, failover
from .failover import NodeDown, NodeRing
from .results import inline_result, is_inline, load_result

RELEASE_CONCURRENCY = 16   # result releases in flight at once when dropped futures are freed

if TYPE_CHECKING:
    from ..logic.dagfile import Dag
    from .dag import DagRun


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code >= 400:
        raise errors.from_body(resp.status_code, resp.content, f"{resp.request.method} {resp.request.url.path}: "
                                                               f"HTTP {resp.status_code}: {resp.text[:500]}")


def with_cwd(row: dict) -> dict:
    """A task runs in its submitter's directory unless it names one: a relative cwd is
    taken from there too. (The node checks that the directory exists where it runs.)"""
    row["cwd"] = os.path.join(os.getcwd(), row["cwd"]) if row.get("cwd") else os.getcwd()
    return row


def check_specs(rows: list[dict]) -> None:
    """Validate every row; one InvalidSpec naming each problem with its index. The same
    problem in many rows (a map with a bad option) is said once, with how many it hit."""
    seen: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        try:
            TaskSpec.parse(row)
        except InvalidSpec as e:
            for p in e.problems:
                seen.setdefault(p, []).append(i)
    if seen:
        raise InvalidSpec([f"tasks[{at[0]}].{p}" if len(at) == 1 else
                           f"tasks[{at[0]}] and {len(at) - 1} more: {p}" for p, at in seen.items()])


def _warn(body: dict) -> None:
    for text in body.get("warnings") or ():
        warnings.warn(text, UnplaceableWarning, stacklevel=3)


class AsyncClient:
    """Talks to the cluster through any of its nodes: `address` is one node's API URL, or
    several (a list, or comma separated). It learns the rest from the cluster, and when a
    node stops answering it sends the request to another (submissions carry ids the
    client chose, so a retried one never creates a task twice)."""

    def __init__(self, address: str | Iterable[str], timeout_s: float = 30.0):
        self._ring = NodeRing(address)
        self.cluster_id: str | None = None  # learnt by open(); futures of another cluster are refused
        # plain http needs no certificate store (loading one costs ~50 ms per client)
        # retries=1: a kept-alive connection the node closed meanwhile is dialled again
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s),
                                       limits=httpx.Limits(max_connections=32),
                                       transport=httpx.AsyncHTTPTransport(
                                           retries=1, verify=any(a.startswith("https:") for a in self._ring.addresses)))
        self._future_refs: collections.Counter = collections.Counter()
        self._unreferenced: list[str] = []
        self._nothing_kept: set[str] = set()   # tracked tasks whose result lives in their record only
        self._entered: list = []  # tokens of the `async with` blocks that made this client current

    @property
    def address(self) -> str:
        """The API address of the node this client talks to now."""
        return self._ring.current

    @property
    def addresses(self) -> list[str]:
        """Every node address this client knows, the one it uses now first."""
        return list(self._ring.addresses)

    async def open(self) -> "AsyncClient":
        """Check that a node answers, learn which cluster it belongs to and its other nodes."""
        self.cluster_id = (await self.health()).get("cluster")
        await self._learn_nodes()
        return self

    async def _learn_nodes(self) -> None:
        """Add the API addresses the cluster lists (GET /v1/nodes) to those known; best
        effort, from the node in use: a failure here is not this request's failure."""
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
            resp = await self._http.get(self.address + "/v1/nodes", timeout=5.0)
            if resp.status_code == 200:
                self._ring.learn(n["api"] for n in orjson.loads(resp.content)["nodes"] if n.get("api"))

    async def aclose(self) -> None:
        try:
            await self.release_unreferenced()
        finally:
            await self._http.aclose()

    async def __aenter__(self):
        """Open the client and make it current: `@shoal.task` functions submit through it."""
        await self.open()
        self._entered.append(current.enter(self))
        return self

    async def __aexit__(self, *exc):
        current.leave(self._entered.pop(), self)
        await self.aclose()

    def as_current(self):
        """`with c.as_current():` submits `@shoal.task` functions through `c` in the block,
        without closing it at the end."""
        return current.using(self)

    async def request_json(self, method: str, path: str, idempotent: bool | None = None, **kw) -> Any:
        """One request to the API; the decoded JSON body, or the ShoalError it stands for.
        Keywords go to httpx (json=, params=, timeout=). A node that does not answer (or
        cannot reach etcd) is left for another; a request cut off mid-way is sent again
        only if it is `idempotent` (by default: GET, PUT, DELETE)."""
        resp = await self._send(method, path, idempotent, **kw)
        _raise_for(resp)
        return orjson.loads(resp.content)

    async def _send(self, method: str, path: str, idempotent: bool | None = None, stream: bool = False,
                    **kw) -> httpx.Response:
        """Send to the node in use; on NodeDown move to the next one and send again, within
        failover.attempts(). Which node answered is in resp.extensions["shoal_node"]."""
        if idempotent is None:
            idempotent = method.upper() in ("GET", "HEAD", "PUT", "DELETE")
        tried: list[NodeDown] = []
        resp = await failover.attempts(len(self._ring.addresses))(
            self._send_to, method, path, idempotent, stream, tried, **kw)
        if isinstance(resp, NodeDown):
            raise self._unreachable(tried)
        node = resp.extensions["shoal_node"]
        self._ring.answered(node)
        if tried:
            await self._learn_nodes()  # the cluster may have changed: a node died, others joined
        return resp

    async def _send_to(self, method: str, path: str, idempotent: bool, stream: bool,
                       tried: list[NodeDown], **kw) -> httpx.Response | NodeDown:
        """One try on the node in use: its answer, or NodeDown (and the ring moved on)."""
        node = self._ring.current
        request = self._http.build_request(method, node + path, **kw)
        try:
            resp = await self._http.send(request, stream=stream)
        except httpx.TransportError as e:
            why = failover.node_failure(e, idempotent)
            if why is None:
                if isinstance(e, failover.CUT_OFF):
                    raise errors.ClusterError(
                        f"the node at {node} went away while handling {method} {path}; it may or may not "
                        f"have been done, so it is not sent again ({type(e).__name__}: {e})") from None
                raise errors.ClusterError(f"{method} {path} to shoal at {node}: {type(e).__name__}: {e}") from None
            return self._node_down(node, why, tried)
        if failover.unavailable(resp.status_code, idempotent):
            await resp.aread()
            await resp.aclose()
            return self._node_down(node, f"HTTP 503: {resp.text[:300]}", tried)
        resp.extensions["shoal_node"] = node
        return resp

    def _node_down(self, node: str, why: str, tried: list[NodeDown]) -> NodeDown:
        down = NodeDown(node, why)
        tried.append(down)
        self._ring.failed(node)
        return down

    def _unreachable(self, tried: list[NodeDown]) -> errors.ClusterError:
        """The error when no node answered: every address tried, with what it said."""
        seen = {d.address: d.why for d in tried}  # the last word of each
        if len(seen) == 1:
            (node, why), = seen.items()
            return errors.ClusterError(f"cannot reach shoal at {node} ({why}); is a cluster running? (`shoal up`)")
        return errors.ClusterError("cannot reach shoal at any of " + "; ".join(f"{a} ({w})" for a, w in seen.items())
                                   + "; is a cluster running? (`shoal up`)")

    @contextlib.asynccontextmanager
    async def _stream(self, method: str, path: str, idempotent: bool | None = True,
                      **kw) -> AsyncIterator[httpx.Response]:
        """A streamed answer, its body not read yet (no read timeout: a stream may stay
        quiet for long), or the ShoalError it stands for. Keywords go to httpx."""
        resp = await self._send(method, path, idempotent, stream=True, timeout=httpx.Timeout(30.0, read=None), **kw)
        try:
            if resp.status_code >= 400:
                await resp.aread()
                _raise_for(resp)
            yield resp
        finally:
            await resp.aclose()

    async def _resumed(self, method: str, path: str, request: Callable[[], dict],
                       read: Callable[[httpx.Response], AsyncIterator]) -> AsyncIterator:
        """The items `read(resp)` gives of a streamed answer. When the node goes away
        mid-stream, the request is made again on another node with the keywords
        `request()` gives then (the caller narrows it to what it has not had yet)."""
        idle = 0   # resumptions in a row that brought nothing
        while True:
            node = None
            try:
                async with self._stream(method, path, **request()) as resp:
                    node = resp.extensions["shoal_node"]
                    async for item in read(resp):
                        idle = 0
                        yield item
                return
            except failover.CUT_OFF as e:
                if node is None:
                    raise
                idle += 1
                down = self._node_down(node, f"connection lost mid-stream ({type(e).__name__})", [])
                if idle > failover.ROUNDS * len(self._ring.addresses):
                    raise self._unreachable([down]) from None

    @staticmethod
    def _spec(command: Any, fields: dict) -> dict:
        data = with_cwd(dict(fields, command=command) if command is not None else dict(fields))
        TaskSpec.parse(data)  # refuse bad input before it leaves this process
        return data

    # -- tasks --------------------------------------------------------------------

    async def submit(self, command: list[str] | str, **fields) -> TaskRecord:
        """Submit one task: `command` as an argv list or a shell string, plus any
        TaskSpec field (env, cwd, stdin, cpus, memory, retries, timeout, name, ...)."""
        data = self._spec(command, fields)
        await self.release_unreferenced()
        # the id is chosen here so that sending the request again names the same task
        body = await self.request_json("POST", "/v1/tasks", idempotent=True, json=data, params={"id": new_ids(1)[0]})
        _warn(body)
        return TaskRecord.model_validate(body)

    async def submit_many(self, specs: Iterable[dict | TaskSpec], job: str | None = None,
                          chunk: int = 1000) -> list[str]:
        """Submit many tasks; returns their ids in order. Each chunk is all-or-nothing."""
        rows = [with_cwd(s.model_dump(mode="json", exclude_defaults=True) if isinstance(s, TaskSpec) else dict(s))
                for s in specs]
        check_specs(rows)
        await self.release_unreferenced()
        ids: list[str] = []
        for i in range(0, len(rows), chunk):
            try:
                body = await self._submit_chunk(rows[i:i + chunk], job)
            except InvalidSpec as e:  # the server counts within the chunk: name the index in `specs`
                err = InvalidSpec([re.sub(r"^tasks\[(\d+)\]", lambda m: f"tasks[{i + int(m.group(1))}]", p)
                                   for p in e.problems]
                                  + ([f"(tasks[0] to tasks[{i - 1}] were already submitted: their ids are "
                                      "in this error's submitted_ids)"] if ids else []))
                err.submitted_ids = ids
                raise err from None
            _warn(body)
            ids.extend(body["ids"])
        return ids

    async def _submit_chunk(self, rows: list[dict], job: str | None) -> dict:
        """POST one batch with ids made here: sent again after a node failed mid-request,
        it creates nothing new and answers with the same ids."""
        return await self.request_json("POST", "/v1/tasks/batch", idempotent=True,
                                       json={"tasks": rows, "job": job, "ids": new_ids(len(rows))})

    async def run_many(self, specs: list[dict], job: str | None = None, chunk: int = 250,
                       on_submitted=None, keep_submitting=None) -> AsyncIterator[TaskRecord]:
        """Submit `specs` and yield each task as it ends. Chunks are submitted one after
        another while earlier ones already run, so a long list starts at once.
        `on_submitted(ids)` is called with each chunk's ids as they are accepted; when
        `keep_submitting()` turns false the rest is not submitted (nor waited for)."""
        specs = [with_cwd(dict(s)) for s in specs]
        check_specs(specs)
        results: asyncio.Queue = asyncio.Queue()
        pending = len(specs)

        async def follow(ids):
            try:
                async for rec in self.as_finished(ids):
                    results.put_nowait(rec)
            except BaseException as e:
                results.put_nowait(e)
                raise

        async with anyio.create_task_group() as tg:
            async def submit_all():
                nonlocal pending
                for i in range(0, len(specs), chunk):
                    if keep_submitting is not None and not keep_submitting():
                        pending -= len(specs) - i
                        results.put_nowait(None)
                        return
                    body = await self._submit_chunk(specs[i:i + chunk], job)
                    _warn(body)
                    if on_submitted:
                        on_submitted(body["ids"])
                    tg.start_soon(follow, body["ids"])
            tg.start_soon(submit_all)
            while pending:
                item = await results.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    continue  # submitting stopped; `pending` was lowered
                pending -= 1
                yield item

    async def get(self, task_id: str) -> TaskRecord:
        return TaskRecord.model_validate(await self.request_json("GET", f"/v1/tasks/{task_id}"))

    async def cancel(self, task_id: str, unstarted_only: bool = False) -> TaskRecord:
        """Cancel a task; with unstarted_only=True only if its process has not started."""
        params = {"unstarted_only": "true"} if unstarted_only else None
        return TaskRecord.model_validate(await self.request_json("POST", f"/v1/tasks/{task_id}/cancel", params=params))

    async def list(self, state: str | None = None, name: str | None = None, job: str | None = None,
                   team: str | None = None, node: str | None = None, limit: int = 100,
                   before: str | None = None) -> list[TaskRecord]:
        """Tasks, newest first, filtered."""
        params = {k: v for k, v in dict(state=state, name=name, job=job, team=team, node=node,
                                        limit=limit, before=before).items() if v is not None}
        body = await self.request_json("GET", "/v1/tasks", params=params)
        return [TaskRecord.model_validate(t) for t in body["tasks"]]

    async def as_finished(self, ids: list[str], timeout: float | None = None) -> AsyncIterator[TaskRecord]:
        """Yield each task once it has ended, in the order they end (driven by etcd watches).
        If the node streaming them goes away, another streams the ones not yielded yet."""
        left = dict.fromkeys(ids)

        async def records(resp: httpx.Response) -> AsyncIterator[TaskRecord]:
            async for line in resp.aiter_lines():
                if not line:
                    continue
                if line.startswith('{"id":') and '"error":' in line[:200]:
                    d = orjson.loads(line)
                    if set(d) == {"id", "error"}:
                        raise errors.NotFound(f"no task {d['id']!r}")
                rec = TaskRecord.model_validate_json(line)  # parsed in pydantic-core, no dict in between
                if rec.id in left:
                    del left[rec.id]
                    yield rec

        with anyio.fail_after(timeout):
            async with contextlib.aclosing(self._resumed("POST", "/v1/wait", lambda: {"json": {"ids": list(left)}},
                                                         records)) as finished:
                async for rec in finished:
                    yield rec

    async def wait(self, task: str | TaskRecord | list, timeout: float | None = None,
                   raise_on_failure: bool = False):
        """Wait until the task (or every task of a list) has ended; return its record(s)."""
        single = not isinstance(task, list)
        ids = [t if isinstance(t, str) else t.id for t in ([task] if single else task)]  # ids, records, futures
        done: dict[str, TaskRecord] = {}
        # close the stream here when raising: left open, its cancel scope would be exited
        # later from another task, which breaks the caller's task (and the sync portal)
        async with contextlib.aclosing(self.as_finished(ids, timeout)) as finished:
            async for rec in finished:
                done[rec.id] = rec
                if raise_on_failure and rec.state.value != "succeeded":
                    raise errors.TaskFailed(rec)
        out = [done[i] for i in ids]
        return out[0] if single else out

    async def logs(self, task_id: str, stream: str = "stdout", follow: bool = False,
                   attempt: int | None = None) -> AsyncIterator[str]:
        """The task's output as text chunks; with follow=True until the task ends. If the
        node streaming it goes away, another goes on after the bytes already given. When
        the node that ran the attempt is gone, what survives (the end, from the first whole
        line) is yielded, then LogIncomplete says how much of how much."""
        params = {"stream": stream, "follow": str(follow).lower()}
        if attempt:
            params["attempt"] = attempt
        given = 0            # bytes yielded so far: a resumed stream skips them
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def request() -> dict:
            if given and "attempt" not in params:
                raise errors.ClusterError(f"the node streaming the log of {task_id} went away")
            return {"params": params}

        async def text(resp: httpx.Response) -> AsyncIterator[str]:
            nonlocal given
            if "attempt" not in params:  # resume the same attempt, whichever is latest then
                source = resp.headers.get("X-Shoal-Attempt")
                if source:
                    params["attempt"] = int(source)
            skip = given
            async for chunk in resp.aiter_bytes():
                if skip:
                    chunk, skip = chunk[skip:], max(0, skip - len(chunk))
                if chunk:
                    given += len(chunk)
                    if out := decoder.decode(chunk):
                        yield out
            if tail := decoder.decode(b"", final=True):
                yield tail
            if lost := resp.headers.get("x-shoal-log-incomplete"):  # after what survives
                total = resp.headers.get("x-shoal-log-total")
                raise errors.LogIncomplete(lost, int(resp.headers["x-shoal-log-kept"]), total and int(total))

        async with contextlib.aclosing(self._resumed("GET", f"/v1/tasks/{task_id}/logs", request, text)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def events(self, job: str | None = None, task: str | None = None,
                     since: int | None = None, state: str | None = None) -> AsyncIterator[dict]:
        """Every task change (only of one job, one task, or into one state) from etcd
        revision `since` (default: now) on: {"type": "hello" | "task" | "reset", ...}. If
        the node streaming them goes away, another goes on from the last revision seen,
        without repeating an event."""
        params = {k: v for k, v in dict(job=job, task=task, state=state).items() if v is not None}
        last = {"revision": since - 1 if since is not None else None, "ids": set()}  # ids seen at that revision
        hello = [False]

        def request() -> dict:
            at = last["revision"]
            return {"params": params if at is None else dict(params, since=at if last["ids"] else at + 1)}

        async def read(resp: httpx.Response) -> AsyncIterator[dict]:
            async for line in resp.aiter_lines():
                if not line:
                    continue
                ev = orjson.loads(line)
                kind, rev = ev.get("type"), ev.get("revision")
                if kind == "hello":
                    if hello[0]:
                        continue  # a resumed stream: the caller had its hello
                    hello[0] = True
                    if last["revision"] is None:
                        last["revision"] = rev
                elif kind == "task" and rev is not None:
                    tid = (ev.get("task") or {}).get("id")
                    if rev == last["revision"] and tid in last["ids"]:
                        continue  # given before the node went away
                    if rev != last["revision"]:
                        last["revision"], last["ids"] = rev, set()
                    last["ids"].add(tid)
                yield ev

        async with contextlib.aclosing(self._resumed("GET", "/v1/events", request, read)) as events:
            async for ev in events:
                yield ev

    async def map(self, template: str, *sources: Iterable[str], wait: bool = True, job: str | None = None,
                  **fields) -> list[TaskRecord] | list[str]:
        """One task per input (or per combination of several input sources), like GNU
        parallel: `{}` in `template` is the input, `{1}` `{2}` the n-th source; with no
        placeholder the input is appended. Returns records in input order (or ids)."""
        combos = combine([list(s) for s in sources])
        specs = [dict(fields, command=as_command(fill(template, args, i + 1))) for i, args in enumerate(combos)]
        ids = await self.submit_many(specs, job=job)
        return await self.wait(ids) if wait else ids

    async def result_bytes(self, task_id: str) -> bytes:
        """The pickled return value of a succeeded function task, from wherever it is kept."""
        async with self._stream("GET", f"/v1/tasks/{task_id}/result") as resp:
            return b"".join([chunk async for chunk in resp.aiter_raw()])

    async def delete_job(self, job: str) -> dict:
        """Cancel what has not ended in `job`, free its results and remove its tasks."""
        return await self.request_json("DELETE", f"/v1/jobs/{job}")

    async def release_result(self, task_id: str) -> bool:
        return (await self.request_json("DELETE", f"/v1/tasks/{task_id}/result")).get("released", False)

    # -- futures of function tasks ------------------------------------------------------

    def note_final(self, rec: TaskRecord) -> None:
        """A tracked task ended with nothing kept on a node (its result came inside the
        record, or it failed): dropping its futures then needs no release round trip."""
        if rec.result_ref is None and rec.id in self._future_refs:
            self._nothing_kept.add(rec.id)

    async def fetch_result(self, rec: TaskRecord) -> Any:
        """The value a finished function task returned; TaskFailed if it did not succeed."""
        self.note_final(rec)
        if is_inline(rec):  # small results come inside the record: no round trip
            return inline_result(rec)
        return load_result(await self.result_bytes(rec.id))

    async def gather(self, futures: list) -> list:
        """The results of `futures`, in order (waiting for all; the first failure raises).
        Futures of another client are fetched through the client that made them."""
        futures = list(futures)
        mine = [f for f in futures if f.aclient is self]
        recs = dict(zip((f.id for f in mine), await self.wait([f.id for f in mine]))) if mine else {}
        out = []
        for f in futures:
            if f.aclient is self:
                f._record = recs[f.id]
                out.append(await self.fetch_result(f._record))
            else:
                out.append(await f.aresult())
        return out

    async def as_completed(self, futures: list, timeout: float | None = None) -> AsyncIterator:
        """Yield the futures (of this client) as their tasks end, first finished first."""
        by_id: dict[str, list] = {}
        for f in futures:
            if f.aclient is not self:
                raise ShoalError(f"as_completed: {f!r} was made by another client ({f.client.address}); "
                                 "wait for each client's futures through that client")
            by_id.setdefault(f.id, []).append(f)
        if not by_id:
            return
        async with contextlib.aclosing(self.as_finished(list(by_id), timeout)) as finished:
            async for rec in finished:
                for f in by_id[rec.id]:
                    f._record = rec
                    yield f

    def track_future(self, future, task_id: str) -> None:
        """Count the futures of each task; when the last one is garbage collected, its
        result is freed (at this client's next submission or close). Results a dependent
        task still needs are kept by the node until that task ends."""
        self._future_refs[task_id] += 1
        weakref.finalize(future, self._untrack, task_id)

    def _untrack(self, task_id: str) -> None:
        self._future_refs[task_id] -= 1
        if self._future_refs[task_id] <= 0:
            del self._future_refs[task_id]
            if task_id in self._nothing_kept:
                self._nothing_kept.discard(task_id)
            else:
                self._unreferenced.append(task_id)  # list.append is atomic; finalizers may run anywhere

    async def release_unreferenced(self) -> int:
        """Free the results of tasks whose futures were all dropped; how many were sent."""
        if not self._unreferenced:
            return 0
        ids, self._unreferenced = self._unreferenced, []
        slots = asyncio.Semaphore(RELEASE_CONCURRENCY)

        async def release(tid: str) -> None:
            async with slots:
                try:
                    await self.release_result(tid)
                except ShoalError:
                    pass  # gone already (job deleted, retention)
        await asyncio.gather(*(release(t) for t in ids))
        return len(ids)

    # -- DAG files ------------------------------------------------------------------------

    async def run_dag(self, dag: "str | Path | Dag", *, job: str | None = None, wait: bool = False,
                      timeout: float | None = None, on_stopped=None) -> "DagRun":
        """Run a DAG file (a path, or a Dag from shoal.client.dag.load_dag): every step
        becomes a task of one job (`<name>-<6 chars>` unless `job` is given), submitted
        in dependency order. A file that is not a valid DAG raises InvalidSpec naming
        each problem with its line, and nothing is submitted. With wait=True, returns
        once every step has ended (DagRun.records, DagRun.ok); else at once, with the
        task id of each step (DagRun.ids). If submitting stops part way, the steps
        already submitted are cancelled and `on_stopped(message)` is told so."""
        from .dag import run_dag
        return await run_dag(self, dag, job=job, wait=wait, timeout=timeout, on_stopped=on_stopped)

    # -- cluster ------------------------------------------------------------------

    async def nodes(self) -> list[dict]:
        return (await self.request_json("GET", "/v1/nodes"))["nodes"]

    async def health(self) -> dict:
        return await self.request_json("GET", "/v1/health")

    # -- flows ---------------------------------------------------------------------------
    # A node of the cluster drives each run; client/flows.py holds this side of it: the
    # checks, the submission, following a run, and feeding stdin / receiving stdout. It is
    # imported only inside these methods, so the client never loads it at import time.

    async def run_flow(self, spec, base_dir: str = ".", **kw):
        """Run a flow (a FlowSpec, or a Flow from shoal.flow()) to the end; a FlowResult.
        Keywords: stdin, items (an iterable for a stage that reads one), stdout (a binary
        file for a stage that writes '-'), on_status (called with the live status),
        started (called with the run id once submitted)."""
        from .flows import run_flow
        spec = spec.spec() if hasattr(spec, "spec") and callable(spec.spec) else spec
        return await run_flow(self, spec, base_dir, **kw)

    async def start_flow(self, spec, base_dir: str = ".") -> str:
        """Submit a flow of files and return its run id at once; the cluster runs it to the
        end whatever becomes of this client (follow it with follow_flow)."""
        from .flows import start_flow
        spec = spec.spec() if hasattr(spec, "spec") and callable(spec.spec) else spec
        return await start_flow(self, spec, base_dir)

    async def follow_flow(self, run: str, on_status=None, status_every_s: float = 1.0):
        """Wait for a run to end; a FlowResult, or FlowFailed / FlowCancelled."""
        from .flows import follow_flow
        return await follow_flow(self, run, on_status=on_status, status_every_s=status_every_s)

    async def submit_flow(self, record) -> dict:
        """Submit a run record (a FlowRunRecord, state pending): {"id", "client_lease"}."""
        return await self.request_json("POST", "/v1/flows", json=record.to_json())

    async def flow_record(self, run: str, after: int = 0, timeout: float = 20.0) -> dict:
        """{"record", "revision"}: the run's record once it changed after `after` (long poll)."""
        return await self.request_json("GET", f"/v1/flows/{run}/record", params={"after": after, "timeout": timeout},
                                timeout=httpx.Timeout(timeout + 15))

    async def flow_status(self, run: str) -> dict:
        """A flow run's record, with each stage's instances: state, node, records in/out."""
        return await self.request_json("GET", f"/v1/flows/{run}")

    async def flows(self, limit: int = 50) -> list[dict]:
        return (await self.request_json("GET", "/v1/flows", params={"limit": limit}))["flows"]

    async def cancel_flow(self, run: str) -> dict:
        return await self.request_json("POST", f"/v1/flows/{run}/cancel")

    async def flow_endpoints(self, run: str, attempt: int, stage: str, count: int, timeout: float = 60.0) -> list[str]:
        """The data addresses of a stage's instances in one attempt, once all have started."""
        return (await self.request_json("GET", f"/v1/flows/{run}/{attempt}/endpoints/{stage}",
                                 params={"count": count, "timeout": timeout},
                                 timeout=httpx.Timeout(timeout + 15)))["endpoints"]

    async def put_flow_endpoint(self, run: str, attempt: int, stage: str, index: int, address: str) -> None:
        await self.request_json("PUT", f"/v1/flows/{run}/{attempt}/endpoints/{stage}/{index}", json={"address": address})

    async def keep_flow_client(self, run: str, lease: int) -> None:
        """Tell the run its client (feeding stdin, receiving stdout) is still there."""
        await self.request_json("POST", f"/v1/flows/{run}/client", json={"lease": lease})

    async def release_flow_client(self, run: str, lease: int) -> None:
        await self.request_json("DELETE", f"/v1/flows/{run}/client", params={"lease": lease})
