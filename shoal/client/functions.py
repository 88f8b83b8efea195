"""Python functions as tasks: `@shoal.task`, submitted through the current client.

    @shoal.task(cpus=1, retries=2)
    def square(x):
        return x * x

    with shoal.connect() as c:                     # c is the current client in the block
        f = square.submit(3)                       # a Future, bound to c
        total = add.submit(f, square.submit(4))    # futures as arguments: a DAG
        print(total.result(), c.gather(square.map(range(10))))

    async with shoal.aconnect() as c:              # the same from async code
        f = await square.asubmit(3)
        print(await f, await c.gather(await square.amap(range(10))))

Functions and arguments travel with cloudpickle and run in warm worker processes on
the nodes. A future passed as an argument makes the new task depend on it; the worker
hands the function that task's result.
"""
from __future__ import annotations

import base64
import os
import types
from typing import Callable, Iterable

import anyio
import cloudpickle

from ..errors import InvalidSpec, ShoalError
from ..model import TaskSpec
from ..model.refs import FutureRef
from .aio import AsyncClient
from .current import current_client
from .futures import Future


class RemoteFunction:
    """A function that can run as a shoal task; calling it directly still runs it here."""

    def __init__(self, fn: Callable, options: dict, py_modules: list):
        if not callable(fn):
            raise InvalidSpec([f"shoal.task: {fn!r} is not callable (decorate a function)"])
        self.fn = fn
        self.options = options
        self.py_modules = py_modules
        self.__name__ = getattr(fn, "__name__", "function")
        self.__doc__ = getattr(fn, "__doc__", None)
        probe = dict(options, function="x")
        TaskSpec.parse(probe)  # bad resources are refused at decoration time

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def options_(self, **more) -> "RemoteFunction":
        """The same function with some options changed: f.options_(memory='4G').submit(x)."""
        return RemoteFunction(self.fn, {**self.options, **more}, self.py_modules)

    def spec(self, args: tuple, kwargs: dict, client=None) -> dict:
        deps: list[str] = []
        cluster = getattr(client, "cluster_id", None) if client is not None else None

        def ref(value, depth=0):
            if isinstance(value, Future):
                if cluster and getattr(value.client, "cluster_id", None) not in (None, cluster):
                    raise InvalidSpec([f"{self.__name__}: argument {value!r} is a future of another cluster "
                                       f"({value.client.address}); pass its value instead"])
                deps.append(value.id)
                return FutureRef(value.id)
            if depth < 2 and isinstance(value, (list, tuple)):
                return type(value)(ref(v, depth + 1) for v in value)
            if depth < 2 and isinstance(value, dict):
                return {k: ref(v, depth + 1) for k, v in value.items()}
            return value
        payload = (self.fn, ref(args), ref(kwargs))
        for m in self.py_modules:
            cloudpickle.register_pickle_by_value(m)
        try:
            data = cloudpickle.dumps(payload)
        except Exception as e:
            raise InvalidSpec([f"{self.__name__}: the function or its arguments cannot be pickled "
                               f"({type(e).__name__}: {e}); nothing was submitted"]) from None
        finally:
            for m in self.py_modules:
                cloudpickle.unregister_pickle_by_value(m)
        spec = {"name": self.__name__, **self.options, "function": base64.b64encode(data).decode(),
                "function_name": f"{getattr(self.fn, '__module__', '')}.{getattr(self.fn, '__qualname__', self.__name__)}"}
        if deps:
            spec["depends_on"] = list(dict.fromkeys([*self.options.get("depends_on", []), *deps]))
        return spec

    def submit(self, *args, **kwargs) -> Future:
        """Run fn(*args, **kwargs) as a task on the current client's cluster; its Future."""
        return self._submit(self._client("submit"), args, kwargs)

    def map(self, *iterables: Iterable) -> list[Future]:
        """One task per item (or per tuple of items, like the builtin map), submitted together."""
        return self._map(self._client("map"), iterables)

    def _submit(self, c, args: tuple, kwargs: dict) -> Future:
        rec = c.submit(None, **self.spec(args, kwargs, c))
        return Future(c, rec.id, self.__name__)

    def _map(self, c, iterables) -> list[Future]:
        specs = [self.spec(args, {}, c) for args in zip(*iterables)]
        if any("depends_on" in s for s in specs):  # futures among the items: one by one, in order
            return [Future(c, c.submit(None, **s).id, self.__name__) for s in specs]
        return [Future(c, tid, self.__name__) for tid in c.submit_many(specs)]

    async def asubmit(self, *args, **kwargs) -> Future:
        """submit() from async code: `f = await square.asubmit(3)`, then `await f`."""
        c = current_client()
        if not isinstance(c, AsyncClient):
            return await anyio.to_thread.run_sync(self._submit, c, args, kwargs)
        rec = await c.submit(None, **self.spec(args, kwargs, c))
        return Future(c, rec.id, self.__name__)

    async def amap(self, *iterables: Iterable) -> list[Future]:
        """map() from async code."""
        c = current_client()
        if not isinstance(c, AsyncClient):
            return await anyio.to_thread.run_sync(self._map, c, iterables)
        specs = [self.spec(args, {}, c) for args in zip(*iterables)]
        if any("depends_on" in s for s in specs):
            return [Future(c, (await c.submit(None, **s)).id, self.__name__) for s in specs]
        return [Future(c, tid, self.__name__) for tid in await c.submit_many(specs)]

    def _client(self, verb: str):
        c = current_client()
        if isinstance(c, AsyncClient):
            raise ShoalError(f"{self.__name__}.{verb}(): the current client is async: "
                             f"use `await {self.__name__}.a{verb}(...)`")
        return c


def task(fn: Callable | None = None, *, py_modules: list | None = None, **options):
    """Make a function runnable as a shoal task. Options are TaskSpec fields: cpus,
    memory, gpus, retries, backoff, timeout, labels, priority, team, job, working_dir.
    `py_modules`: modules (objects) shipped by value with the function, for code the
    nodes cannot import."""
    if fn is not None and not callable(fn):
        raise InvalidSpec([f"shoal.task: {fn!r} is not callable (decorate a function)"])
    mods = [m if isinstance(m, types.ModuleType) else __import__(m) for m in (py_modules or [])]

    def wrap(f: Callable) -> RemoteFunction:
        return RemoteFunction(f, options, mods)
    return wrap(fn) if fn is not None else wrap


def progress(fraction: float, message: str = "") -> None:
    """Report how far the running task has got (0..1, and a few words). Cheap to call
    often: the node passes on a few updates a second."""
    path = os.environ.get("SHOAL_PROGRESS_FILE")
    if not path:
        return  # not running as a task: nothing to report to
    fraction = min(1.0, max(0.0, float(fraction)))
    with open(path, "a") as f:
        f.write(f"{fraction:.4f} {message}".replace("\n", " ") + "\n")
