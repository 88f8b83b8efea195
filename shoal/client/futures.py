"""Futures: the pending result of a function task, bound to the client that submitted
it (sync or async), with as_completed and gather over many.

A future is waited for and fetched through its own client, whichever client is current
when that happens. From the sync client: `f.result()`; from the async client:
`await f` (or `await f.aresult()`). A future of the sync client can be awaited too (the
blocking call runs in a worker thread); one of the async client cannot be used
synchronously (that would block its own event loop).
"""
from __future__ import annotations

import functools
from typing import Any, AsyncIterator, Iterable, Iterator

import anyio

from ..errors import ShoalError, TaskFailed
from ..model import TaskRecord
from .aio import AsyncClient
from .results import inline_result, is_inline


class Future:
    """The pending result of a function task."""

    def __init__(self, client, task_id: str, name: str | None = None):
        self.client = client  # the Client or AsyncClient that submitted it
        self.id = task_id
        self.name = name
        self._record: TaskRecord | None = None
        # when the last future of a task is dropped, its client frees the result
        track = getattr(client, "track_future", None)
        if track is not None:
            track(self, task_id)

    def __repr__(self) -> str:
        state = self._record.state.value if self._record else "submitted"
        return f"<shoal.Future {self.name or ''} {self.id} {state}>"

    @property
    def aclient(self) -> AsyncClient:
        """The AsyncClient this future's requests go through."""
        return self.client if isinstance(self.client, AsyncClient) else self.client.aclient

    @property
    def is_async(self) -> bool:
        """Whether the future was made by an async client (then await it)."""
        return isinstance(self.client, AsyncClient)

    def _sync(self):
        if self.is_async:
            raise ShoalError(f"{self!r} was made by an async client: use `await future` "
                             "(or `await future.aresult()`, `await future.arecord()`)")
        return self.client

    # -- sync ---------------------------------------------------------------------------

    def done(self) -> bool:
        client = self._sync()
        if self._record is None or not self._record.is_final:
            self._record = client.get(self.id)
        return self._record.is_final

    def record(self, timeout: float | None = None) -> TaskRecord:
        """Wait until the task ends; its record."""
        client = self._sync()
        if self._record is None or not self._record.is_final:
            self._record = client.wait(self.id, timeout=timeout)
        return self._record

    def result(self, timeout: float | None = None) -> Any:
        """The function's return value; raises TaskFailed (with the remote exception's
        type, message and traceback) if it failed. When this process has the remote
        exception's class, the error is an instance of it too: `except ValueError` works."""
        rec = self.record(timeout)
        if is_inline(rec):   # no round trip, and nothing on a node to free later
            self.client.note_final(rec)
            return inline_result(rec)
        return self.client.fetch_result(rec)

    def exception(self, timeout: float | None = None) -> TaskFailed | None:
        rec = self.record(timeout)
        return None if rec.state.value == "succeeded" else TaskFailed(rec)

    @property
    def progress(self) -> dict | None:
        """The latest progress the task reported: {"fraction", "message", "at"}."""
        return self._sync().get(self.id).progress

    def release(self) -> None:
        """Free the result where it is kept (a big result's file on its node)."""
        self._sync().release_result(self.id)

    # -- async --------------------------------------------------------------------------

    def __await__(self):
        return self.aresult().__await__()

    async def _in_thread(self, method, *args):
        return await anyio.to_thread.run_sync(functools.partial(method, *args))

    async def adone(self) -> bool:
        if not self.is_async:
            return await self._in_thread(self.done)
        if self._record is None or not self._record.is_final:
            self._record = await self.client.get(self.id)
        return self._record.is_final

    async def arecord(self, timeout: float | None = None) -> TaskRecord:
        """Wait until the task ends; its record."""
        if not self.is_async:
            return await self._in_thread(self.record, timeout)
        if self._record is None or not self._record.is_final:
            self._record = await self.client.wait(self.id, timeout=timeout)
        return self._record

    async def aresult(self, timeout: float | None = None) -> Any:
        """The function's return value; raises TaskFailed if it failed."""
        if not self.is_async:
            return await self._in_thread(self.result, timeout)
        return await self.client.fetch_result(await self.arecord(timeout))

    async def aexception(self, timeout: float | None = None) -> TaskFailed | None:
        rec = await self.arecord(timeout)
        return None if rec.state.value == "succeeded" else TaskFailed(rec)

    async def arelease(self) -> None:
        if not self.is_async:
            return await self._in_thread(self.release)
        await self.client.release_result(self.id)


def _one_client(futures: list[Future], what: str):
    clients = {id(f.aclient): f.client for f in futures}
    if len(clients) > 1:
        raise ShoalError(f"{what}: the futures come from {len(clients)} clients; "
                         "call it for each client's futures separately")
    return next(iter(clients.values()))


def as_completed(futures: Iterable[Future], timeout: float | None = None) -> Iterator[Future]:
    """Yield the futures as their tasks end, first finished first."""
    futures = list(futures)
    if not futures:
        return
    client = _one_client(futures, "as_completed")
    if isinstance(client, AsyncClient):
        raise ShoalError("as_completed: these futures were made by an async client: "
                         "use `async for f in client.as_completed(futures)`")
    yield from client.as_completed(futures, timeout)


async def aas_completed(futures: Iterable[Future], timeout: float | None = None) -> AsyncIterator[Future]:
    """as_completed for async code (the futures of one async client)."""
    futures = list(futures)
    if not futures:
        return
    client = _one_client(futures, "as_completed")
    if not isinstance(client, AsyncClient):
        raise ShoalError("as_completed: these futures were made by a sync client: "
                         "use `for f in shoal.as_completed(futures)`")
    async for f in client.as_completed(futures, timeout):
        yield f


def _by_client(futures: list[Future]) -> list[list[int]]:
    """The positions of `futures`, grouped by the client that made them: each client
    waits for its own in one request."""
    groups: dict[int, list[int]] = {}
    for i, f in enumerate(futures):
        groups.setdefault(id(f.aclient), []).append(i)
    return list(groups.values())


def gather(futures: Iterable[Future]) -> list:
    """The results of `futures`, in order, each fetched through the client that made it
    (the first failure raises). Sync clients' futures only; `await agather(...)` else."""
    futures = list(futures)
    for f in futures:
        f._sync()
    out: list = [None] * len(futures)
    for at in _by_client(futures):
        client = futures[at[0]].client
        for i, value in zip(at, client.gather([futures[i] for i in at])):
            out[i] = value
    return out


async def agather(futures: Iterable[Future]) -> list:
    """The results of `futures`, in order, each fetched through the client that made it."""
    futures = list(futures)
    out: list = [None] * len(futures)
    for at in _by_client(futures):
        first = futures[at[0]]
        if first.is_async:
            values = await first.client.gather([futures[i] for i in at])
        else:
            values = await anyio.to_thread.run_sync(first.client.gather, [futures[i] for i in at])
        for i, value in zip(at, values):
            out[i] = value
    return out
