"""The SDK: an async client over any node's HTTP API, and a thin sync wrapper that runs
the same async methods on a private event loop thread."""
from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import functools
import inspect
import os
import queue
import re
import tempfile
import weakref
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

import anyio
import httpx
import orjson

from .. import errors
from ..errors import InvalidSpec, ShoalError
from ..cluster.local import LocalCluster
from ..logic.template import as_command, combine, fill
from ..model import TaskRecord, TaskSpec
from ..settings import shoal_home

_ERRORS = {cls.__name__: cls for cls in (errors.InvalidSpec, errors.NotFound, errors.Conflict,
                                         errors.TooLarge, errors.StoreUnavailable, errors.StoreFull)}


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        raise ShoalError(f"{resp.request.method} {resp.request.url.path}: HTTP {resp.status_code}: "
                         f"{resp.text[:500]}") from None
    cls = _ERRORS.get(body.get("error"), ShoalError)
    if cls is InvalidSpec:
        raise InvalidSpec(body.get("problems") or [body.get("message", "")])
    raise cls(body.get("message", resp.text))


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


class AsyncClient:
    """Talks to one node's API; any node answers for the whole cluster."""

    def __init__(self, address: str, timeout_s: float = 30.0):
        self.address = address.rstrip("/")
        # plain http needs no certificate store (loading one costs ~50 ms per client)
        # retries=1: a kept-alive connection the node closed meanwhile is dialled again
        self._http = httpx.AsyncClient(base_url=self.address, timeout=httpx.Timeout(timeout_s),
                                       limits=httpx.Limits(max_connections=32),
                                       transport=httpx.AsyncHTTPTransport(
                                           retries=1, verify=self.address.startswith("https:")))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    async def _json(self, method: str, path: str, **kw) -> Any:
        try:
            resp = await self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise errors.ClusterError(f"cannot reach shoal at {self.address} ({e}); "
                                      "is a cluster running? (`shoal up`)") from None
        _raise_for(resp)
        return orjson.loads(resp.content)

    @staticmethod
    def _spec(command: Any, fields: dict) -> dict:
        data = dict(fields, command=command) if command is not None else dict(fields)
        TaskSpec.parse(data)  # refuse bad input before it leaves this process
        return data

    # -- tasks --------------------------------------------------------------------

    async def submit(self, command: list[str] | str, **fields) -> TaskRecord:
        """Submit one task: `command` as an argv list or a shell string, plus any
        TaskSpec field (env, cwd, stdin, cpus, memory, retries, timeout, name, ...)."""
        data = self._spec(command, fields)
        return TaskRecord.model_validate(await self._json("POST", "/v1/tasks", json=data))

    async def submit_many(self, specs: Iterable[dict | TaskSpec], job: str | None = None,
                          chunk: int = 1000) -> list[str]:
        """Submit many tasks; returns their ids in order. Each chunk is all-or-nothing."""
        rows = [s.model_dump(mode="json", exclude_defaults=True) if isinstance(s, TaskSpec) else s for s in specs]
        check_specs(rows)
        ids: list[str] = []
        for i in range(0, len(rows), chunk):
            try:
                body = await self._json("POST", "/v1/tasks/batch", json={"tasks": rows[i:i + chunk], "job": job})
            except InvalidSpec as e:  # the server counts within the chunk: name the index in `specs`
                err = InvalidSpec([re.sub(r"^tasks\[(\d+)\]", lambda m: f"tasks[{i + int(m.group(1))}]", p)
                                   for p in e.problems]
                                  + ([f"(tasks[0] to tasks[{i - 1}] were already submitted: their ids are "
                                      "in this error's submitted_ids)"] if ids else []))
                err.submitted_ids = ids
                raise err from None
            ids.extend(body["ids"])
        return ids

    async def run_many(self, specs: list[dict], job: str | None = None, chunk: int = 250,
                       on_submitted=None, keep_submitting=None) -> AsyncIterator[TaskRecord]:
        """Submit `specs` and yield each task as it ends. Chunks are submitted one after
        another while earlier ones already run, so a long list starts at once.
        `on_submitted(ids)` is called with each chunk's ids as they are accepted; when
        `keep_submitting()` turns false the rest is not submitted (nor waited for)."""
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
                    body = await self._json("POST", "/v1/tasks/batch", json={"tasks": specs[i:i + chunk], "job": job})
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
        return TaskRecord.model_validate(await self._json("GET", f"/v1/tasks/{task_id}"))

    async def cancel(self, task_id: str, unstarted_only: bool = False) -> TaskRecord:
        """Cancel a task; with unstarted_only=True only if its process has not started."""
        params = {"unstarted_only": "true"} if unstarted_only else None
        return TaskRecord.model_validate(await self._json("POST", f"/v1/tasks/{task_id}/cancel", params=params))

    async def list(self, state: str | None = None, name: str | None = None, job: str | None = None,
                   team: str | None = None, node: str | None = None, limit: int = 100,
                   before: str | None = None) -> list[TaskRecord]:
        """Tasks, newest first, filtered."""
        params = {k: v for k, v in dict(state=state, name=name, job=job, team=team, node=node,
                                        limit=limit, before=before).items() if v is not None}
        body = await self._json("GET", "/v1/tasks", params=params)
        return [TaskRecord.model_validate(t) for t in body["tasks"]]

    async def as_finished(self, ids: list[str], timeout: float | None = None) -> AsyncIterator[TaskRecord]:
        """Yield each task once it has ended, in the order they end (driven by etcd watches)."""
        import anyio
        with anyio.fail_after(timeout):
            async with self._http.stream("POST", "/v1/wait", json={"ids": list(ids)},
                                         timeout=httpx.Timeout(30.0, read=None)) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _raise_for(resp)
                async for line in resp.aiter_lines():
                    if not line:
                        continue
                    if line.startswith('{"id":') and '"error":' in line[:200]:
                        d = orjson.loads(line)
                        if set(d) == {"id", "error"}:
                            raise errors.NotFound(f"no task {d['id']!r}")
                    yield TaskRecord.model_validate_json(line)  # parsed in pydantic-core, no dict in between

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
        """The task's output as text chunks; with follow=True until the task ends."""
        params = {"stream": stream, "follow": str(follow).lower()}
        if attempt:
            params["attempt"] = attempt
        async with self._http.stream("GET", f"/v1/tasks/{task_id}/logs", params=params,
                                     timeout=httpx.Timeout(30.0, read=None)) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                _raise_for(resp)
            async for text in resp.aiter_text():
                yield text

    async def events(self, job: str | None = None, task: str | None = None,
                     since: int | None = None) -> AsyncIterator[dict]:
        params = {k: v for k, v in dict(job=job, task=task, since=since).items() if v is not None}
        async with self._http.stream("GET", "/v1/events", params=params,
                                     timeout=httpx.Timeout(30.0, read=None)) as resp:
            async for line in resp.aiter_lines():
                if line:
                    yield orjson.loads(line)

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
        async with self._http.stream("GET", f"/v1/tasks/{task_id}/result",
                                     timeout=httpx.Timeout(30.0, read=None)) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                _raise_for(resp)
            return b"".join([chunk async for chunk in resp.aiter_raw()])

    async def delete_job(self, job: str) -> dict:
        """Cancel what has not ended in `job`, free its results and remove its tasks."""
        return await self._json("DELETE", f"/v1/jobs/{job}")

    async def release_result(self, task_id: str) -> bool:
        return (await self._json("DELETE", f"/v1/tasks/{task_id}/result")).get("released", False)

    # -- flows ---------------------------------------------------------------------------
    # A node of the cluster drives each run; client/flows.py holds this side of it: the
    # checks, the submission, following a run, and feeding stdin / receiving stdout.

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
        return await self._json("POST", "/v1/flows", json=record.to_json())

    async def flow_record(self, run: str, after: int = 0, timeout: float = 20.0) -> dict:
        """{"record", "revision"}: the run's record once it changed after `after` (long poll)."""
        return await self._json("GET", f"/v1/flows/{run}/record", params={"after": after, "timeout": timeout},
                                timeout=httpx.Timeout(timeout + 15))

    async def flow_status(self, run: str) -> dict:
        """A flow run's record, with each stage's instances: state, node, records in/out."""
        return await self._json("GET", f"/v1/flows/{run}")

    async def flows(self, limit: int = 50) -> list[dict]:
        return (await self._json("GET", "/v1/flows", params={"limit": limit}))["flows"]

    async def cancel_flow(self, run: str) -> dict:
        return await self._json("POST", f"/v1/flows/{run}/cancel")

    async def flow_endpoints(self, run: str, attempt: int, stage: str, count: int, timeout: float = 60.0) -> list[str]:
        """The data addresses of a stage's instances in one attempt, once all have started."""
        return (await self._json("GET", f"/v1/flows/{run}/{attempt}/endpoints/{stage}",
                                 params={"count": count, "timeout": timeout},
                                 timeout=httpx.Timeout(timeout + 15)))["endpoints"]

    async def put_flow_endpoint(self, run: str, attempt: int, stage: str, index: int, address: str) -> None:
        await self._json("PUT", f"/v1/flows/{run}/{attempt}/endpoints/{stage}/{index}", json={"address": address})

    async def keep_flow_client(self, run: str, lease: int) -> None:
        """Tell the run its client (feeding stdin, receiving stdout) is still there."""
        await self._json("POST", f"/v1/flows/{run}/client", json={"lease": lease})

    async def release_flow_client(self, run: str, lease: int) -> None:
        await self._json("DELETE", f"/v1/flows/{run}/client", params={"lease": lease})

    # -- cluster ------------------------------------------------------------------

    async def nodes(self) -> list[dict]:
        return (await self._json("GET", "/v1/nodes"))["nodes"]

    async def health(self) -> dict:
        return await self._json("GET", "/v1/health")


