"""The sync client: AsyncClient's methods run on one private event loop thread. Nothing
is written twice; every coroutine and async generator is forwarded as it is."""
from __future__ import annotations

import contextlib
import functools
import inspect
import queue
import threading
import weakref

from ..errors import ShoalError
from . import current
from .aio import AsyncClient


class Client:
    """The sync face of AsyncClient: each method runs the async one on a private loop."""

    def __init__(self, aclient_factory, on_close=None):
        from anyio.from_thread import start_blocking_portal
        portal_cm = start_blocking_portal()
        self._portal = portal_cm.__enter__()
        self._entered: list = []  # tokens of the `with` blocks that made this client current
        try:
            self._async: AsyncClient = self._portal.call(aclient_factory)
        except BaseException:
            _shut(portal_cm, self._portal, None, on_close)
            raise
        # A client never closed is shut when the interpreter exits, while its loop thread
        # still runs: left to the garbage collector at shutdown, stopping the portal would
        # wait forever for that (daemon, by then frozen) thread.
        self._shut = weakref.finalize(self, _shut, portal_cm, self._portal, self._async, on_close)
        try:
            self._call(self._async.open)
        except BaseException:
            self._portal = None
            self._shut()
            raise

    @property
    def aclient(self) -> AsyncClient:
        """The AsyncClient underneath (it lives on this client's private loop)."""
        return self._async

    def __getattr__(self, name: str):
        if name == "_async":  # not made (the constructor failed): no lookup loop
            raise AttributeError(name)
        attr = getattr(self._async, name)
        if inspect.isasyncgenfunction(attr):
            @functools.wraps(attr)
            def gen(*a, **k):
                return self._iterate(attr(*a, **k))
            return gen
        if inspect.iscoroutinefunction(attr):
            @functools.wraps(attr)
            def call(*a, **k):
                return self._call(attr, *a, **k)
            return call
        return attr

    def _call(self, fn, *a, **k):
        """Run fn(*a, **k) on the loop and wait for it. Interrupted here (Ctrl-C), the
        call is cancelled there too, and its clean-up finishes before the interrupt goes
        on: a half-done call does not keep running behind the caller's back."""
        self._check_open()
        ended = threading.Event()

        async def run():
            try:
                return await fn(*a, **k)
            finally:
                ended.set()

        fut = self._portal.start_task_soon(run)
        try:
            return fut.result()
        except BaseException:
            if not fut.done():
                fut.cancel()
                ended.wait()
            raise

    def _iterate(self, agen):
        """Drive an async generator in one task on the loop (its cancel scopes and open
        streams must stay in one task), handing items over through a queue."""
        self._check_open()
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

    def _check_open(self) -> None:
        if self._portal is None:
            raise ShoalError(f"this client of {self._async.address} is closed")

    def as_current(self):
        """`with c.as_current():` submits `@shoal.task` functions through `c` in the block,
        without closing it at the end."""
        return current.using(self)

    def close(self) -> None:
        if self._portal is None:
            return
        try:
            self._call(self._async.aclose)  # frees the results of dropped futures first
        finally:
            self._portal = None
            self._shut()  # stops the loop thread, then on_close (an embedded cluster goes)

    def __enter__(self):
        """Make this client current: `@shoal.task` functions submit through it in the block."""
        self._entered.append(current.enter(self))
        return self

    def __exit__(self, *exc):
        if self._entered:
            current.leave(self._entered.pop(), self)
        self.close()


def _shut(portal_cm, portal, aclient: AsyncClient | None, on_close) -> None:
    """Close `aclient` on its loop (its errors are not the closer's business), stop the
    loop thread, then run on_close. Called once: by close(), or at interpreter exit."""
    try:
        if aclient is not None:
            with contextlib.suppress(Exception):
                portal.call(aclient.aclose)
        with contextlib.suppress(RuntimeError):  # collected on the loop thread itself: it cannot wait for itself
            portal_cm.__exit__(None, None, None)
    finally:
        if on_close:
            on_close()