class Client:
    """The sync face of AsyncClient: each method runs the async one on a private loop."""

    def __init__(self, aclient_factory, on_close=None):
        from anyio.from_thread import start_blocking_portal
        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._async: AsyncClient = self._portal.call(aclient_factory)
        self._on_close = on_close
        self.address = self._async.address
        self.cluster_id = self._portal.call(self._async.health).get("cluster")
        self._future_refs: collections.Counter = collections.Counter()
        self._unreferenced: list[str] = []
        from . import functions
        functions._clients.append(self)

    def __getattr__(self, name: str):
        attr = getattr(self._async, name)
        if inspect.isasyncgenfunction(attr):
            @functools.wraps(attr)
            def gen(*a, **k):
                return self._iterate(attr(*a, **k))
            return gen
        if inspect.iscoroutinefunction(attr):
            @functools.wraps(attr)
            def call(*a, **k):
                return self._portal.call(functools.partial(attr, *a, **k))
            return call
        return attr

    def _iterate(self, agen):
        """Drive an async generator in one task on the loop (its cancel scopes and open
        streams must stay in one task), handing items over through a queue."""
        items: queue.Queue = queue.Queue()
        done = object()

        async def pump():
            try:
                async for item in agen:
                    items.put_nowait((True, item))
                items.put_nowait((True, done))
            except BaseException as e:  # handed to the caller's thread
                items.put_nowait((False, e))
                raise
            finally:
                await agen.aclose()

        fut = self._portal.start_task_soon(pump)
        try:
            while True:
                ok, item = items.get()
                if not ok:
                    raise item
                if item is done:
                    return
                yield item
        finally:
            if not fut.done():
                fut.cancel()

    def track_future(self, future, task_id: str) -> None:
        """Count the futures of each task; when the last one is garbage collected, its
        result is freed (at this client's next call or close). Results a dependent task
        still needs are kept by the node until that task ends."""
        self._future_refs[task_id] += 1
        weakref.finalize(future, self._untrack, task_id)

    def _untrack(self, task_id: str) -> None:
        self._future_refs[task_id] -= 1
        if self._future_refs[task_id] <= 0:
            del self._future_refs[task_id]
            self._unreferenced.append(task_id)  # list.append is atomic; finalizers may run anywhere

    def release_unreferenced(self) -> int:
        """Free the results of tasks whose futures were all dropped; how many were sent."""
        ids, self._unreferenced = self._unreferenced, []
        for tid in ids:
            try:
                self._portal.call(self._async.release_result, tid)
            except ShoalError:
                pass  # gone already (job deleted, retention)
        return len(ids)

    def fetch_result(self, rec: TaskRecord):
        """The value a finished function task returned; TaskFailed if it did not succeed."""
        from .functions import load_result, raise_for
        raise_for(rec)
        if rec.result is not None:  # small results come inside the record: no round trip
            return load_result(base64.b64decode(rec.result))
        return load_result(self._portal.call(self._async.result_bytes, rec.id))

    def gather(self, futures: list):
        """The results of `futures`, in order (waiting for all; the first failure raises)."""
        recs = self.wait([f.id for f in futures])
        return [self.fetch_result(r) for r in recs]

    def as_completed(self, futures: list, timeout: float | None = None):
        from .functions import as_completed
        return as_completed(futures, timeout)

    def close(self) -> None:
        if self._portal is None:
            return
        from . import functions
        if self in functions._clients:
            functions._clients.remove(self)
        self.release_unreferenced()
        try:
            self._portal.call(self._async.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)
            self._portal = None
            if self._on_close:
                self._on_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _discover(address: str | None) -> tuple[str, LocalCluster | None]:
    """The API address to use, and the embedded cluster we started for it (if any)."""
    address = address or os.environ.get("SHOAL_ADDRESS")
    if address:
        return address, None
    st = LocalCluster(shoal_home()).running()
    if st:
        return st["nodes"][0]["api"], None
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="shoal-embedded-")), nodes=1)
    try:
        st = cluster.up()
    except BaseException:
        cluster.destroy()
        raise
    return st["nodes"][0]["api"], cluster


def connect(address: str | None = None, timeout_s: float = 30.0) -> Client:
    """A client for the cluster at `address` (or $SHOAL_ADDRESS, or the cluster `shoal up`
    started). With none running, starts an embedded local cluster and stops it on close."""
    addr, cluster = _discover(address)
    return Client(lambda: AsyncClient(addr, timeout_s), on_close=cluster.destroy if cluster else None)


@contextlib.asynccontextmanager
async def aconnect(address: str | None = None, timeout_s: float = 30.0):
    import anyio
    addr, cluster = await anyio.to_thread.run_sync(_discover, address)
    client = AsyncClient(addr, timeout_s)
    try:
        yield client
    finally:
        await client.aclose()
        if cluster:
            await anyio.to_thread.run_sync(cluster.destroy)
